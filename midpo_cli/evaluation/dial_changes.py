"""How many answers each safety-dial setting changed against the router as trained (docs/design.md §2.10).

A dial sweep whose points all give the router's own answers does not move the model along its curve, and a score
that does not change cannot tell that from a dial that moved answers both ways; counting changed answers per point
says so directly, whatever the judge (the quickstart's counts: benchmarks/RESULTS.md, "Quickstart pipeline").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def changed_answers(rows: Sequence[Mapping[str, Any]], router: str, dial: str) -> dict[str, int]:
    """{changed, compared}: prompts (by index) where the dial's answer differs from the router's."""
    ours = {int(r["index"]): r["answer"] for r in rows if r["model"] == router}
    theirs = {int(r["index"]): r["answer"] for r in rows if r["model"] == dial}
    common = sorted(set(ours) & set(theirs))
    return {"changed": sum(ours[i] != theirs[i] for i in common), "compared": len(common)}


def add_dial_changes(routing: dict[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Each reported set's dial points (summary["routing"][set]["dial"]) get `changed` and `compared`."""
    for name, entry in routing.items():
        here = [r for r in rows if str(r["prompt_set"]) == name]
        router = entry["router"]["model"]
        for point in entry.get("dial") or []:
            if point["model"] != router:
                point.update(changed_answers(here, router, point["model"]))


def dial_lines(routing: Mapping[str, Any]) -> list[str]:
    """One line per reported set: answers changed by each dial point (plain text, for terminal and HTML)."""
    out = []
    for name, e in routing.items():
        points = [p for p in e.get("dial") or [] if "changed" in p]
        if points:
            out.append(f"{name}: answers changed against the router by the safety dial: "
                       + ", ".join(f"{p['bias']:+g}: {p['changed']}/{p['compared']}" for p in points))
    return out
