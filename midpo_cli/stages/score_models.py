"""Stages `reward_model` and `cost_model`: train (or adopt via `use:`) a score model, then audit it.

The audit on the eval split lands in the manifest. A model below `min_accuracy` fails its own stage (GateError,
exit 4, no manifest: `pipeline status` shows the audit that failed), whether trained here or adopted with `use:`,
so a broken score model stops the pipeline where it was made, before it silently shapes the experts' margins or
D_dual; every later stage still checks the manifest's audit against the floor (`require_audit`).
"""

from __future__ import annotations

from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.filters import select_pairs
from midpo_cli.data.readers import load_rows
from midpo_cli.data.template import RECORD_KEY
from midpo_cli.data.tokenize import collate_pairs, with_columns
from midpo_cli.engine.artifacts import precision_of, save_checked
from midpo_cli.engine.loop import train
from midpo_cli.evaluation.gate_stats import auroc
from midpo_cli.losses.preference import cost_model_loss, reward_model_loss
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.score_model import load_score_model, new_score_model, save_score_model, score_pairs
from midpo_cli.stages.kit.context import StageContext
from midpo_cli.stages.kit.inputs import audit_gate, encoded_pairs, engine_settings, model_ref, stage_template

KINDS = {"reward_model": "reward", "cost_model": "cost"}
AUDIT_MAX_PAIRS = 2000


def run_reward_model(ctx: StageContext) -> None:
    _run(ctx, "reward_model")


def run_cost_model(ctx: StageContext) -> None:
    _run(ctx, "cost_model")


def _run(ctx: StageContext, stage: str) -> None:
    recipe, cfg = ctx.recipe, getattr(ctx.recipe.stages, stage)
    score_type = KINDS[stage]
    record = ctx.record()
    template = stage_template(ctx)
    if cfg.use:
        model, tokenizer = load_score_model(cfg.use, expected_type=score_type,
                                            trust_remote_code=recipe.trust_remote_code)
        record.outputs = {"model": cfg.use}
    else:
        model, tokenizer, result = _train(ctx, stage, score_type, template)
        out = ctx.folder / "model"
        setattr(model.config, RECORD_KEY, template)  # config.json records it: later scoring can warn on a mismatch
        _save(model, tokenizer, out, score_type)
        record.outputs = {"model": ctx.rel(out)}
        record.extra["training"] = {"steps": result.global_step, "samples_per_s": result.samples_per_s,
                                    "last_eval": result.last_eval}
        model, tokenizer = load_score_model(out, expected_type=score_type)
    audit = audit_score_model(model, tokenizer, recipe, score_type, template)
    record.metrics = audit
    record.extra["template"] = template
    record.extra["audit"] = {**audit, "min_accuracy": cfg.min_accuracy, "template": template}
    console.log(f"{stage}: audit on {audit['eval_pairs']} eval pairs: " +
                ", ".join(f"{k}={v:.3f}" for k, v in audit.items() if isinstance(v, float)))
    failed = audit_gate(stage, audit, cfg.min_accuracy, record.outputs["model"])
    if failed is not None:  # the stage fails here, with no manifest: nothing downstream starts on this model
        raise failed
    write_manifest(ctx.folder, record, recipe.resolved()["stages"][stage])


def _train(ctx: StageContext, stage: str, score_type: str, template: str):
    recipe, cfg = ctx.recipe, getattr(ctx.recipe.stages, stage)
    settings = engine_settings(recipe, stage)
    backbone = cfg.base_model or model_ref(ctx, "sft")
    model, tokenizer = new_score_model(backbone, score_type, seed=settings.seed, dtype=settings.precision,
                                       trust_remote_code=recipe.trust_remote_code)
    train_feats, eval_feats = _pair_features(recipe, stage, tokenizer, template)
    pad_id = tokenizer.pad_token_id
    reg = cfg.score_regularization

    def collate(features):
        return collate_pairs(features, pad_id, extras=("chosen_safe", "rejected_safe"))

    def loss_fn(model, batch):
        _, end = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        half = end.shape[0] // 2
        chosen, rejected = end[:half].float(), end[half:].float()
        if score_type == "reward":
            losses, metrics = reward_model_loss(chosen, rejected, reg)
        else:  # chosen = safer: the cost model must score it lower
            losses, metrics = cost_model_loss(chosen, rejected, batch["chosen_safe"].bool(),
                                              batch["rejected_safe"].bool(), reg)
        return losses.mean(), metrics

    result = train(model=model, train_data=train_feats, collate=collate, loss_fn=loss_fn, settings=settings,
                   out_dir=ctx.folder, eval_data=eval_feats or None, resume=ctx.resume, stage_name=stage)
    return result.model, tokenizer, result


def _pair_features(recipe, stage: str, tokenizer, template: str) -> tuple[list[dict], list[dict]]:
    """Train and eval features of the stage's pairs, each with both answers' safe labels (the cost model's signs)."""
    out = []
    for spec in (recipe.data.train, recipe.data.eval):
        if not spec:
            out.append([])
            continue
        selection, feats = encoded_pairs(spec, stage, tokenizer, template, recipe.data.max_length,
                                         columns=recipe.data.columns, stage=stage)
        pairs = [selection.pairs[f["pair_index"]] for f in feats]
        out.append(with_columns(feats, chosen_safe=[float(bool(p.chosen_safe)) for p in pairs],
                                rejected_safe=[float(bool(p.rejected_safe)) for p in pairs]))
    return out[0], out[1]


def _save(model, tokenizer, out, score_type: str) -> None:
    probe = tokenizer(["BEGINNING OF CONVERSATION: USER: hi ASSISTANT: hello"], return_tensors="pt")
    save_checked(model, out, save_fn=lambda path: save_score_model(model, tokenizer, path, score_type=score_type),
                 load_fn=lambda path: load_score_model(path, dtype=precision_of(model))[0],
                 forward=lambda m: m(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"])[1].float())


def audit_score_model(model, tokenizer, recipe, score_type: str, template: str | None = None) -> dict[str, Any]:
    """Pair accuracy (and sign accuracy, AUROC for costs) on the eval split, scored from text."""
    spec = recipe.data.eval or recipe.data.train
    stage = "reward_model" if score_type == "reward" else "cost_model"
    pairs = select_pairs(load_rows(spec, columns=recipe.data.columns), stage).pairs[:AUDIT_MAX_PAIRS]
    by_side = score_pairs(model, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs],
                          [p.rejected for p in pairs], batch_size=32, template=template or recipe.data.template,
                          label=f"{stage}: audit")
    scores = torch.tensor(by_side[0] + by_side[1], dtype=torch.float64)  # chosen answers, then rejected ones
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    out: dict[str, Any] = {"eval_pairs": n, "source": spec}
    if score_type == "reward":
        out["pair_accuracy"] = float((chosen > rejected).double().mean())
        out["mean_chosen"] = float(chosen.mean())
        out["mean_rejected"] = float(rejected.mean())
        out["mean_margin"] = float((chosen - rejected).mean())
        return out
    safe = torch.tensor([p.chosen_safe for p in pairs] + [p.rejected_safe for p in pairs], dtype=torch.bool)
    out["pair_accuracy"] = float((chosen < rejected).double().mean())  # chosen = safer → lower cost
    out["sign_accuracy"] = float(((scores < 0) == safe).double().mean())
    out["auroc_unsafe"] = auroc(scores.tolist(), (~safe).tolist())
    out["mean_cost_safe"] = float(scores[safe].mean()) if safe.any() else None
    out["mean_cost_unsafe"] = float(scores[~safe].mean()) if (~safe).any() else None
    return out
