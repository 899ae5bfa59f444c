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
from midpo_cli.data.filters import select_pairs
from midpo_cli.data.readers import load_rows
from midpo_cli.data.tokenize import collate_pairs, encode_pairs
from midpo_cli.engine.artifacts import save_verified
from midpo_cli.engine.loop import train
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
from midpo_cli.modeling.score_model import load_score_model, score_texts
from midpo_cli.stages.common import engine_settings, model_ref, policy_ref, stage_template, tokenizer_ref
from midpo_cli.stages.context import StageContext
from midpo_cli.stages.dpo import DpoHealth, RefLogpCache, concatenated_logps, fill_ref_logps
from midpo_cli.stages.score_models import require_audit

SCORE_STAGE = {"safety_expert": "cost_model", "helpfulness_expert": "reward_model"}
EXTRAS = ("margin", "ref_chosen_logps", "ref_rejected_logps")


def run_safety_expert(ctx: StageContext) -> None:
    run_expert(ctx, "safety_expert")


def run_helpfulness_expert(ctx: StageContext) -> None:
    run_expert(ctx, "helpfulness_expert")


def run_dpo_expert(ctx: StageContext) -> None:
    """The plain-DPO baseline in its own stage folder, so it sits beside the helpfulness expert."""
    run_expert(ctx, "dpo_expert")


def data_stage(stage: str, loss: str) -> str:
    """The filter a kind's pairs go through: dpo uses every `better` pair, like plain DPO does."""
    return "dpo" if stage == "dpo_expert" or (stage == "helpfulness_expert" and loss == "dpo") else stage


def run_expert(ctx: StageContext, stage: str) -> None:
    recipe, cfg = ctx.recipe, getattr(ctx.recipe.stages, stage)
    settings = engine_settings(recipe, stage)
    policy = policy_ref(ctx)
    tokenizer = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
    template = stage_template(ctx, tokenizer)
    train_sel, train_feats = encode_split(recipe, stage, recipe.data.train, tokenizer, template)
    eval_sel, eval_feats = (encode_split(recipe, stage, recipe.data.eval, tokenizer, template) if recipe.data.eval
                            else (None, []))

    margin_stats = attach_margins(ctx, stage, [(train_sel, train_feats), (eval_sel, eval_feats)], template,
                                  tokenizer)

    model = load_causal_lm(policy, dtype=settings.precision, seed=settings.seed,
                           trust_remote_code=recipe.trust_remote_code)
    lora = cfg.lora
    targets = resolve_targets(getattr(model.config, "model_type", None), lora.target_modules)
    check_targets(model, targets)  # routable layers only: refuse before training, not at the router stage
    base_fingerprint = weights_fingerprint(model)  # recorded in midpo.json: loaders refuse another base
    model = add_lora(model, lora_config(r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                                        target_modules=tuple(targets)), seed=settings.seed)
    pad_id = tokenizer.pad_token_id

    def collate(features):
        return collate_pairs(features, pad_id, extras=tuple(k for k in EXTRAS if k in features[0]))

    if cfg.precompute_ref:
        cache = RefLogpCache(ctx.run_dir / "cache", ref_namespace(ctx, recipe, template))
        for sel, feats in ((train_sel, train_feats), (eval_sel, eval_feats)):
            if feats:
                computed = fill_ref_logps(model, feats, sel.pairs, collate, cache,
                                          batch_size=settings.eval_batch_size or settings.batch_size * 2,
                                          reference=model.disable_adapter)
                console.log(f"{stage}: reference log-probs: {len(feats) - computed} cached, {computed} computed")

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
        "eval_reward_accuracy": (result.last_eval or {}).get("reward_accuracy"),
        "steps": result.global_step,
        "pairs_per_s": result.samples_per_s,
        "margin_zero_fraction": margin_stats.get("zero_fraction"),
    }
    record.extra = {"template": template, "resumed_from_step": result.resumed_from_step, "margins": margin_stats,
                    "health_warnings": sorted(health.warned), "live_parameters_during_training": memory,
                    "data": {"train": train_sel.counts, "eval": eval_sel.counts if eval_sel else None}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"][stage])


def encode_split(recipe, stage: str, spec: str, tokenizer, template: str):
    cfg = getattr(recipe.stages, stage)
    selection = select_pairs(load_rows(spec, columns=recipe.data.columns), data_stage(stage, cfg.loss))
    feats, drops = encode_pairs(selection.pairs, tokenizer, template, recipe.data.max_length)
    console.log(f"{stage}: {spec}: {selection.counts}; encoding dropped {drops}; {len(feats)} pairs")
    return selection, feats


def ref_namespace(ctx: StageContext, recipe, template: str | None = None) -> dict:
    """Reference log-probs depend on the policy, the resolved template and max_length."""
    sft = ctx.inputs.get("sft") or {}
    return {"policy": sft.get("fingerprint") or recipe.base_model, "template": template or recipe.data.template,
            "max_length": recipe.data.max_length}


def attach_margins(ctx: StageContext, stage: str, splits, template: str, tokenizer=None) -> dict:
    """SPE-DPO margins m = γ·max(0, S(y_w) − S(y_l)), S = −cost (safety) or reward (helpfulness).

    The score model reads each answer as the policy will see it: truncated to data.max_length (the
    margin and the policy's Δ must be about the same text).
    """
    cfg = getattr(ctx.recipe.stages, stage)
    if cfg.loss == "dpo" or stage == "dpo_expert":
        for _, feats in splits:
            for f in feats:
                f["margin"] = 0.0
        return {"mode": "dpo", "zero_fraction": 1.0}
    score_stage = SCORE_STAGE[stage]
    require_audit(ctx, score_stage)
    cache_file = ctx.folder / "margins.json"
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else None
    scorer = model_ref(ctx, score_stage)
    stale = cached is None or cached.get("answers") != "as-encoded"
    if stale or cached.get("score_model_fingerprint") != (ctx.inputs[score_stage] or {}).get("fingerprint"):
        model, tok = load_score_model(scorer, expected_type="cost" if score_stage == "cost_model" else "reward",
                                      trust_remote_code=ctx.recipe.trust_remote_code)
        values: dict[str, list[list[float]]] = {}
        for name, (sel, feats) in zip(("train", "eval"), splits, strict=True):
            if not feats:
                continue
            pairs = [sel.pairs[f["pair_index"]] for f in feats]
            prompts = [p.prompt for p in pairs] * 2
            answers = ([seen_answer(tokenizer, f, "chosen", p.chosen) for f, p in zip(feats, pairs, strict=True)]
                       + [seen_answer(tokenizer, f, "rejected", p.rejected) for f, p in zip(feats, pairs, strict=True)])
            scores = score_texts(model, tok, prompts, answers, batch_size=32, template=template)
            values[name] = [scores[: len(pairs)], scores[len(pairs):]]
        del model
        gc.collect()  # the score model leaves memory before the policy arrives
        cached = {"score_model_fingerprint": (ctx.inputs[score_stage] or {}).get("fingerprint"), "values": values,
                  "answers": "as-encoded"}
        atomic_write_json(cache_file, cached)
    sign = -1.0 if score_stage == "cost_model" else 1.0  # safety score S = −cost
    all_margins = []
    for name, (_, feats) in zip(("train", "eval"), splits, strict=True):
        if not feats:
            continue
        chosen, rejected = (torch.tensor(v, dtype=torch.float64) * sign for v in cached["values"][name])
        margins = preference_margin(chosen, rejected, scale=cfg.margin_scale)
        for f, m in zip(feats, margins.tolist(), strict=True):
            f["margin"] = m
        if name == "train":
            all_margins = margins
    zero = float((all_margins == 0).double().mean()) if len(all_margins) else None
    stats = {"mode": "spe", "score_model": scorer, "zero_fraction": zero,
             "mean": float(all_margins.mean()) if len(all_margins) else None,
             "max": float(all_margins.max()) if len(all_margins) else None}
    console.log(f"{stage}: margins from {scorer}: mean {stats['mean']:.3f}, zero (score model disagrees "
                f"with the label) {zero:.1%}")
    return stats


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
        metrics = {
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "chosen_rewards": chosen_rewards.mean(),
            "rejected_rewards": rejected_rewards.mean(),
            "margin_mean": batch["margin"].float().mean(),
            "margin_zero_fraction": (batch["margin"] == 0).float().mean(),
            "policy_chosen_logps": policy_c.detach().mean(),
            "policy_rejected_logps": policy_r.detach().mean(),
        }
        return losses.mean(), metrics

    return loss_fn


def save_adapter(model, out: Path, probe_batch: dict, meta: dict) -> None:
    """PEFT folder + midpo.json; loaded back as a second adapter on the same base and compared."""
    model.eval()
    probe = {k: probe_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        reference = model(**probe).logits.float()

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
            with torch.no_grad():
                return loaded(**probe).logits.float()
        finally:
            loaded.set_adapter("default")
            loaded.delete_adapter("verify")

    save_verified(save_fn, out, load_fn=load_fn, probe_fn=probe_fn, reference=reference)


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
