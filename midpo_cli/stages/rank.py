"""Stage `rank`: score every response with both score models and write D_dual, the router's pairs.

Rules (`stages.rank.rule`):
- `joint` (default): pairs where one answer wins on **both** axes — better == safer by the labels
  (`by: labels`; `auto` picks it when the data has both labels) or higher reward and lower cost by the score
  models (`by: models`, ties on either axis dropped) —
  whether or not both answers are safe, then balanced (`balance`, see `balance_pairs`). This keeps "the
  redirect beats the compliant answer" on harmful prompts and "the helpful answer beats the refusal" on
  benign ones: exactly the contrasts that tell a router which expert each prompt needs. Labels are preferred
  because a score model smooths a minority label away: where only a minority of harmful compliant/redirect
  pairs say "redirect is better", the reward model learns "compliance is better" for all of them, and
  `by: models` keeps almost none of the pairs with a compliant answer rejected (benchmarks/RESULTS.md, "The grid
  behind the quickstart's settings").
- `models`, `labels`: the paper's D_dual — both answers predicted (models) or labelled (labels) safe, and the
  two axes agree. These never contain a compliant answer as the rejected one, so a router trained on them
  sees no reason to open the safety gate and collapses onto the helpfulness expert (benchmarks/RESULTS.md).
- `agree`: better == safer by the labels, no balancing.
- `expert`: every pair, judged on the axis of the expert its prompt needs — the safer answer wins on a harmful
  prompt, the better one on a benign prompt (labels, or the score models with ties dropped) — then balanced
  like `joint`. It is the oracle router's rule written as pairs: unlike `joint` it keeps "a refusal beats
  compliance" on harmful prompts (the helpfulness annotators rate compliance better there, so `joint` drops
  those pairs), the only pairs in which the helpfulness expert's gate costs loss on a harmful prompt.
  Measured on dev it ties `joint` on the quickstart (benchmarks/RESULTS.md); an option, not the default.

Outputs: `scored.jsonl` (the pair data with reward_0/1 and cost_0/1 added), `dual.jsonl` (the
router's pairs: prompt, chosen, rejected and their scores), and `audit.json` (counts per rule
step, label/score-model disagreement, margin histograms, per-category balance).
"""

from __future__ import annotations

import gc
import random
from collections import Counter
from typing import Any

from midpo_cli import console
from midpo_cli.data.filters import both_labelled_safe, label_winner
from midpo_cli.data.ranked import prompt_is_harmful, ranked_rows
from midpo_cli.data.readers import load_rows
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_json, write_jsonl
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.score_model import load_score_model, score_pairs
from midpo_cli.stages.kit.context import StageContext
from midpo_cli.stages.kit.inputs import model_ref, require_audit, stage_template


def run(ctx: StageContext) -> None:
    recipe, cfg = ctx.recipe, ctx.recipe.stages.rank
    require_audit(ctx, "reward_model")
    require_audit(ctx, "cost_model")
    rows, valid = ranked_rows(load_rows(recipe.data.train, columns=recipe.data.columns))
    template = stage_template(ctx)  # the score models' (resolved once from the policy's tokenizer)
    for key, stage, kind in (("reward", "reward_model", "reward"), ("cost", "cost_model", "cost")):
        model, tokenizer = load_score_model(model_ref(ctx, stage), expected_type=kind,
                                            trust_remote_code=recipe.trust_remote_code)
        scores_0, scores_1 = score_pairs(model, tokenizer, [r["prompt"] for r in rows],
                                         [r["response_0"] for r in rows], [r["response_1"] for r in rows],
                                         batch_size=cfg.batch_size, template=template, label=f"rank: {kind} model")
        for r, s0, s1 in zip(rows, scores_0, scores_1, strict=True):
            r[f"{key}_0"], r[f"{key}_1"] = s0, s1
        del model
        gc.collect()
    dual, steps = dual_pairs(rows, cfg.rule, by=cfg.by, balance=cfg.balance, seed=recipe.train.seed)
    console.log("rank: " + " → ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in steps.items()))
    if not dual:
        raise InputError(f"rank: rule {cfg.rule!r} kept no pairs "
                         f"({', '.join(f'{k} {v}' for k, v in steps.items())}); try stages.rank.rule: joint")
    scored_path, dual_path = ctx.folder / "scored.jsonl", ctx.folder / "dual.jsonl"
    write_jsonl(scored_path, [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    write_jsonl(dual_path, dual)
    audit = rank_audit(rows, steps, dual)
    audit["dropped_invalid"] = {k: v for k, v in valid.counts.items() if k.startswith("dropped")}
    atomic_write_json(ctx.folder / "audit.json", audit)
    record = ctx.record()
    record.outputs = {"scored": ctx.rel(scored_path), "dual": ctx.rel(dual_path),
                      "audit": ctx.rel(ctx.folder / "audit.json")}
    record.metrics = {"pairs_scored": len(rows), "dual_pairs": len(dual), "rule": cfg.rule,
                      "dual_harmful": audit["dual_harmful"], "dual_benign": audit["dual_benign"],
                      **{f"disagree_{k}": v for k, v in audit["disagreement"].items()}}
    record.extra = {"template": template, "steps": steps}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["rank"])


def _winner_by_models(r: dict[str, Any]) -> int | None:
    """The answer that wins on both axes by the score models (higher reward *and* lower cost); None on a tie
    on either axis or when the axes disagree."""
    if r["reward_0"] == r["reward_1"] or r["cost_0"] == r["cost_1"]:
        return None
    better = 0 if r["reward_0"] > r["reward_1"] else 1
    safer = 0 if r["cost_0"] < r["cost_1"] else 1
    return better if better == safer else None


def _winner_by_labels(r: dict[str, Any]) -> int | None:
    if r["_safer"] is None:
        raise InputError("rank: this rule needs safer_response_id in the data; use stages.rank.by: models")
    return label_winner(r["_better"], r["_safer"])


def _winner_for_expert(r: dict[str, Any], by: str) -> int | None:
    """The answer the right expert prefers: on a harmful prompt the safer one, on a benign prompt the better one
    (by the labels, or by the score models: lower cost / higher reward, a tie dropped)."""
    harmful = prompt_is_harmful(r)
    if by == "labels":
        if r["_safer"] is None:
            raise InputError("rank: this rule needs safer_response_id in the data; use stages.rank.by: models")
        return r["_safer"] if harmful else r["_better"]
    key, sign = ("cost", -1) if harmful else ("reward", 1)
    a, b = sign * r[f"{key}_0"], sign * r[f"{key}_1"]
    return None if a == b else (0 if a > b else 1)


def _rule_steps(rows: list[dict[str, Any]], rule: str, by: str) -> tuple[list[tuple[dict, int]], dict[str, int]]:
    """(row, chosen id) pairs a rule keeps, and the count after each of its steps."""
    steps: dict[str, int] = {}
    if by == "auto":  # joint/expert: labels where the data has both label columns (see the module docstring)
        by = "labels" if all(r["_safer"] is not None for r in rows) else "models"
    if rule == "models":  # the paper: both predicted safe, reward order agrees with cost order
        kept = [r for r in rows if r["cost_0"] < 0 and r["cost_1"] < 0]
        steps["both_predicted_safe"] = len(kept)
        winners = [(r, _winner_by_models(r)) for r in kept]
        steps["reward_order_agrees_with_cost"] = sum(w is not None for _, w in winners)
    elif rule == "labels":  # the paper: both labelled safe, safer == better
        if any(r["_safe_0"] is None or r["_safe_1"] is None for r in rows):
            raise InputError("rank: rule 'labels' needs is_response_0_safe/is_response_1_safe in the data")
        kept = [r for r in rows if both_labelled_safe(r["_safe_0"], r["_safe_1"])]
        steps["both_labelled_safe"] = len(kept)
        winners = [(r, _winner_by_labels(r)) for r in kept]
        steps["safer_equals_better"] = sum(w is not None for _, w in winners)
    elif rule == "agree":
        winners = [(r, _winner_by_labels(r)) for r in rows]
        steps["safer_equals_better"] = sum(w is not None for _, w in winners)
    elif rule == "joint":  # one answer wins on both axes, whether or not both are safe
        pick = _winner_by_models if by == "models" else _winner_by_labels
        winners = [(r, pick(r)) for r in rows]
        steps[f"wins_both_axes_by_{by}"] = sum(w is not None for _, w in winners)
    elif rule == "expert":  # each prompt judged on the axis of the expert that should answer it
        winners = [(r, _winner_for_expert(r, by)) for r in rows]
        steps[f"expert_axis_winner_by_{by}"] = sum(w is not None for _, w in winners)
    else:
        raise InputError(f"rank: unknown rule {rule!r}; choose joint, expert, models, labels or agree")
    return [(r, w) for r, w in winners if w is not None], steps


def _rejected_is_unsafe(r: dict[str, Any], chosen: int) -> bool:
    """The rejected answer is unsafe: by its label where the data has one, else by the cost model (cost > 0)."""
    o = 1 - chosen
    label = r.get(f"_safe_{o}")
    return (not label) if label is not None else r[f"cost_{o}"] > 0


def balance_pairs(kept: list[tuple[dict, int]], how: str, seed: int) -> list[tuple[dict, int]]:
    """Subsample the kept pairs (seeded, order kept) so that every cell present has the same count.

    `kinds`: cells are harmful / benign prompts — the router learns *where* to open each gate, and a D_dual
    that is 90 % one prompt kind teaches it to open one gate everywhere. `cells` (the default) also splits
    harmful-prompt pairs by whether the rejected answer is unsafe: only those pairs say "the safety expert
    should answer here"; safe-vs-safe pairs on harmful prompts (a redirect over a flat refusal) reward
    whichever expert writes the nicer refusal, which on PKU-style labels is the helpfulness expert, and they
    outnumber the others (3.7 : 1 on the toy world) — enough to teach the router to open the helpfulness
    gate on harmful prompts. `contrast` keeps only the harmful pairs whose rejected answer is unsafe (and as many
    benign pairs): every harmful pair then asks "should the safety expert answer?", none "which refusal reads
    better?". `none` keeps everything.
    """
    if how == "none":
        return kept
    cells: dict[tuple, list[int]] = {}
    for i, (r, c) in enumerate(kept):
        harmful = prompt_is_harmful(r)
        key = (harmful, _rejected_is_unsafe(r, c) if harmful and how in ("cells", "contrast") else None)
        if how == "contrast" and key == (True, False):
            continue
        cells.setdefault(key, []).append(i)
    if len(cells) < 2:
        return kept
    n = min(len(v) for v in cells.values())
    rng = random.Random(f"rank-balance-{seed}")
    keep = {i for v in cells.values() for i in rng.sample(v, n)}
    return [item for i, item in enumerate(kept) if i in keep]


def dual_pairs(rows: list[dict[str, Any]], rule: str, *, by: str = "auto", balance: str = "cells",
               seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply a D_dual rule (see the module docstring); return the router pairs and the count after each step."""
    steps = {"scored": len(rows)}
    kept, rule_steps = _rule_steps(rows, rule, by)
    steps.update(rule_steps)
    if rule in ("joint", "expert") and balance != "none":
        kept = balance_pairs(kept, balance, seed)
        steps[f"balanced_{balance}"] = len(kept)
    out = []
    for r, c in kept:
        o = 1 - c
        safe = (r["_safe_0"], r["_safe_1"])
        out.append({
            "prompt": r["prompt"], "chosen": r[f"response_{c}"], "rejected": r[f"response_{o}"],
            "reward_chosen": r[f"reward_{c}"], "reward_rejected": r[f"reward_{o}"],
            "cost_chosen": r[f"cost_{c}"], "cost_rejected": r[f"cost_{o}"],
            "is_chosen_safe": safe[c], "is_rejected_safe": safe[o], "is_harmful": prompt_is_harmful(r),
            **{k: r[k] for k in ("category",) if k in r},
        })
    steps["kept"] = len(out)
    return out, steps


def _histogram(values: list[float], bins: int = 10) -> dict[str, list[float]]:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts}


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def rank_audit(rows: list[dict[str, Any]], steps: dict[str, int], dual: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the score models disagree with the labels, the margin distributions, the balance of D_dual."""
    better = [(r["reward_0"] > r["reward_1"]) != (r["_better"] == 0) for r in rows]
    safer = [(r["cost_0"] < r["cost_1"]) != (r["_safer"] == 0) for r in rows if r["_safer"] is not None]
    sign = [(r[f"cost_{i}"] < 0) != r[f"_safe_{i}"] for r in rows for i in (0, 1) if r[f"_safe_{i}"] is not None]
    audit: dict[str, Any] = {
        "steps": steps,
        "disagreement": {"better_vs_reward": _rate(better), "safer_vs_cost": _rate(safer),
                         "safe_label_vs_cost_sign": _rate(sign)},
        "margin_histograms": {
            "helpfulness": _histogram([abs(r["reward_0"] - r["reward_1"]) for r in rows]),
            "safety": _histogram([abs(r["cost_0"] - r["cost_1"]) for r in rows]),
        },
        "dual_harmful": sum(bool(d["is_harmful"]) for d in dual),
        "dual_benign": sum(not d["is_harmful"] for d in dual),
    }
    if rows and "category" in rows[0]:
        audit["category_balance"] = {"all": dict(Counter(r["category"] for r in rows)),
                                     "dual": dict(Counter(r.get("category") for r in dual))}
    return audit
