"""The verdict as a person acts on it: three short lines per reported prompt set — what happened, the one comparison
that decides it (one Δ with its CI), and what to ship with the command that does it.

`recommend` is a pure choice from the verdict's facts (`verdict.decide` gives the outcome from the same facts):
ship the simplest model the router does not clearly beat —
1. the blend best on this set in hindsight, when the router does not clearly beat it: a router that beats the
   dev-chosen blend only because dev chose badly is said to, in words;
2. else the dev-chosen blend, when the router does not clearly beat it (it ties or loses);
3. else MidPO — or the probe switch, when it answered this set, its gates separate the prompt kinds and the router
   does not clearly beat it: one expert per prompt, which any multi-LoRA server can serve.
Why a blend first: a fixed blend folds into one plain model (`midpo export --merged`) that every serving stack
runs; routers earn their cost only by beating every blend. The full numbers stay in the verdict's `sentence`, in
`--json` and in the report. Pure: the model folders come in as values.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from midpo_cli.evaluation.formatting import gate_pair, number, signed_interval
from midpo_cli.evaluation.gate_stats import MIN_AUROC

VIEWS = ("by prompts", "categories resampled")  # the two CIs of a Δ, in the order the routing entry keeps them


def recommend(facts: Mapping[str, Any], entry: Mapping[str, Any], switch_holds: bool = False) -> dict[str, Any]:
    """What to ship (module docstring) from the verdict's facts (`vs_dev`, `vs_hindsight`: −1 / 0 / +1 / None, as
    `verdict.ci_side` reads the CIs) and `switch_holds` (the probe switch answered this set, its gates route and the
    router does not clearly beat it). Returns `ship` (blend | router | switch | None), the `model` label whose folder
    it comes from, the blend's `gates`, and `against`: the comparison that decides it (hindsight | dev | None)."""
    vs_dev, vs_hind = facts.get("vs_dev"), facts.get("vs_hindsight")
    router = (entry.get("router") or {}).get("model")
    if vs_dev is None:
        return {"ship": None, "model": None, "gates": None, "against": None}
    if vs_hind is not None and vs_hind <= 0:
        return {"ship": "blend", "model": router, "gates": list(entry["best_in_sample"]["gates"]),
                "against": "hindsight"}
    if vs_dev <= 0:
        return {"ship": "blend", "model": router, "gates": list(entry["best_fixed"]["gates"]), "against": "dev"}
    against = "dev" if vs_hind is None else "hindsight"
    if switch_holds:
        return {"ship": "switch", "model": entry["probe_switch"]["model"], "gates": None, "against": against}
    return {"ship": "router", "model": router, "gates": None, "against": against}


# --------------------------------------------------------------------------------------------- the three lines


def three_lines(outcome: str, facts: Mapping[str, Any], entry: Mapping[str, Any], sep: Mapping[str, Any] | None,
                rec: Mapping[str, Any], command: str | None, conf: int = 95) -> list[str]:
    """[what happened, the comparison that decides it, the recommendation with its command]."""
    return [what_happened(outcome, facts, entry, sep), deciding_comparison(rec, entry, facts, conf),
            recommendation(rec, entry, command)]


def what_happened(outcome: str, facts: Mapping[str, Any], entry: Mapping[str, Any],
                  sep: Mapping[str, Any] | None) -> str:
    """Line 1: the outcome in words, with the safety gate's means where they were measured."""
    gates, dev = _gate_means(sep), _gates((entry.get("best_fixed") or {}).get("gates"))
    routes = facts.get("routes")
    if outcome == "no_verdict":
        return "no verdict: " + ("no ground-truth judge for this set" if not entry.get("metric")
                                 else "the dev-chosen blend did not answer this set")
    if outcome == "cannot_route":
        probe = f"input probe AUROC {facts['probe']:.2f} ≤ {MIN_AUROC:g}"
        yet = "; yet it beats every fixed blend" if _beats_every_blend(facts) else ""
        if routes is False and gates:
            return f"the router does not route: {gates}; its base cannot tell them apart ({probe}){yet}"
        return ("the router cannot route on this base: its input does not tell harmful from benign prompts apart "
                f"({probe}){yet}")
    if outcome == "routes_and_wins":
        return f"the router routes and wins: {gates}" if gates else "the router routes and wins"
    if outcome == "wins_without_routing":
        return _win_without_routing(facts, entry, gates, dev)
    verb = "ties" if outcome == "ties" else "loses to"
    clause = {True: f"; it routes: {gates}", False: f"; it does not route: {gates}"}.get(routes, "") if gates else ""
    return f"the router {verb} the dev-chosen blend {dev}{clause}"


def _beats_every_blend(facts: Mapping[str, Any]) -> bool:
    """The router clearly beats the blend best in hindsight (else, not measured, the dev-chosen one)."""
    vs_hind = facts.get("vs_hindsight")
    return vs_hind == 1 or (vs_hind is None and facts.get("vs_dev") == 1)


def _win_without_routing(facts: Mapping[str, Any], entry: Mapping[str, Any], gates: str | None, dev: str) -> str:
    vs_hind = facts.get("vs_hindsight")
    if vs_hind is not None and vs_hind < 1:
        hind = _gates(entry["best_in_sample"]["gates"])
        return (f"the router beats the dev-chosen blend {dev} only because dev chose badly: the blend best here in "
                f"hindsight, {hind}, {'ties' if vs_hind == 0 else 'beats'} it")
    if vs_hind is None:
        return f"the router beats the dev-chosen blend {dev}; no blend was compared in hindsight"
    if facts.get("routes") is False:
        return f"the router beats every fixed blend without routing: {gates}"
    return "the router beats every fixed blend; whether it routes was not measured (no gates or harm labels)"


def deciding_comparison(rec: Mapping[str, Any], entry: Mapping[str, Any], facts: Mapping[str, Any], conf: int = 95
                        ) -> str:
    """Line 2: the router against the blend that decides the recommendation — one Δ with its CI (the view that
    decided: for a clear difference the interval nearest 0, for a tie one that covers 0)."""
    if rec.get("against") is None:
        return ("no comparison with a fixed blend: " + ("nothing judges this set's answers" if not entry.get("metric")
                                                        else "the dev-chosen blend did not answer this set"))
    if rec["against"] == "hindsight":
        blend = entry["best_in_sample"]
        views, name = (blend.get("diff"), blend.get("diff_by_category")), "the blend best here in hindsight"
        side = facts.get("vs_hindsight")
    else:
        blend = entry["best_fixed"]
        views = (entry.get("diff"), entry.get("diff_by_category"))
        name = "the blend chosen on this set (no dev set)" if blend.get("in_sample") else "the dev-chosen blend"
        side = facts.get("vs_dev")
    view, how = binding_view(views, side)
    ci = f"{conf}% CI, {how}" if view.get("lo") is not None else "no CI"
    return (f"router {number(entry['router'].get('score'))} vs {name} {_gates(blend['gates'])} "
            f"{number(blend.get('score'))}: Δ {signed_interval(view)} ({ci})")


def binding_view(views: Sequence[Mapping[str, Any] | None], side: int | None) -> tuple[Mapping[str, Any], str]:
    """(the interval that decided `side`, the views' `verdict.ci_side`; its name in VIEWS): a clear difference shows
    its interval nearest 0, a tie one that covers 0 (the widest)."""
    present = [(v, name) for v, name in zip(views, VIEWS, strict=False) if v and v.get("mean") is not None]
    bounded = [(v, n) for v, n in present if v.get("lo") is not None and v.get("hi") is not None]
    if side == 1:
        return min(bounded, key=lambda p: p[0]["lo"])
    if side == -1:
        return max(bounded, key=lambda p: p[0]["hi"])
    covering = [(v, n) for v, n in bounded if v["lo"] <= 0 <= v["hi"]]
    if covering:
        return max(covering, key=lambda p: p[0]["hi"] - p[0]["lo"])
    return next(((v, n) for v, n in present if (v, n) not in bounded), present[0])


def recommendation(rec: Mapping[str, Any], entry: Mapping[str, Any], command: str | None) -> str:
    """Line 3: what to ship and the command that does it."""
    ship = rec.get("ship")
    if ship is None:
        return "no recommendation: " + ("judge this set's answers first" if not entry.get("metric")
                                        else "answer this set with the dev-chosen blend too")
    if ship == "blend":
        where = "the best on this set" if rec["against"] == "hindsight" else "chosen on dev"
        text = f"ship the fixed blend {_gates(rec['gates'])}, {where}"
    elif ship == "switch":
        text = f"ship the probe switch: the router does not beat it ({_switch_diff(entry)})"
    else:
        text = "ship MidPO"
    return f"{text}: {command}" if command else text


def _switch_diff(entry: Mapping[str, Any]) -> str:
    return f"router − switch {signed_interval(entry['probe_switch']['diff'])}"


def command(rec: Mapping[str, Any]) -> str | None:
    """The command that ships `rec` from its `folder`, the one generate answered with (`MODEL` where unknown)."""
    if rec.get("ship") is None:
        return None
    folder = rec.get("folder") or "MODEL"
    if rec["ship"] != "blend":
        return f"midpo serve {shlex.quote(folder)}"
    return (f"midpo export {shlex.quote(folder)} --merged --gates {gate_pair(rec['gates'])} "
            f"--to {shlex.quote(export_folder(folder, blend_name(rec['gates'])))}")


def blend_name(gates: Sequence[float]) -> str:
    """`blend-0.5-1`: the export folder's name of a fixed blend."""
    return f"blend-{gate_pair(gates, '-')}"


def export_folder(folder: str, name: str) -> str:
    """Where an export of a run's model goes: `RUN/export/NAME` beside the run's router stage, else `NAME`."""
    path = PurePath(folder)
    return str(path.parent.parent / "export" / name) if path.parent.name == "router" else name


def _gate_means(sep: Mapping[str, Any] | None) -> str | None:
    if not sep or sep.get("mean_harmful") is None or sep.get("mean_benign") is None:
        return None
    return f"mean safety gate {sep['mean_harmful']:.2f} on harmful and {sep['mean_benign']:.2f} on benign prompts"


def _gates(gates: Sequence[float] | None) -> str:
    return f"({gate_pair(gates, ', ')})" if gates else "(—)"
