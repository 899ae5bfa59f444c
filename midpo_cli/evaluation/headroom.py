"""Does the router earn its place? The learned router against fixed blends of the same two experts.

MidPO's only addition over "train two LoRA experts and mix them" is the router, so the report
compares it with the obvious baseline: the same experts at fixed gates (g_s, g_h). Pure numpy.

- **Best fixed blend**, chosen on a selection (dev) prompt set and reported on every other set.
  Picking it on the set it is reported on would flatter the baseline by the noise of 25 tries; when
  no dev set exists each set picks its own and the result is marked in-sample. The corners of the
  blend square that the sweep leaves out but the answers hold under the pipeline's labels compete
  too: `base` is the blend (0, 0), `safety_expert` (1, 0), `helpfulness_expert` (0, 1).
- **Oracle router** (where prompts carry `is_harmful`): per prompt the expert that should serve it:
  the safety expert's answer on harmful prompts, the helpfulness expert's on benign ones. Experts are
  the blends (1, 0) and (0, 1) of the routed model (the same weights), else models named
  `safety_expert` / `helpfulness_expert`.
- **Score** (with a judge: the toy world's ground truth, or any judge of docs/judges.md): per-prompt outcome
  o ∈ {0, 1}, score = ½ (mean o over harmful + mean o over benign), the toy score under the toy judge. Router −
  best fixed gets a percentile bootstrap CI **paired by prompt** (one resample of prompt indices scores both), and the
  share of headroom captured = (router − best) / (oracle − best) when the oracle is ahead.
  Where every prompt has a `category`, a second CI resamples whole categories (`diff_by_category`):
  prompts of one task are not independent (the toy world asks each held-out task in 8 phrasings, and a
  model tends to answer all 8 alike), so the prompt-level CI is too narrow by about √(cluster size).
- **Best blend in hindsight** (`best_in_sample`): the blend that scores best on the reported set itself.
  It flatters the baseline (25 tries on the same prompts) and is not a fair opponent, but a router that
  does not beat it has not shown more than a better-chosen fixed blend would; when dev and eval disagree
  about the best blend, the dev-chosen Δ can be large for reasons that have nothing to do with routing.
- **Without a judge** (reward/cost only): blends that Pareto-dominate the router by means on the
  selection set are tested on the reported set with paired CIs of Δreward and Δcost.

Labels (the `model` of answer rows): midpo_cli.evaluation.labels; a blend's gates and a dial setting's bias are
read from the rows' `fixed_gates` and `safety_bias` (`find_router`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from midpo_cli.errors import InputError
from midpo_cli.evaluation.bootstrap import (
    balanced_score,
    bootstrap_indices,
    cluster_indices,
    clustered_diff,
    mean_diff,
    paired_diff,
)
from midpo_cli.evaluation.labels import is_sweep_label, parse_label
from midpo_cli.evaluation.summary import as_float

Outcome = Callable[[Mapping[str, Any]], float]


# ----------------------------------------------------------------------------------------- scores


def select_best(scores: Mapping[str, float | None]) -> str | None:
    """The label with the highest score; ties go to the first in the mapping's order (grid order)."""
    best = None
    for label, score in scores.items():
        if score is not None and (best is None or score > scores[best]):
            best = label
    return best


def oracle_outcomes(safety: np.ndarray, helpfulness: np.ndarray, harmful: np.ndarray) -> np.ndarray:
    """Per prompt: the safety expert's outcome on harmful prompts, the helpfulness expert's on benign."""
    return np.where(np.asarray(harmful, dtype=bool), safety, helpfulness).astype(np.float64)


def headroom_share(router: float | None, best: float | None, oracle: float | None) -> tuple[float | None, float | None]:
    """(oracle − best, (router − best) / (oracle − best)); the share only when the oracle is ahead."""
    if router is None or best is None or oracle is None:
        return None, None
    room = oracle - best
    if abs(room) < 1e-12:  # float noise of equal scores
        room = 0.0
    return room, ((router - best) / room if room > 0 else None)


def dominates(d_reward: float | None, d_cost: float | None) -> bool:
    """Blend over router: Δreward = blend − router ≥ 0 and Δcost = router − blend ≥ 0, one strictly."""
    if d_reward is None or d_cost is None:
        return False
    return d_reward >= 0 and d_cost >= 0 and (d_reward > 0 or d_cost > 0)


# ----------------------------------------------------------------------------------------- the table


class _Set:
    """One prompt set's answers as aligned arrays over its prompts (the router's prompt indices)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], outcome: Outcome | None) -> None:
        self.by_model: dict[str, dict[int, Mapping[str, Any]]] = {}
        for r in rows:
            self.by_model.setdefault(str(r["model"]), {})[int(r["index"])] = r
        self.outcome = outcome
        self.universe: list[int] = []
        self.harmful = np.zeros(0, dtype=bool)
        self.labelled = False

    def align(self, router: str) -> None:
        self.universe = sorted(self.by_model.get(router, {}))
        labels = [self.by_model[router][i].get("is_harmful") for i in self.universe]
        self.labelled = bool(labels) and all(isinstance(v, bool) or v in ("True", "False") for v in labels)
        self.harmful = np.array([v in (True, "True") for v in labels], dtype=bool)

    def column(self, model: str, field: str) -> np.ndarray:
        rows = self.by_model.get(model, {})
        return np.array([as_float(rows[i].get(field)) if i in rows else math.nan for i in self.universe])

    def outcomes(self, model: str) -> np.ndarray:
        rows = self.by_model.get(model, {})
        assert self.outcome is not None
        return np.array([self.outcome(rows[i]) if i in rows else math.nan for i in self.universe])

    def categories(self, model: str) -> list[str] | None:
        """Each prompt's `category` (the bootstrap's clusters), or None when any prompt lacks one."""
        cats = [self.by_model[model][i].get("category") for i in self.universe]
        return None if any(c in (None, "") for c in cats) else [str(c) for c in cats]

    def covers(self, model: str) -> bool:
        return all(i in self.by_model.get(model, {}) for i in self.universe)


def find_router(rows: Sequence[Mapping[str, Any]]
                ) -> tuple[str | None, dict[str, tuple[float, float]], dict[str, float]]:
    """(router label, its blends label → gates, its dials label → bias): the model with the most blends.

    A variant's gates and bias are read from its answer rows' fields, `fixed_gates` (a blend) and `safety_bias`
    (a variant without fixed gates is a dial setting); its label (midpo_cli.evaluation.labels) only names the
    model it is a variant of.
    """
    first: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        first.setdefault(str(r["model"]), r)
    blends: dict[str, dict[str, tuple[float, float]]] = {}
    dials: dict[str, dict[str, float]] = {}
    for label, row in first.items():
        base = parse_label(label)[0]
        if base == label:
            continue
        gates = row.get("fixed_gates")
        if gates is not None:
            blends.setdefault(base, {})[label] = (float(gates[0]), float(gates[1]))
        else:
            dials.setdefault(base, {})[label] = as_float(row.get("safety_bias"))
    candidates = [b for b in blends if b in first]
    if not candidates:
        return None, {}, {}
    router = max(candidates, key=lambda b: len(blends[b]))
    return router, blends[router], dials.get(router, {})


# Models that are a corner of the blend square: the routed model at these gates is, weight for weight,
# the base policy (no adapter) or one expert's adapter alone, under the pipeline's labels.
CORNER_MODELS = {(0.0, 0.0): "base", (1.0, 0.0): "safety_expert", (0.0, 1.0): "helpfulness_expert"}


def with_corner_models(blends: Mapping[str, tuple[float, float]],
                       models: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The blends, plus each corner model the sweep lacks but the answers have (`CORNER_MODELS`).

    An explicit `gate_sweep` of a few blends (a real model, where every blend costs a generation pass) can
    leave out (0, 0): the base policy, often the strongest fixed blend when both experts overshoot. It was
    generated anyway, so it competes as the blend it is, and the router is never compared only with weaker ones.
    """
    out = dict(blends)
    have = set(out.values())
    for gates, name in CORNER_MODELS.items():
        if gates not in have and name in models:
            out[name] = gates
    return out


def routing_summary(rows: Sequence[Mapping[str, Any]], *, outcome_for: Callable[[str], Outcome | None],
                    select_on: str | None = None, bootstrap: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, Any]:
    """prompt set → the router against the fixed blends on it (module docstring); {} without blends.

    `outcome_for(prompt_set)` is the judge of that set's answers (row → 0/1, NaN unjudged), or None.
    `select_on`: the set the best blend is chosen on (it gets no entry of its own); None picks the set
    whose name ends in `dev-prompts`, and without one every set chooses in-sample.
    """
    router, blends, dials = find_router(rows)
    if router is None:
        return {}
    blends = with_corner_models(blends, list(dict.fromkeys(str(r["model"]) for r in rows)))
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(str(r["prompt_set"]), []).append(r)
    select = resolve_selection(list(grouped), select_on)
    chooser = None
    if select is not None:
        chooser = _Set(grouped[select], outcome_for(select))
        chooser.align(router)
    out = {}
    for name, set_rows in grouped.items():
        if name == select:
            continue
        s = _Set(set_rows, outcome_for(name))
        s.align(router)
        if not s.universe:
            continue
        idx = bootstrap_indices(len(s.universe), bootstrap, seed, name)
        cats = s.categories(router)
        cidx = cluster_indices(cats, bootstrap, seed, name) if cats and len(set(cats)) > 1 else None
        out[name] = _entry(s, chooser or s, select or name, router, blends, dials, idx, confidence)
        if out[name]["diff"] is not None:
            out[name].update(_clustered_and_hindsight(s, router, blends, out[name], idx, cidx, confidence))
        out[name]["in_sample"] = select is None
        if out[name]["best_fixed"] is not None:
            out[name]["best_fixed"]["in_sample"] = select is None
    return out


def resolve_selection(names: Sequence[str], select_on: str | None) -> str | None:
    """The selection set's name: the one asked for (by name or by its spec's tail), else `*dev-prompts`."""
    if select_on is not None:
        hit = [n for n in names if n == select_on or n.endswith(select_on) or select_on.endswith(n)]
        if len(hit) != 1:
            raise InputError(f"select_on {select_on!r}: {'no' if not hit else 'more than one'} prompt set of the "
                             f"answers matches; they are: {', '.join(names)}")
        return hit[0]
    dev = [n for n in names if n.endswith("dev-prompts")]
    return dev[0] if len(dev) == 1 else None


def _stats(s: _Set, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "n": len(s.by_model.get(model, {}))}
    if s.outcome is not None and s.labelled:
        o = s.outcomes(model)
        out["score"] = balanced_score(o, s.harmful)
        for key, side in (("harmful_safe", s.harmful), ("benign_helpful", ~s.harmful)):
            kept = o[side & ~np.isnan(o)]
            out[key] = float(kept.mean()) if kept.size else None
    for field in ("reward", "cost"):
        col = s.column(model, field)
        out[field] = float(np.nanmean(col)) if (~np.isnan(col)).any() else None
    return out


def _expert(s: _Set, blends: Mapping[str, tuple[float, float]], gates: tuple[float, float]) -> str | None:
    """The blend at these gates that answered this set, else the corner model of that name (`CORNER_MODELS`)."""
    label = next((b for b, g in blends.items() if g == gates), None)
    for cand in (label, CORNER_MODELS[gates]):
        if cand is not None and s.universe and s.covers(cand):
            return cand
    return None


def _entry(s: _Set, chooser: _Set, chosen_on: str, router: str, blends: Mapping[str, tuple[float, float]],
           dials: Mapping[str, float], idx: np.ndarray, confidence: float) -> dict[str, Any]:
    judged = s.outcome is not None and s.labelled
    entry: dict[str, Any] = {"router": _stats(s, router), "metric": "score" if judged else None,
                             "best_fixed": None, "oracle": None, "diff": None, "headroom": None, "share": None,
                             "grid": [{**_stats(s, b), "gates": list(g)} for b, g in blends.items() if b in s.by_model],
                             "dial": sorted([{**_stats(s, d), "bias": b} for d, b in dials.items() if d in s.by_model]
                                            + [{**_stats(s, router), "bias": _bias(s, router)}],
                                            key=lambda x: x["bias"]),
                             "models": [_stats(s, m) for m in s.by_model if m != router and not is_sweep_label(m)]}
    if chooser.outcome is not None and chooser.labelled:
        on_sel = {b: balanced_score(chooser.outcomes(b), chooser.harmful) for b in blends if chooser.covers(b)}
        best = select_best(on_sel)
        if best is not None:
            entry["best_fixed"] = {**_stats(s, best), "gates": list(blends[best]), "chosen_on": chosen_on,
                                   "score_on_selection": on_sel[best], "answered_here": s.covers(best)}
            if judged and s.covers(best):
                entry["diff"] = paired_diff(s.outcomes(router), s.outcomes(best), s.harmful, idx, confidence)
    if s.labelled:
        entry["oracle"] = _oracle(s, blends, judged)
    if judged and entry["oracle"] and entry["best_fixed"] and entry["best_fixed"]["answered_here"]:
        entry["headroom"], entry["share"] = headroom_share(entry["router"]["score"], entry["best_fixed"]["score"],
                                                           entry["oracle"].get("score"))
    if (~np.isnan(s.column(router, "reward"))).any() and (~np.isnan(s.column(router, "cost"))).any():
        entry["pareto"] = _pareto(s, chooser, chosen_on, router, blends, idx, confidence)
    return entry


def _clustered_and_hindsight(s: _Set, router: str, blends: Mapping[str, tuple[float, float]], entry: dict,
                             idx: np.ndarray, cidx: np.ndarray | None, confidence: float) -> dict[str, Any]:
    """`diff_by_category` (router − dev-chosen best, categories resampled) and `best_in_sample` (module doc)."""
    out: dict[str, Any] = {"diff_by_category": None, "best_in_sample": None}
    r = s.outcomes(router)
    if cidx is not None:
        best = entry["best_fixed"]["model"]
        out["diff_by_category"] = clustered_diff(r, s.outcomes(best), s.harmful, cidx, confidence)
    here = {g["model"]: g.get("score") for g in entry["grid"] if s.covers(g["model"])}  # scored by `_entry`
    top = select_best(here)
    if top is not None:
        o = s.outcomes(top)
        out["best_in_sample"] = {"model": top, "gates": list(blends[top]), "score": here[top],
                                 "diff": paired_diff(r, o, s.harmful, idx, confidence),
                                 "diff_by_category": (clustered_diff(r, o, s.harmful, cidx, confidence)
                                                      if cidx is not None else None)}
    return out


def _oracle(s: _Set, blends: Mapping[str, tuple[float, float]], judged: bool) -> dict[str, Any] | None:
    safety = _expert(s, blends, (1.0, 0.0))
    helpful = _expert(s, blends, (0.0, 1.0))
    if safety is None or helpful is None:
        return None
    out: dict[str, Any] = {"from": {"harmful": safety, "benign": helpful}}
    if judged:
        o = oracle_outcomes(s.outcomes(safety), s.outcomes(helpful), s.harmful)
        out["score"] = balanced_score(o, s.harmful)
        out["harmful_safe"] = float(o[s.harmful].mean()) if s.harmful.any() else None
        out["benign_helpful"] = float(o[~s.harmful].mean()) if (~s.harmful).any() else None
    for field in ("reward", "cost"):
        col = oracle_outcomes(s.column(safety, field), s.column(helpful, field), s.harmful)
        out[field] = float(np.nanmean(col)) if (~np.isnan(col)).any() else None
    return out


def _pareto(s: _Set, chooser: _Set, chosen_on: str, router: str, blends: Mapping[str, tuple[float, float]],
            idx: np.ndarray, confidence: float) -> dict[str, Any]:
    """Blends dominating the router by means on the selection set, tested here with paired CIs."""
    def means(where: _Set, model: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(where.column(model, "reward"))), float(np.nanmean(where.column(model, "cost")))

    r_reward, r_cost = means(chooser, router)
    candidates = [b for b in blends if chooser.covers(b) and dominates(
        _finite(means(chooser, b)[0] - r_reward), _finite(r_cost - means(chooser, b)[1]))]
    tested = []
    for b in candidates:
        if not s.covers(b):
            continue
        d_reward = mean_diff(s.column(b, "reward"), s.column(router, "reward"), idx, confidence)
        d_cost = mean_diff(s.column(router, "cost"), s.column(b, "cost"), idx, confidence)
        tested.append({"model": b, "gates": list(blends[b]), "d_reward": d_reward, "d_cost": d_cost,
                       "dominates": dominates(d_reward["mean"], d_cost["mean"]),
                       "significant": bool(d_reward["lo"] is not None and d_cost["lo"] is not None
                                           and d_reward["lo"] > 0 and d_cost["lo"] > 0)})
    return {"candidates_chosen_on": chosen_on, "by": tested,
            "dominated": any(t["dominates"] for t in tested), "significant": any(t["significant"] for t in tested)}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _bias(s: _Set, router: str) -> float:
    """The router's own safety bias (answer rows record it; 0 when they do not)."""
    first = next(iter(s.by_model.get(router, {}).values()), {})
    value = as_float(first.get("safety_bias"))
    return 0.0 if math.isnan(value) else value
