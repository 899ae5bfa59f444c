"""Stages `safety_expert` and `helpfulness_expert`: a LoRA adapter trained with SPE-DPO (docs/design.md §2).

Order of operations, and why:
1. select and encode the kind's pairs (safety: exactly one safe, chosen = safer; helpfulness: all
   pairs, chosen = better);
2. margins from the frozen score model, computed once and cached in the stage folder — the score
   model is then freed, it never runs inside a training step;
3. the policy gets its LoRA adapter; reference log-probs come from the same weights with the adapter
   disabled (one copy of the base in memory), precomputed once and cached per sequence;
4. the engine trains; the adapter is saved as a standard PEFT folder, reloaded and checked. With
   `select: dev` the adapter is kept every `select_every` steps and the step best on the dev prompts is the one
   saved (`choose_on_dev`; the dev set and its judge are read before any model loads).

The trained baselines (`baseline_dpo_helpful`, `baseline_dpo_safe`, `baseline_modpo`, `baseline_safedpo`,
docs/design.md §2.11) run here too, each with its own `Objective`: the same SFT base, data, template, reference
log-prob cache, LoRA and training settings (a baseline's unset keys are its expert's, `Recipe.baseline_policy`),
so a difference in the report is a difference of objective.

| stage | pairs (filter) | loss |
|---|---|---|
| dpo_helpful | every `better` pair | DPO |
| dpo_safe | the safety expert's pairs (one answer safe, chosen = it) | DPO |
| modpo | every `better` pair, the cost model's scores | MODPO, r_s = −cost |
| safedpo | `better` pairs re-ordered by the safety labels | SafeDPO (offset Δ) |
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.filters import BASELINE_FILTERS, pair_filter
from midpo_cli.data.tokenize import collate_pairs, with_columns
from midpo_cli.engine.host_memory import release_freed_memory
from midpo_cli.engine.loop import train
from midpo_cli.engine.preference import DpoHealth, concatenated_logps, reference_logps
from midpo_cli.errors import InputError
from midpo_cli.evaluation.expert_select import best_step, flat_curve, objective, wants_harmful
from midpo_cli.io import atomic_write_json, try_read_json
from midpo_cli.judges.panel import judged_by
from midpo_cli.losses.baselines import dpo_loss, modpo_loss, safedpo_loss
from midpo_cli.losses.preference import preference_margin, spe_dpo_loss
from midpo_cli.manifest import fingerprint, write_manifest
from midpo_cli.modeling.base_identity import base_fingerprint
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
from midpo_cli.modeling.lora import (
    adapter_off,
    add_lora,
    base_reference,
    check_targets,
    freeze_lora_a,
    load_snapshot,
    loaded_snapshot,
    lora_config,
    resolve_targets,
    save_checked_adapter,
    save_snapshot,
    saved_steps,
)
from midpo_cli.modeling.score_model import load_score_model, score_pairs
from midpo_cli.stages.kit.context import StageContext
from midpo_cli.stages.kit.dev_choice import DevPrompts, judge_on_dev
from midpo_cli.stages.kit.dev_set import dev_prompts_of_kind
from midpo_cli.stages.kit.inputs import (
    dev_judge,
    encoded_pairs,
    engine_settings,
    model_ref,
    policy_ref,
    ref_cache,
    require_audit,
    stage_template,
    tokenizer_ref,
)

# the score model of each expert: its SPE-DPO margins
SCORE_STAGE = {"safety_expert": "cost_model", "helpfulness_expert": "reward_model", "dpo_expert": "reward_model"}


def run_safety_expert(ctx: StageContext) -> None:
    run_expert(ctx, "safety_expert")


def run_helpfulness_expert(ctx: StageContext) -> None:
    run_expert(ctx, "helpfulness_expert")


def run_dpo_expert(ctx: StageContext) -> None:
    """The plain-DPO baseline in its own stage folder, so it sits beside the helpfulness expert."""
    run_expert(ctx, "dpo_expert")


@dataclass(frozen=True)
class Objective:
    """What sets one preference-trained adapter apart from another: its pairs, per-pair columns and loss.

    Everything else — base policy, tokenizer, template, encoding, reference cache, LoRA, engine, saving — is
    `run_preference`'s, shared by the experts and the baselines (docs/design.md §2.11), so a comparison of
    them measures the objective alone.
    - data_stage: the pair filter (data/filters.py) that selects and orients the pairs;
    - columns(ctx, stage, splits, template, tokenizer) → ({name: one list per split}, statistics): per-pair
      floats the loss reads from the batch (a margin, score values, labels);
    - loss(policy_c, policy_r, ref_c, ref_r, batch) → (losses (B,), chosen_rewards, rejected_rewards).
    """

    data_stage: str
    beta: float
    lora: Any
    precompute_ref: bool
    columns: Callable[..., tuple[dict[str, list[list[float]]], dict]]
    loss: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    meta: dict = field(default_factory=dict)
    select: str = "last"  # `dev`: keep the step best on the dev prompts (the experts' `select`, §2.6)
    select_every: int | None = None


def expert_objective(ctx: StageContext, stage: str) -> Objective:
    """SPE-DPO: m = γ·max(0, S(y_w) − S(y_l)) from the stage's score model (m = 0 for loss: dpo and dpo_expert)."""
    cfg = getattr(ctx.recipe.stages, stage)

    def columns(ctx, stage, splits, template, tokenizer):
        margins, stats = spe_margins(ctx, stage, splits, template, tokenizer)
        return {"margin": margins}, stats

    def loss(policy_c, policy_r, ref_c, ref_r, batch):
        return spe_dpo_loss(policy_c, policy_r, ref_c, ref_r, batch["margin"], cfg.beta)

    return Objective(data_stage=pair_filter(stage, cfg.loss), beta=cfg.beta, lora=cfg.lora,
                     precompute_ref=cfg.precompute_ref, columns=columns, loss=loss,
                     meta={"kind": stage.removesuffix("_expert"), "loss": cfg.loss, "margin_scale": cfg.margin_scale},
                     select=cfg.select, select_every=cfg.select_every)


def run_expert(ctx: StageContext, stage: str) -> None:
    run_preference(ctx, stage, expert_objective(ctx, stage))


def run_preference(ctx: StageContext, stage: str, objective: Objective) -> None:
    """Train one LoRA adapter on preference pairs with `objective` (module docstring's order of operations)."""
    recipe = ctx.recipe
    settings = engine_settings(recipe, stage)
    dev = expert_dev_prompts(ctx, stage) if objective.select == "dev" else None
    policy = policy_ref(ctx)
    tokenizer = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
    template = stage_template(ctx, tokenizer)
    (train_sel, train_feats), (eval_sel, eval_feats), extras, column_stats = encode_with_columns(
        ctx, stage, objective, tokenizer, template)
    pad_id = tokenizer.pad_token_id
    # the data is encoded and nothing below needs the tokenizer, which for a large vocabulary is no small
    # thing (Gemma 3's: ~270 MiB resident); it leaves before the policy arrives, as the score model did
    del tokenizer
    gc.collect()
    release_freed_memory()
    model, base_fingerprint = lora_policy(policy, objective.lora, settings, trust_remote_code=recipe.trust_remote_code)
    reference = partial(adapter_off, model)

    def collate(features):
        return collate_pairs(features, pad_id, extras=tuple(k for k in extras if k in features[0]),
                             share_prompt=settings.share_prompt)

    if objective.precompute_ref:
        cache = ref_cache(ctx, template)
        ref_batch = settings.reference_batch_size
        train_feats = reference_logps(model, train_feats, train_sel, collate, cache, batch_size=ref_batch,
                                      reference=reference, stage=stage)
        eval_feats = reference_logps(model, eval_feats, eval_sel, collate, cache, batch_size=ref_batch,
                                     reference=reference, stage=stage)

    health, memory = DpoHealth(warmup_steps=10), {}
    on_step = step_watcher(health, memory, snapshotter(model, ctx.folder, objective.select_every)
                           if dev is not None else None)
    loss_fn = make_pair_loss(objective.loss, reference=reference)
    result = train(model=model, train_data=train_feats, collate=collate, loss_fn=loss_fn, settings=settings,
                   out_dir=ctx.folder, eval_data=eval_feats or None, resume=ctx.resume, stage_name=stage,
                   on_step=on_step)
    dev_select = choose_on_dev(ctx, stage, result, dev, policy=policy, template=template) if dev is not None else None

    out = ctx.folder / "adapter"
    meta = {**objective.meta, **base_reference(policy, out), "base_fingerprint": base_fingerprint,
            "base_model_at_training": policy, "beta": objective.beta,
            "data_fingerprint": fingerprint([f["pair_index"] for f in train_feats]),
            "score_model": column_stats.get("score_model"), "midpo_fingerprint": ctx.fingerprint}
    save_checked_adapter(result.model, out, collate(train_feats[:4]), meta)
    record = expert_record(ctx, result, template=template, margins=column_stats, health=health, memory=memory,
                           counts={"train": train_sel.counts, "eval": eval_sel.counts if eval_sel else None},
                           dev=dev_select)
    record.outputs = {"adapter": ctx.rel(out), "base_model": policy}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"][stage])


def encode_with_columns(ctx: StageContext, stage: str, objective: Objective, tokenizer, template: str):
    """((train selection, features), (eval selection, features), the batch's extra keys, the columns' statistics):
    the objective's pairs encoded, each feature carrying the objective's per-pair columns."""
    recipe = ctx.recipe
    train_sel, train_feats = encode_split(recipe, objective.data_stage, stage, recipe.data.train, tokenizer, template)
    eval_sel, eval_feats = (encode_split(recipe, objective.data_stage, stage, recipe.data.eval, tokenizer, template)
                            if recipe.data.eval else (None, []))
    columns, column_stats = objective.columns(ctx, stage, [(train_sel, train_feats), (eval_sel, eval_feats)],
                                              template, tokenizer)
    train_feats = with_columns(train_feats, **{k: v[0] for k, v in columns.items()})
    eval_feats = with_columns(eval_feats, **{k: v[1] for k, v in columns.items()})
    extras = (*columns, "ref_chosen_logps", "ref_rejected_logps")
    return (train_sel, train_feats), (eval_sel, eval_feats), extras, column_stats


def step_watcher(health: DpoHealth, memory: dict, snapshot=None):
    """The training loop's per-step hook: DPO health, what is alive at step 1 (the policy and its adapter only,
    no reference copy), and `select: dev`'s adapter snapshots."""
    def on_step(step: int, metrics: dict[str, float]) -> None:
        health.update(step, metrics)
        if step == 1:
            memory.update(live_parameters())
        if snapshot is not None:
            snapshot(step, metrics)
    return on_step


def snapshotter(model: Any, folder: Path, every: int):
    """on_step for the engine: the adapter's weights every `every` optimizer steps (`select: dev`)."""
    def on_step(step: int, _metrics: dict[str, float]) -> None:
        if step % every == 0:
            save_snapshot(model, folder, step)
    return on_step


def expert_dev_prompts(ctx: StageContext, stage: str) -> DevPrompts:
    """`select: dev`'s dev prompts of the expert's kind and their judge (stages.kit.inputs.dev_judge), read once
    before any model loads: a hub set is read, and a dev set no judge can judge said, before training rather than
    after."""
    name, prompts = dev_prompts_of_kind(ctx.recipe, wants_harmful(stage), f"stages.{stage}.select: dev")
    return DevPrompts(name, prompts, dev_judge(ctx, name, prompts))


def choose_on_dev(ctx: StageContext, stage: str, result, dev: DevPrompts, *, policy: str, template: str
                  ) -> dict[str, Any]:
    """`select: dev`: every snapshot (the last step's included) answers the dev prompts, judged by `dev.judge`; the
    best step is loaded into the trained model. Returns the manifest's `dev_select` record."""
    recipe, model = ctx.recipe, result.model
    if result.global_step not in saved_steps(ctx.folder):
        save_snapshot(model, ctx.folder, result.global_step)
    # the stage dropped its tokenizer before the policy arrived, to keep it out of memory while training; the
    # dev answers need one, so it comes back only now
    tokenizer = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
    snapshots = {step: partial(loaded_snapshot, model, ctx.folder, step) for step in saved_steps(ctx.folder)}
    judged = judge_on_dev(model, snapshots, dev, tokenizer=tokenizer, template=template,
                          settings=recipe.stages.generate, label=f"{stage}: select: dev")
    curve = [(step, objective(stage, j.outcomes)) for step, j in judged.items()]
    chosen = best_step(curve)
    if chosen is None:
        raise InputError(f"{stage}: no dev score at any step ({dev.name})")
    load_snapshot(model, ctx.folder, chosen)
    how = judged_by(dev.judge)
    console.log(f"{stage}: dev curve on {len(dev.prompts)} {dev.name} prompts ({how}): "
                + ", ".join(f"{s}: {v:.3f}" for s, v in curve if v is not None) + f"; keeping step {chosen}")
    flat = flat_curve(curve)
    if flat:
        console.warn(f"{stage}: {flat}")
    return {"prompts": dev.name, "n_prompts": len(dev.prompts), "judged_by": how, "chosen_step": chosen,
            "curve": [{"step": s, "score": v} for s, v in curve], **({"flat": flat} if flat else {})}


def score_kind(score_stage: str) -> str:
    """The score model's kind ("cost" or "reward"), as its loader and the scorer name it."""
    return "cost" if score_stage == "cost_model" else "reward"


def expert_record(ctx: StageContext, result, *, template: str, margins: dict, health: DpoHealth, memory: dict,
                  counts: dict, dev: dict | None = None):
    """The manifest record of an expert stage, its outputs left to the caller: losses, speed, margins, health,
    and the dev curve `select: dev` chose the step on."""
    record = ctx.record()
    record.metrics = {
        "train_loss": result.last_metrics.get("loss"),
        "eval_loss": (result.last_eval or {}).get("loss"),
        "eval_rewards/accuracies": (result.last_eval or {}).get("rewards/accuracies"),
        "steps": result.global_step,
        "pairs_per_s": result.samples_per_s,
        "margin_zero_fraction": margins.get("zero_fraction"),
        **({"chosen_step": dev["chosen_step"]} if dev else {}),
    }
    record.extra = {"template": template, "resumed_from_step": result.resumed_from_step, "margins": margins,
                    "health_warnings": sorted(health.warned), "live_parameters_during_training": memory,
                    "data": counts, **({"dev_select": dev} if dev else {})}
    return record


# ------------------------------------------------------------------------------------------ baselines


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


def lora_policy(policy: str, lora, settings, *, trust_remote_code: bool):
    """(the policy with a fresh LoRA adapter on the recipe's targets, the fingerprint of its base weights)."""
    model = load_causal_lm(policy, dtype=settings.precision, seed=settings.seed, trust_remote_code=trust_remote_code)
    targets = resolve_targets(getattr(model.config, "model_type", None), lora.target_modules)
    check_targets(model, targets)  # routable layers only: refuse before training, not at the router stage
    # recorded in midpo.json: loaders refuse another base; of the stored weights, so any --dtype accepts it
    base_id = base_fingerprint(model, policy, seed=settings.seed, trust_remote_code=trust_remote_code)
    model = add_lora(model, lora_config(r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                                        target_modules=tuple(targets)), seed=settings.seed)
    if lora.shared_a:
        freeze_lora_a(model)
    return model, base_id


def encode_split(recipe, data_stage: str, stage: str, spec: str, tokenizer, template: str):
    return encoded_pairs(spec, data_stage, tokenizer, template, recipe.data.max_length, columns=recipe.data.columns,
                         stage=stage)


def spe_margins(ctx: StageContext, stage: str, splits, template: str, tokenizer=None
                ) -> tuple[list[list[float]], dict]:
    """SPE-DPO margins m = γ·max(0, S(y_w) − S(y_l)), S = −cost (safety) or reward (helpfulness): one list per
    split (in the features' order), and their statistics.

    The score model reads each answer as the policy will see it: truncated to data.max_length (the
    margin and the policy's Δ must be about the same text).
    """
    cfg = getattr(ctx.recipe.stages, stage)
    if cfg.loss == "dpo" or stage == "dpo_expert":
        return [[0.0] * len(feats) for _, feats in splits], {"mode": "dpo", "zero_fraction": 1.0}
    score_stage = SCORE_STAGE[stage]
    require_audit(ctx, score_stage)
    scorer = model_ref(ctx, score_stage)
    cached = margin_scores(ctx, score_stage, scorer, splits, template, tokenizer)
    sign = -1.0 if score_stage == "cost_model" else 1.0  # safety score S = −cost
    per_split: list[list[float]] = []
    all_margins = []
    for name, (_, feats) in zip(("train", "eval"), splits, strict=True):
        if not feats:
            per_split.append([])
            continue
        chosen, rejected = (torch.tensor(v, dtype=torch.float64) * sign for v in cached["values"][name])
        margins = preference_margin(chosen, rejected, scale=cfg.margin_scale)
        per_split.append(margins.tolist())
        if name == "train":
            all_margins = margins
    zero = float((all_margins == 0).double().mean()) if len(all_margins) else None
    stats = {"mode": "spe", "score_model": scorer, "zero_fraction": zero,
             "mean": float(all_margins.mean()) if len(all_margins) else None,
             "max": float(all_margins.max()) if len(all_margins) else None}
    console.log(f"{stage}: margins from {scorer}: mean {stats['mean']:.3f}, zero (score model disagrees "
                f"with the label) {zero:.1%}")
    return per_split, stats


def margin_scores(ctx: StageContext, score_stage: str, scorer: str, splits, template: str, tokenizer) -> dict:
    """The score model's scores of each split's chosen and rejected answers, cached in `<stage>/margins.json`
    by the score model's fingerprint; the score model is freed before the policy arrives."""
    cache_file = ctx.folder / "margins.json"
    cached = try_read_json(cache_file)  # a missing or broken cache is rebuilt
    score_fingerprint = (ctx.inputs[score_stage] or {}).get("fingerprint")
    if isinstance(cached, dict) and cached.get("answers") == "as-encoded" and \
            cached.get("score_model_fingerprint") == score_fingerprint:
        return cached
    model, tok = load_score_model(scorer, expected_type=score_kind(score_stage),
                                  trust_remote_code=ctx.recipe.trust_remote_code)
    values: dict[str, list[list[float]]] = {}
    for name, (sel, feats) in zip(("train", "eval"), splits, strict=True):
        if not feats:
            continue
        pairs = [sel.pairs[f["pair_index"]] for f in feats]
        chosen = [seen_answer(tokenizer, f, "chosen", p.chosen) for f, p in zip(feats, pairs, strict=True)]
        rejected = [seen_answer(tokenizer, f, "rejected", p.rejected) for f, p in zip(feats, pairs, strict=True)]
        values[name] = list(score_pairs(model, tok, [p.prompt for p in pairs], chosen, rejected, batch_size=32,
                                        template=template, label=f"{ctx.stage}: margins ({name} pairs)"))
    del model
    gc.collect()  # the score model leaves memory before the policy arrives
    release_freed_memory()  # ... and the process's resident set (midpo_cli/engine/host_memory.py)
    cached = {"score_model_fingerprint": score_fingerprint, "values": values, "answers": "as-encoded"}
    atomic_write_json(cache_file, cached)
    return cached


def seen_answer(tokenizer, feature: dict, side: str, text: str) -> str:
    """The answer as encoded for the policy: the original text when it fit (EOS kept), else the decoded cut."""
    if tokenizer is None:
        return text
    ids = feature[f"{side}_input_ids"][feature[f"{side}_prompt_len"]:]
    if ids and ids[-1] == tokenizer.eos_token_id:
        return text
    return tokenizer.decode(ids, skip_special_tokens=True)


def make_pair_loss(objective_loss, reference):
    """loss_fn for the engine; reference log-probs come from the batch, or a no-grad adapter-off pass."""

    def loss_fn(model, batch):
        policy_c, policy_r = concatenated_logps(model, batch)
        if "ref_chosen_logps" in batch:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            with torch.no_grad(), reference():
                ref_c, ref_r = concatenated_logps(model, batch)
        losses, chosen_rewards, rejected_rewards = objective_loss(policy_c, policy_r, ref_c, ref_r, batch)
        margin = batch["margin"].float() if "margin" in batch else torch.zeros_like(chosen_rewards)
        metrics = {  # TRL's DPOTrainer names for the same quantities; spe_* are SPE-DPO's own (TRL has none)
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy_c.detach().mean(),
            "logps/rejected": policy_r.detach().mean(),
            "spe_margin_mean": margin.mean(),  # the score model's margin, not rewards/margins
            "spe_margin_zero_fraction": (margin == 0).float().mean(),
        }
        return losses.mean(), metrics

    return loss_fn


def live_parameters() -> dict[str, int]:
    """Count distinct parameter storages held by every live nn.Module (gc walk), and the modules' count.

    If a second copy of the base (a reference model) or a score model were alive, its weights would
    show up here; the e2e test compares this with the policy's own size.
    """
    import warnings

    seen: set[int] = set()
    total = 0
    modules = 0
    with warnings.catch_warnings():  # isinstance on torch's deprecated module proxies warns
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module | torch.nn.Parameter)]
    for obj in objects:
        name = obj.__class__.__name__
        if isinstance(obj, torch.nn.Module) and (
            (name.endswith("ForCausalLM") and not name.startswith("Peft")) or name == "ScoreModel"
        ):
            modules += 1
        if isinstance(obj, torch.nn.Parameter):
            key = obj.data_ptr()
            if key not in seen:
                seen.add(key)
                total += obj.numel()
    return {"parameter_elements": total, "top_level_models": modules}
