"""The label scheme of answer rows, the one parser of `G_S,G_H` gate pairs, and a MidPO model's router kind in words.

An answer row's `model` is a label: `NAME` is the model as given (for a MidPO model, its learned
routers), `NAME@gates=G_S,G_H` the same model at fixed gates (a blend of the sweep), `NAME@dial=+B`
the same model with safety bias B (a dial setting). The generate stage writes these labels; the
summary, the routing table and the report read them. One module, so that writers and readers agree
and the generate stage needs no statistics module to name its rows. Pure Python, no numpy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from midpo_cli.errors import InputError

_SUFFIX = re.compile(r"^(?P<base>.+)@(?:gates=(?P<gs>[0-9.eE+-]+),(?P<gh>[0-9.eE+-]+)|dial=(?P<b>[0-9.eE+-]+))$")


def blend_label(name: str, gates: Sequence[float]) -> str:
    return f"{name}@gates={float(gates[0]):g},{float(gates[1]):g}"


def dial_label(name: str, bias: float) -> str:
    return f"{name}@dial={float(bias):+g}"


def parse_label(label: str) -> tuple[str, tuple[float, float] | None, float | None]:
    """(base name, fixed gates or None, safety bias or None) of a model label."""
    m = _SUFFIX.match(label)
    if not m:
        return label, None, None
    try:
        if m["b"] is not None:
            return m["base"], None, float(m["b"])
        return m["base"], (float(m["gs"]), float(m["gh"])), None
    except ValueError:
        return label, None, None


def is_sweep_label(label: str) -> bool:
    """A blend or dial variant (kept out of the win-rate and category tables, which compare models)."""
    return parse_label(label)[0] != label


def router_kind(switch: Mapping[str, Any] | None, fixed: Sequence[float] | None,
                router: Mapping[str, Any] | None = None) -> str:
    """How a MidPO model sets its gates, in words: `learned router`, `learned routers' vote (threshold 0.77)`,
    `probe switch (hard, threshold 0.43)` or `fixed blend (1, 0)`. `switch`: midpo_config.json's `switch` entry;
    `fixed`: its fixed gates (they bypass a switch as they bypass the routers); `router`: its router settings. One
    wording for chat's banner, serve's responses and the export cards."""
    if fixed is not None:
        return f"fixed blend ({float(fixed[0]):g}, {float(fixed[1]):g})"
    if switch:
        mode = switch.get("mode", "hard")
        return f"probe switch (hard, threshold {float(switch.get('threshold', 0.5)):.4g})" if mode == "hard" \
            else "probe switch (soft)"
    if router and router.get("decision") == "vote":
        return f"learned routers' vote (threshold {float(router.get('threshold', 0.5)):.4g})"
    if router and router.get("decision") == "top1":
        return "learned router (top-1)"
    return "learned router"


def parse_gates(text: str, what: str = "--gates") -> tuple[float, float]:
    """`G_S,G_H` → (g_safety, g_helpfulness), both in [0, 1]; one parser for every command that takes gates."""
    try:
        g_s, g_h = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"{what} {text!r}: expected G_SAFETY,G_HELPFULNESS, e.g. {what} 0.5,0.5") from None
    if not (0.0 <= g_s <= 1.0 and 0.0 <= g_h <= 1.0):
        raise InputError(f"{what} {text!r}: both gates must be in [0, 1]")
    return g_s, g_h
