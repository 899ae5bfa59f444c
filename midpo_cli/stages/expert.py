"""Stages `safety_expert` and `helpfulness_expert`: a LoRA adapter trained with SPE-DPO (docs/design.md §2).

Order of operations, and why:
1. select and encode the kind's pairs (safety: exactly one safe, chosen = safer; helpfulness: all
   pairs, chosen = better);
2. margins from the frozen score model, computed once and cached in the stage folder — the score
   model is then freed, it never runs inside a training step;
3. the policy gets its LoRA adapter; reference log-probs come from the same weights with the adapter
   disabled (one copy of the base in memory), precomputed once and cached per sequence;
4. the engine trains; the adapter is saved as a standard PEFT folder, reloaded and checked.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from midpo_cli import console
from midpo_cli.data.filters import pair_filter
from midpo_cli.data.tokenize import collate_pairs, with_columns
from midpo_cli.engine.artifacts import logits_on, save_checked
from midpo_cli.engine.loop import train
from midpo_cli.engine.preference import DpoHealth, concatenated_logps, reference_logps
from midpo_cli.host_memory import release_freed_memory
from midpo_cli.io import atomic_write_json, read_json
from midpo_cli.losses import preference_margin, spe_dpo_loss
from midpo_cli.manifest import fingerprint, write_manifest
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
from midpo_cli.modeling.lora import (
    add_lora,
    base_reference,
    check_targets,
    lora_config,
    resolve_targets,
    weights_fingerprint,
)
from midpo_cli.modeling.score_model import load_score_model, score_pairs
from midpo_cli.pipeline.context import StageContext
from midpo_cli.pipeline.inputs import (
    encoded_pairs,
    engine_settings,
    model_ref,
    policy_ref,
    ref_cache,
    require_audit,
    stage_template,
    tokenizer_ref,
)

SCORE_STAGE = {"safety_expert": "cost_model", "helpfulness_expert": "reward_model"}
EXTRAS = ("margin", "ref_chosen_logps", "ref_rejected_logps")


def run_safety_expert(ctx: StageContext) -> None:
    run_expert(ctx, "safety_expert")


def run_helpfulness_expert(ctx: StageContext) -> None:
    run_expert(ctx, "helpfulness_expert")


def run_dpo_expert(ctx: StageContext) -> None:
    """The plain-DPO baseline in its own stage folder, so it sits beside the helpfulness expert."""
    run_expert(ctx, "dpo_expert")


def run_expert(ctx: StageContext, stage: str) -> None:
    recipe, cfg = ctx.recipe, getattr(ctx.recipe.stages, stage)
    settings = engine_settings(recipe, stage)
    policy = policy_ref(ctx)
    tokenizer = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
    template = stage_template(ctx, tokenizer)
    train_sel, train_feats = encode_split(recipe, stage, recipe.data.train, tokenizer, template)
    eval_sel, eval_feats = (encode_split(recipe, stage, recipe.data.eval, tokenizer, template) if recipe.data.eval
                            else (None, []))

    (train_margins, eval_margins), margin_stats = spe_margins(
        ctx, stage, [(train_sel, train_feats), (eval_sel, eval_feats)], template, tokenizer)
    train_feats = with_columns(train_feats, margin=train_margins)
    eval_feats = with_columns(eval_feats, margin=eval_margins)

    pad_id = tokenizer.pad_token_id
    # the data is encoded and nothing below needs the tokenizer, which for a large vocabulary is no small
    # thing (Gemma 3's: ~270 MiB resident); it leaves before the policy arrives, as the score model did
    del tokenizer
    gc.collect()
    release_freed_memory()
    model, base_fingerprint = lora_policy(policy, cfg.lora, settings, trust_remote_code=recipe.trust_remote_code)

    def collate(features):
        return collate_pairs(features, pad_id, extras=tuple(k for k in EXTRAS if k in features[0]),
                             share_prompt=settings.share_prompt)

    if cfg.precompute_ref:
        cache = ref_cache(ctx, template)
        ref_batch = settings.reference_batch_size
        train_feats = reference_logps(model, train_feats, train_sel, collate, cache, batch_size=ref_batch,
                                      reference=model.disable_adapter, stage=stage)
        eval_feats = reference_logps(model, eval_feats, eval_sel, collate, cache, batch_size=ref_batch,
                                     reference=model.disable_adapter, stage=stage)

    health = DpoHealth(warmup_steps=10)
    memory: dict[str, int] = {}

    def on_step(step: int, metrics: dict[str, float]) -> None:
        health.update(step, metrics)
        if step == 1:  # what is alive while training: the policy (+ adapter) only, no reference copy
            memory.update(live_parameters())

    loss_fn = make_dpo_loss(cfg.beta, reference=model.disable_adapter)
    result = train(model=model, train_data=train_feats, collate=collate, loss_fn=loss_fn, settings=settings,
                   out_dir=ctx.folder, eval_data=eval_feats or None, resume=ctx.resume, stage_name=stage,
                   on_step=on_step)

    out = ctx.folder / "adapter"
    meta = {"kind": stage.removesuffix("_expert"), "loss": cfg.loss, **base_reference(policy, out),
            "base_fingerprint": base_fingerprint, "base_model_at_training": policy, "beta": cfg.beta,
            "margin_scale": cfg.margin_scale, "data_fingerprint": fingerprint([f["pair_index"] for f in train_feats]),
            "score_model": margin_stats.get("score_model"), "midpo_fingerprint": ctx.fingerprint}
    save_adapter(result.model, out, collate(train_feats[:4]), meta)
    record = ctx.record()
    record.outputs = {"adapter": ctx.rel(out), "base_model": policy}
    record.metrics = {
        "train_loss": result.last_metrics.get("loss"),
        "eval_loss": (result.last_eval or {}).get("loss"),
        "eval_rewards/accuracies": (result.last_eval or {}).get("rewards/accuracies"),
        "steps": result.global_step,
        "pairs_per_s": result.samples_per_s,
        "margin_zero_fraction": margin_stats.get("zero_fraction"),
    }
    record.extra = {"template": template, "resumed_from_step": result.resumed_from_step, "margins": margin_stats,
                    "health_warnings": sorted(health.warned), "live_parameters_during_training": memory,
                    "data": {"train": train_sel.counts, "eval": eval_sel.counts if eval_sel else None}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"][stage])


def lora_policy(policy: str, lora, settings, *, trust_remote_code: bool):
    """(the policy with a fresh LoRA adapter on the recipe's targets, the fingerprint of its base weights)."""
    model = load_causal_lm(policy, dtype=settings.precision, seed=settings.seed, trust_remote_code=trust_remote_code)
    targets = resolve_targets(getattr(model.config, "model_type", None), lora.target_modules)
    check_targets(model, targets)  # routable layers only: refuse before training, not at the router stage
    base_fingerprint = weights_fingerprint(model)  # recorded in midpo.json: loaders refuse another base
    model = add_lora(model, lora_config(r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                                        target_modules=tuple(targets)), seed=settings.seed)
    return model, base_fingerprint


def encode_split(recipe, stage: str, spec: str, tokenizer, template: str):
    data = pair_filter(stage, getattr(recipe.stages, stage).loss)
    return encoded_pairs(spec, data, tokenizer, template, recipe.data.max_length, columns=recipe.data.columns,
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
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else None
    score_fingerprint = (ctx.inputs[score_stage] or {}).get("fingerprint")
    if cached is not None and cached.get("answers") == "as-encoded" and \
            cached.get("score_model_fingerprint") == score_fingerprint:
        return cached
    model, tok = load_score_model(scorer, expected_type="cost" if score_stage == "cost_model" else "reward",
                                  trust_remote_code=ctx.recipe.trust_remote_code)
    values: dict[str, list[list[float]]] = {}
    for name, (sel, feats) in zip(("train", "eval"), splits, strict=True):
        if not feats:
            continue
        pairs = [sel.pairs[f["pair_index"]] for f in feats]
        chosen = [seen_answer(tokenizer, f, "chosen", p.chosen) for f, p in zip(feats, pairs, strict=True)]
        rejected = [seen_answer(tokenizer, f, "rejected", p.rejected) for f, p in zip(feats, pairs, strict=True)]
        values[name] = list(score_pairs(model, tok, [p.prompt for p in pairs], chosen, rejected, batch_size=32,
                                        template=template))
    del model
    gc.collect()  # the score model leaves memory before the policy arrives
    release_freed_memory()  # ... and the process's resident set (midpo_cli/host_memory.py)
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


def make_dpo_loss(beta: float, reference):
    """loss_fn for the engine; reference log-probs come from the batch, or a no-grad adapter-off pass."""

    def loss_fn(model, batch):
        policy_c, policy_r = concatenated_logps(model, batch)
        if "ref_chosen_logps" in batch:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            with torch.no_grad(), reference():
                ref_c, ref_r = concatenated_logps(model, batch)
        losses, chosen_rewards, rejected_rewards = spe_dpo_loss(policy_c, policy_r, ref_c, ref_r,
                                                                batch["margin"], beta)
        metrics = {  # TRL's DPOTrainer names for the same quantities; spe_* are SPE-DPO's own (TRL has none)
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy_c.detach().mean(),
            "logps/rejected": policy_r.detach().mean(),
            "spe_margin_mean": batch["margin"].float().mean(),  # the score model's margin, not rewards/margins
            "spe_margin_zero_fraction": (batch["margin"] == 0).float().mean(),
        }
        return losses.mean(), metrics

    return loss_fn


def save_adapter(model, out: Path, probe_batch: dict, meta: dict) -> None:
    """PEFT folder + midpo.json; loaded back as a second adapter on the same base and compared."""
    logits = logits_on({k: probe_batch[k] for k in ("input_ids", "attention_mask")})

    def save_fn(path):
        model.save_pretrained(path, safe_serialization=True)
        base = Path(str(meta.get("base_model_at_training", ""))).expanduser()
        if base.exists():  # PEFT wrote the path as given (relative to the cwd): make it valid from anywhere
            config = read_json(Path(path) / "adapter_config.json")
            config["base_model_name_or_path"] = str(base.resolve())
            atomic_write_json(Path(path) / "adapter_config.json", config)
        atomic_write_json(Path(path) / "midpo.json", meta)

    def load_fn(path):
        model.load_adapter(str(path), adapter_name="verify")  # no second copy of the base weights
        return model

    def probe_fn(loaded):
        loaded.set_adapter("verify")
        try:
            return logits(loaded)
        finally:
            loaded.set_adapter("default")
            loaded.delete_adapter("verify")

    save_checked(model, out, save_fn=save_fn, load_fn=load_fn, forward=logits, probe_fn=probe_fn)


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
