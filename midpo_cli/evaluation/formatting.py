"""How midpo writes a number for a person to read: one function per format, shared by the terminal tables, the
report, the verdict, the method table, the model card and the pipeline's status tables.

A stat is a dict of the summary's (`mean` or `rate`, and `lo`, `hi` of its bootstrap interval); a missing
value prints as `—` everywhere. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "—"
RATES = {"harmless_rate", "refusal_rate_harmful", "refusal_rate_benign", "refusal_rate"}  # shown as percentages


def number(x: float | None, digits: int = 2) -> str:
    """`0.42`: a value with a fixed number of decimals."""
    return MISSING if x is None else f"{x:.{digits}f}"


def percent(x: float | None) -> str:
    """`45%`: a share as a whole percentage."""
    return MISSING if x is None else f"{100 * x:.0f}%"


def gate_value(x: float) -> str:
    """A gate value in few characters: 0.25 → .25, 1.0 → 1."""
    return f"{x:g}".replace("0.", ".", 1) if 0 < x < 1 else f"{x:g}"


def gate_pair(gates: Sequence[float], sep: str = ",") -> str:
    """`0.25,1` (or with `sep` between): a pair of fixed gates (g_s, g_h), or merge weights."""
    return f"{gates[0]:g}{sep}{gates[1]:g}"


def logged_value(value: Any) -> str:
    """A logged metric in the model card: floats to three decimals, counts and words as they are."""
    return MISSING if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def status_value(value: Any) -> str:
    """A stage metric in the pipeline's plan and status tables: floats to three significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def mean_and_interval(stat: Mapping[str, Any] | None, metric: str, ci: bool = True, compact: bool = False) -> str:
    """`0.42 [0.31, 0.55]`, or `0.42 ±0.12` (half the interval's width) for narrow terminal tables."""
    if not stat:
        return MISSING
    mean = stat.get("mean", stat.get("rate"))
    if mean is None:
        return MISSING
    pct = metric in RATES or metric == "win"

    def one(v: float) -> str:
        return f"{100 * v:.0f}%" if pct else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    text = one(mean)
    if ci and stat.get("lo") is not None:
        if compact:
            half = (stat["hi"] - stat["lo"]) / 2
            if half > 0:  # a zero-width interval says nothing a narrow terminal needs
                text += f" ±{100 * half:.0f}" if pct else f" ±{half:.2f}"
        elif one(stat["lo"]) != one(stat["hi"]):  # "100% [100%, 100%]" is noise
            text += f" [{one(stat['lo'])}, {one(stat['hi'])}]"
    return text


def compact_interval(stat: Mapping[str, Any] | None, pct: bool = False, signed: bool = False) -> str:
    """`0.42±.05` / `45%±7` / `+0.07 [+0.01,+0.12]`: a mean and its interval in a narrow cell (the terminal's
    80 columns, the report's wide routing table)."""
    if not stat or stat.get("mean") is None:
        return MISSING
    mean = stat["mean"]
    if signed:
        text = f"{mean:+.2f}"
        if stat.get("lo") is not None:
            text += f" [{stat['lo']:+.2f},{stat['hi']:+.2f}]"
        return text
    text = f"{100 * mean:.0f}%" if pct else f"{mean:.2f}"
    if stat.get("lo") is not None and stat["hi"] > stat["lo"]:
        half = (stat["hi"] - stat["lo"]) / 2
        text += f"±{100 * half:.0f}" if pct else f"±{half:.2f}".replace("0.", ".", 1)
    return text


def signed_bounds(lo: float, hi: float, digits: int = 2, brackets: str = "[]") -> str:
    """`[+0.06, +0.21]`: an interval of a difference, signs shown."""
    return f"{brackets[0]}{lo:+.{digits}f}, {hi:+.{digits}f}{brackets[1]}"


def signed_interval(stat: Mapping[str, Any], digits: int = 2) -> str:
    """`+0.14 [+0.06, +0.21]`: a difference and its interval; the mean alone when there are no bounds."""
    head = f"{stat['mean']:+.{digits}f}"
    if stat.get("lo") is None or stat.get("hi") is None:
        return head
    return f"{head} {signed_bounds(stat['lo'], stat['hi'], digits)}"
