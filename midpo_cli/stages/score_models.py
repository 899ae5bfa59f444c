"""Stages `reward_model` and `cost_model`: train (or adopt via `use:`) a score model, then audit it.

The audit on the eval split lands in the manifest; every later stage that reads a score model
checks it against `min_accuracy` first (`require_audit`), so a broken score model stops the
pipeline before it silently shapes the experts' margins or D_dual.
"""

from __future__ import annotations

from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.filters import select_pairs
from midpo_cli.data.readers import load_rows
from midpo_cli.data.tokenize import collate_pairs, encode_pairs
from midpo_cli.engine.artifacts import save_verified
from midpo_cli.engine.loop import train
from midpo_cli.errors import GateError
from midpo_cli.losses import cost_model_loss, reward_model_loss
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.score_model import load_score_model, new_score_model, save_score_model, score_texts
from midpo_cli.stages.common import engine_settings, model_ref, stage_template
from midpo_cli.stages.context import StageContext

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
        model.config.midpo_template = template  # config.json records it: later scoring can warn on a mismatch
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
    out = []
    for spec in (recipe.data.train, recipe.data.eval):
        if not spec:
            out.append([])
            continue
        selection = select_pairs(load_rows(spec, columns=recipe.data.columns), stage)
        feats, drops = encode_pairs(selection.pairs, tokenizer, template, recipe.data.max_length)
        for f in feats:
            pair = selection.pairs[f["pair_index"]]
            f["chosen_safe"] = float(bool(pair.chosen_safe))
            f["rejected_safe"] = float(bool(pair.rejected_safe))
        console.log(f"{stage}: {spec}: {selection.counts} → {len(feats)} encoded ({drops})")
        out.append(feats)
    return out[0], out[1]


def _save(model, tokenizer, out, score_type: str) -> None:
    model.eval()
    probe = tokenizer(["BEGINNING OF CONVERSATION: USER: hi ASSISTANT: hello"], return_tensors="pt")
    with torch.no_grad():
        reference = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"])[1].float()

    def probe_fn(loaded):
        with torch.no_grad():
            return loaded(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"])[1].float()

    save_verified(lambda path: save_score_model(model, tokenizer, path, score_type=score_type), out,
                  load_fn=lambda path: load_score_model(path)[0], probe_fn=probe_fn, reference=reference)


def audit_score_model(model, tokenizer, recipe, score_type: str, template: str | None = None) -> dict[str, Any]:
    """Pair accuracy (and sign accuracy, AUROC for costs) on the eval split, scored from text."""
    spec = recipe.data.eval or recipe.data.train
    stage = "reward_model" if score_type == "reward" else "cost_model"
    pairs = select_pairs(load_rows(spec, columns=recipe.data.columns), stage).pairs[:AUDIT_MAX_PAIRS]
    prompts = [p.prompt for p in pairs] * 2
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scores = torch.tensor(score_texts(model, tokenizer, prompts, answers, batch_size=32,
                                      template=template or recipe.data.template), dtype=torch.float64)
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
    out["auroc_unsafe"] = auroc(scores, ~safe)
    out["mean_cost_safe"] = float(scores[safe].mean()) if safe.any() else None
    out["mean_cost_unsafe"] = float(scores[~safe].mean()) if (~safe).any() else None
    return out


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """P(score of a random positive > score of a random negative), ties counted half (Mann–Whitney U)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def require_audit(ctx: StageContext, stage: str) -> None:
    """Refuse to use a score model whose audit fell below min_accuracy (recipe key)."""
    manifest = ctx.inputs.get(stage) or {}
    audit = manifest.get("audit") or {}
    floor = getattr(ctx.recipe.stages, stage).min_accuracy
    checks = {"pair_accuracy": audit.get("pair_accuracy")}
    if stage == "cost_model":
        checks["sign_accuracy"] = audit.get("sign_accuracy")
    for name, value in checks.items():
        if value is None:
            raise GateError(f"{stage} ({manifest.get('outputs', {}).get('model')}) has no audit {name}; re-run it")
        if value < floor:
            raise GateError(
                f"{stage} ({manifest.get('outputs', {}).get('model')}) {name} = {value:.3f} on the eval split is "
                f"below stages.{stage}.min_accuracy = {floor}; train it longer, fix the data, or lower the floor"
            )
