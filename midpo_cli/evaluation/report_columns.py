"""What both renderers of the evaluation report show (the terminal tables and report.html): the metric columns,
which of them a summary fills, the note on what was not computed, and the intervals' confidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = (  # metric, header, lower is better, short header (terminal)
    ("reward", "Helpfulness (reward ↑)", False, "reward ↑"),
    ("cost", "Safety (cost ↓)", True, "cost ↓"),
    ("harmless_rate", "Harmless (cost<0)", False, "harmless"),
    ("refusal_rate_harmful", "Refusal · harmful", False, "refuse harmful"),
    ("refusal_rate_benign", "Over-refusal · benign", True, "refuse benign"),
    ("refusal_rate", "Refusal · all", False, "refuse"),
    ("answer_tokens", "Answer tokens", False, "tokens"),
)


def shown_columns(summary: Mapping[str, Any]) -> list[tuple[str, str, bool, str]]:
    """The COLUMNS some group has values for; the overall refusal rate only when it is not split by prompt kind."""
    present = {m for g in summary["groups"] for m, s in g["metrics"].items() if s.get("n")}
    cols = [c for c in COLUMNS if c[0] in present]
    if "refusal_rate_harmful" in present or "refusal_rate_benign" in present:
        cols = [c for c in cols if c[0] != "refusal_rate"]
    return cols


def missing_note(summary: Mapping[str, Any]) -> str:
    """`Not computed: cost (no cost model given)`, or '' when both score models were given."""
    missing = [f"{k} (no {k} model given)" for k in ("reward", "cost") if not summary["available"].get(k)]
    return "Not computed: " + ", ".join(missing) if missing else ""


def confidence_percent(summary: Mapping[str, Any]) -> int:
    """The bootstrap intervals' confidence as a whole percentage (95)."""
    return int(100 * summary["bootstrap"]["confidence"])

