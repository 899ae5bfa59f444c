"""The probe switch's threshold, chosen on dev, and its row in the routing report (docs/design.md §2.7, §2.10).

A hard switch answers a prompt with the safety expert's corner (1, 0) when the probe's p(harmful) ≥ t, else
with the helpfulness expert's (0, 1). Its dev objective at t is the balanced score of the report,
½·mean(outcome | harmful) + ½·mean(outcome | benign), where a prompt's outcome is the outcome of the corner
it is sent to. Only the order of the dev prompts' p matters, so the candidates are 0 (every prompt to the
safety corner), the midpoints between consecutive distinct p, and 1 (every prompt to the helpfulness
corner). **Ties** (a whole interval of t usually scores the same) go to the candidate nearest 0.5 — the
logistic probe's own decision boundary, the least tuned choice — and then to the lower one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from midpo_cli.evaluation.bootstrap import balanced_score, bootstrap_indices, paired_diff
from midpo_cli.evaluation.formatting import number, signed_interval

SWITCH_MODEL = "probe_switch"  # the generate stage's label of the switch's answers


def candidate_thresholds(p: Sequence[float]) -> list[float]:
    """0, the midpoints between consecutive distinct values of p, and 1 (module docstring)."""
    values = sorted(set(float(x) for x in p))
    mids = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
    return sorted({0.0, *mids, 1.0})


def switch_outcomes(p: np.ndarray, threshold: float, safety: np.ndarray, helpfulness: np.ndarray) -> np.ndarray:
    """Each prompt's outcome under the hard switch: the safety corner's where p ≥ t, else the helpfulness one's."""
    return np.where(np.asarray(p, dtype=float) >= threshold, safety, helpfulness)


def choose_threshold(p: Sequence[float], harmful: Sequence[bool], safety: Sequence[float],
                     helpfulness: Sequence[float]) -> tuple[float, list[dict[str, float]]]:
    """(the dev-best threshold, the curve [{threshold, score}]): argmax of the balanced score, ties → nearest 0.5,
    then lower. p: the dev prompts' probabilities; safety / helpfulness: each prompt's outcome (0/1 or a score)
    at the corners (1, 0) / (0, 1); harmful: each prompt's kind."""
    if not len(p):
        raise ValueError("choose_threshold: no dev prompts")
    p_arr, kinds = np.asarray(p, dtype=float), np.asarray(harmful, dtype=bool)
    s_arr, h_arr = np.asarray(safety, dtype=float), np.asarray(helpfulness, dtype=float)
    curve = [{"threshold": t, "score": balanced_score(switch_outcomes(p_arr, t, s_arr, h_arr), kinds)}
             for t in candidate_thresholds(p_arr)]
    scored = [c["score"] for c in curve if c["score"] is not None]
    if not scored:
        raise ValueError("choose_threshold: the dev prompts need both kinds, harmful and benign")
    top = max(scored)
    tied = [c["threshold"] for c in curve if c["score"] is not None and c["score"] >= top - 1e-12]
    return min(tied, key=lambda t: (abs(t - 0.5), t)), curve


def switch_entry(rows: Sequence[Mapping[str, Any]], router: str, outcome, *, bootstrap: int = 1000, seed: int = 0,
                 name: str = "", confidence: float = 0.95) -> dict[str, Any] | None:
    """The switch next to the router on one prompt set: both scores and router − switch with a paired CI (by
    prompt). None when the set has no switch answers, no judge or no prompt kinds."""
    from midpo_cli.evaluation.summary import as_bool

    if outcome is None:
        return None
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["model"]), {})[int(r["index"])] = r
    if SWITCH_MODEL not in by or router not in by:
        return None
    common = sorted(set(by[SWITCH_MODEL]) & set(by[router]))
    kinds = [as_bool(by[router][i].get("is_harmful")) for i in common]
    if not common or any(k is None for k in kinds):
        return None
    harmful = np.array(kinds, dtype=bool)
    switch = np.array([outcome(by[SWITCH_MODEL][i]) for i in common], dtype=float)
    routed = np.array([outcome(by[router][i]) for i in common], dtype=float)
    idx = bootstrap_indices(len(common), bootstrap, seed, name)
    return {"model": SWITCH_MODEL, "n": len(common), "score": balanced_score(switch, harmful),
            "router_score": balanced_score(routed, harmful),
            "diff": paired_diff(routed, switch, harmful, idx, confidence)}


def add_switch_entries(routing: dict[str, Any], rows: Sequence[Mapping[str, Any]], outcome_for, *,
                       bootstrap: int, seed: int) -> None:
    """summary["routing"][set]["probe_switch"] for every reported set that has the switch's answers."""
    for name, entry in routing.items():
        here = [r for r in rows if str(r["prompt_set"]) == name]
        found = switch_entry(here, entry["router"]["model"], outcome_for(name), bootstrap=bootstrap, seed=seed,
                             name=name)
        if found is not None:
            entry["probe_switch"] = found


def switch_lines(routing: Mapping[str, Any]) -> list[str]:
    """One line per reported set: the router against the probe switch (plain text, for terminal and HTML)."""
    out = []
    for name, e in routing.items():
        s = e.get("probe_switch")
        if not s:
            continue
        out.append(f"{name}: router {number(s['router_score'], 3)} vs probe switch {number(s['score'], 3)}: router "
                   f"− switch {signed_interval(s['diff'], digits=3)} (paired by prompt, {s['n']} prompts)")
    return out
