"""Stages `baseline_dpo_helpful`, `baseline_dpo_safe`, `baseline_modpo`, `baseline_safedpo`: the trained baselines
MidPO is compared with (docs/design.md §2.11).

Each is the experts' code path (`expert.run_preference`) with another `Objective`: the same SFT base, data,
template, reference log-prob cache, LoRA and training settings (a baseline's unset keys are the helpfulness
expert's, `Recipe.baseline_policy`), so a difference in the report is a difference of objective.

| stage | pairs (filter) | loss |
|---|---|---|
| dpo_helpful | every `better` pair | DPO |
| dpo_safe | the safety expert's pairs (one answer safe, chosen = it) | DPO |
| modpo | every `better` pair, the cost model's scores | MODPO, r_s = −cost |
| safedpo | `better` pairs re-ordered by the safety labels | SafeDPO (offset Δ) |
"""

from __future__ import annotations

from midpo_cli import console
from midpo_cli.baseline_losses import dpo_loss, modpo_loss, safedpo_loss
from midpo_cli.data.filters import BASELINE_FILTERS
from midpo_cli.pipeline.context import StageContext
from midpo_cli.pipeline.inputs import model_ref, require_audit
from midpo_cli.stages.expert import Objective, margin_scores, run_preference


def run_baseline(ctx: StageContext) -> None:
    run_preference(ctx, ctx.stage, baseline_objective(ctx, ctx.stage))


def baseline_objective(ctx: StageContext, stage: str) -> Objective:
    recipe = ctx.recipe
    kind = stage.removeprefix("baseline_")
    policy = recipe.baseline_policy(stage)
    beta = policy["beta"]
    meta = {"kind": kind, "loss": kind, "baseline": True}
    if kind == "modpo":
        w_help, w_safety = getattr(recipe.stages, stage).normalised()
        meta["weights"] = {"helpfulness": w_help, "safety": w_safety}

        def loss(pc, pr, rc, rr, batch):
            return modpo_loss(pc, pr, rc, rr, batch["safety_chosen"], batch["safety_rejected"], beta=beta,
                              w_help=w_help, w_safety=w_safety)

        columns = safety_scores
    elif kind == "safedpo":
        delta = getattr(recipe.stages, stage).delta
        meta["delta"] = delta

        def loss(pc, pr, rc, rr, batch):
            return safedpo_loss(pc, pr, rc, rr, batch["chosen_unsafe"], batch["rejected_unsafe"], beta=beta,
                                delta=delta)

        columns = safety_labels
    else:
        def loss(pc, pr, rc, rr, batch):
            return dpo_loss(pc, pr, rc, rr, beta)

        columns = no_columns
    return Objective(data_stage=BASELINE_FILTERS[stage], beta=beta, lora=policy["lora"],
                     precompute_ref=policy["precompute_ref"], columns=columns, loss=loss, meta=meta)


def no_columns(ctx, stage, splits, template, tokenizer):
    return {}, {"mode": "dpo", "zero_fraction": 1.0}


def safety_scores(ctx, stage, splits, template, tokenizer):
    """MODPO's r_s = −cost of each answer, from the cost model (audited like the safety expert's), cached in the
    stage folder by the cost model's fingerprint."""
    require_audit(ctx, "cost_model")
    scorer = model_ref(ctx, "cost_model")
    cached = margin_scores(ctx, "cost_model", scorer, splits, template, tokenizer)
    chosen, rejected = [], []
    for name, (_, feats) in zip(("train", "eval"), splits, strict=True):
        values = cached["values"].get(name) if feats else None
        chosen.append([-v for v in values[0]] if values else [])
        rejected.append([-v for v in values[1]] if values else [])
    gaps = [c - r for c, r in zip(chosen[0], rejected[0], strict=True)]
    stats = {"mode": "modpo", "score_model": scorer, "zero_fraction": None,
             "mean_safety_gap": sum(gaps) / len(gaps) if gaps else None,
             "winner_safer_fraction": sum(g > 0 for g in gaps) / len(gaps) if gaps else None}
    console.log(f"{stage}: r_s = −cost from {scorer}: the helpfulness winner is the safer answer in "
                f"{stats['winner_safer_fraction'] or 0:.1%} of the training pairs")
    return {"safety_chosen": chosen, "safety_rejected": rejected}, stats


def safety_labels(ctx, stage, splits, template, tokenizer):
    """SafeDPO's h = 1 for an answer labelled unsafe (after the re-ordering the winner is always safe)."""
    out: dict[str, list[list[float]]] = {"chosen_unsafe": [], "rejected_unsafe": []}
    for sel, feats in splits:
        pairs = [sel.pairs[f["pair_index"]] for f in feats] if feats else []
        out["chosen_unsafe"].append([0.0 if p.chosen_safe else 1.0 for p in pairs])
        out["rejected_unsafe"].append([0.0 if p.rejected_safe else 1.0 for p in pairs])
    train = out["rejected_unsafe"][0]
    stats = {"mode": "safedpo", "zero_fraction": 1 - sum(train) / len(train) if train else None}
    return out, stats


def baseline_entries(ctx: StageContext, sweep_sets: tuple[str, ...] | None) -> list:
    """The generate stage's models for `stages.baselines`: each trained baseline labelled by its kind; the TIES
    merge as `ties`, or with several candidate weights each as `ties@w_s,w_h` on the sweep sets (the report
    keeps the dev-best one, as for the fixed blends)."""
    from midpo_cli.pipeline.graph import listed_baselines
    from midpo_cli.stages.generate import ModelEntry

    entries = []
    for stage in listed_baselines(ctx.recipe):
        kind = stage.removeprefix("baseline_")
        candidates = (ctx.inputs.get(stage) or {}).get("outputs", {}).get("candidates")
        if kind == "ties" and candidates and len(candidates) > 1:
            entries += [ModelEntry(label, str(ctx.run_dir / path), sets=sweep_sets)
                        for label, path in candidates.items()]
        else:
            entries.append(ModelEntry(kind, str(ctx.input_path(stage, "adapter"))))
    return entries
