"""What a stage reads from its context and the recipe: engine settings, the policy's model and tokenizer names,
the template, a score model's audit gate, the shared reference log-prob cache, and a dataset's pairs selected
and encoded for the stage. Shared by the stage modules; imports no stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.engine.settings import EngineSettings
from midpo_cli.errors import GateError, InputError
from midpo_cli.recipe import Recipe
from midpo_cli.stages.kit.context import StageContext


def engine_settings(recipe: Recipe, stage: str) -> EngineSettings:
    """The stage's training settings for the engine, `precision: auto` resolved on this machine's device."""
    from midpo_cli.modeling.loading import resolve_precision

    precision = resolve_precision(recipe.train_settings(stage).precision)
    return EngineSettings.from_recipe(recipe, stage, precision=precision)


def model_ref(ctx: StageContext, stage: str, key: str = "model") -> str:
    """An upstream model: a folder in the run dir, or the hub name / path that stage recorded via `use:`."""
    path = ctx.input_path(stage, key)
    return str(path) if Path(path).exists() else str(ctx.inputs[stage]["outputs"][key])


def policy_ref(ctx: StageContext) -> str:
    """The base policy every expert, the router and generation start from: the SFT stage's model."""
    return model_ref(ctx, "sft")


def score_model(ctx: StageContext, stage: str) -> str:
    """A score model of the run, whether or not it is one of this stage's inputs (a dev choice without a judge
    reads it): its folder, or what its stage recorded (`use:`)."""
    from midpo_cli.manifest import read_manifest, stage_dir

    manifest = ctx.inputs.get(stage) or read_manifest(stage_dir(ctx.run_dir, stage)) or {}
    ref = (manifest.get("outputs") or {}).get("model")
    if ref is None:
        raise InputError(f"{ctx.stage}: a dev choice without a judge needs the {stage}, and "
                         f"{stage_dir(ctx.run_dir, stage)} has none; run that stage first")
    return str(ctx.run_dir / ref) if (ctx.run_dir / ref).exists() else str(ref)


def dev_judge(ctx: StageContext, set_name: str, score_stages: dict[str, str]):
    """The judge of a dev choice on the set `set_name` (a `DevJudge`): its toy judge where the set has one, else the
    run's score models (kind "cost" / "reward" → the stage that trained it), read with the score stage's batch
    size; a score model is looked up only when it judges, so a choice on the toy world needs none."""
    from midpo_cli.evaluation.toy_outcomes import toy_outcome_for
    from midpo_cli.stages.kit.dev_choice import DevJudge

    recipe = ctx.recipe
    toy = toy_outcome_for(set_name)
    models = {} if toy else {kind: score_model(ctx, stage) for kind, stage in score_stages.items()}
    return DevJudge(toy, models, batch_size=recipe.stages.score.batch_size, trust_remote_code=recipe.trust_remote_code)


def tokenizer_ref(recipe: Recipe, model: str) -> str:
    return recipe.tokenizer or model


def stage_template(ctx: StageContext, tokenizer: Any = None) -> str:
    """data.template resolved once for this stage from the policy's tokenizer (`auto` → chat or safe-rlhf).

    Every stage resolves from the same tokenizer (the SFT policy's, or the base model's for SFT itself),
    so they all agree; each records the result in its manifest (`template`), and an upstream stage that
    recorded another one is warned about, since its model was trained on other text.
    """
    from midpo_cli.data.template import resolve_template

    recipe = ctx.recipe
    recorded = {m["template"] for m in ctx.inputs.values() if m and m.get("template")}
    if tokenizer is None and recipe.data.template == "auto" and len(recorded) == 1:
        template = next(iter(recorded))  # resolved upstream from the same policy tokenizer
    else:
        if tokenizer is None and recipe.data.template != "safe-rlhf":
            from midpo_cli.modeling.loading import load_tokenizer

            policy = policy_ref(ctx) if "sft" in ctx.inputs else (recipe.stages.sft.use or recipe.base_model)
            tokenizer = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
        template = resolve_template(recipe.data.template, tokenizer)
    for stage, manifest in sorted(ctx.inputs.items()):
        used = (manifest or {}).get("template")
        if used is not None and used != template:
            console.warn(f"{ctx.stage}: uses template {template!r} but {stage} was built with {used!r}; "
                         f"re-run {stage} or set data.template: {used}")
    return template


def audit_gate(stage: str, audit: dict[str, Any], floor: float, model: Any) -> GateError | None:
    """The error a score model's audit earns below `stages.<stage>.min_accuracy` (pair accuracy; for costs the
    sign accuracy too), or None when it passes. One test, for the score stage itself and every stage after it."""
    checks = {"pair_accuracy": audit.get("pair_accuracy")}
    if stage == "cost_model":
        checks["sign_accuracy"] = audit.get("sign_accuracy")
    for name, value in checks.items():
        if value is None:
            return GateError(f"{stage} ({model}) has no audit {name}; re-run it")
        if value < floor:
            return GateError(
                f"audit {name} {value:.3f} < {floor} (stages.{stage}.min_accuracy): the {stage} ({model}) on "
                f"{audit.get('eval_pairs', '?')} pairs of {audit.get('source', 'data.eval')}; train it longer, fix "
                f"the data, or lower stages.{stage}.min_accuracy"
            )
    return None


def require_audit(ctx: StageContext, stage: str) -> None:
    """Refuse to use a score model whose audit fell below min_accuracy (recipe key): one that ran before its stage
    gated itself, or under a floor the recipe has since raised."""
    manifest = ctx.inputs.get(stage) or {}
    failed = audit_gate(stage, manifest.get("audit") or {}, getattr(ctx.recipe.stages, stage).min_accuracy,
                        manifest.get("outputs", {}).get("model"))
    if failed is not None:
        raise failed


def ref_cache(ctx: StageContext, template: str):
    """The reference log-prob cache every expert and the router share: one per (policy, template, max_length)."""
    from midpo_cli.engine.preference import RefLogpCache

    recipe = ctx.recipe
    sft = ctx.inputs.get("sft") or {}
    namespace = {"policy": sft.get("fingerprint") or recipe.base_model, "template": template,
                 "max_length": recipe.data.max_length}
    return RefLogpCache(ctx.run_dir / "cache", namespace)


def encoded_pairs(spec: str, data_stage: str, tokenizer: Any, template: str, max_length: int, *,
                  columns: dict[str, str] | None = None, stage: str) -> tuple[Any, list[dict[str, Any]]]:
    """(selection, features): `spec`'s rows, kept and oriented by `data_stage`'s filter (data/filters.py),
    encoded for the policy (data/tokenize.py); logged under `stage` with what each step dropped."""
    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.readers import load_rows
    from midpo_cli.data.tokenize import encode_pairs

    selection = select_pairs(load_rows(spec, columns=columns), data_stage)
    features, drops = encode_pairs(selection.pairs, tokenizer, template, max_length)
    console.log(f"{stage}: {spec}: filter {console.counts_text(selection.counts)}; "
                f"encoding {console.counts_text(drops)}; {len(features)} pairs")
    return selection, features


def baseline_models(ctx: StageContext, sweep_sets: tuple[str, ...] | None) -> list[tuple[str, str, Any]]:
    """(label, adapter folder, prompt sets or None for all) of each baseline in `stages.baselines`, for generate.

    A trained baseline is labelled by its kind; the TIES merge `ties`, or with several candidate weights each
    `ties@gates=W_S,W_H` on the sweep sets only (the report keeps the dev-best one, as for the fixed blends)."""
    out = []
    for stage in ctx.recipe.listed_baselines():
        kind = stage.removeprefix("baseline_")
        candidates = (ctx.inputs.get(stage) or {}).get("outputs", {}).get("candidates")
        if kind == "ties" and candidates and len(candidates) > 1:
            out += [(label, str(ctx.run_dir / path), sweep_sets) for label, path in candidates.items()]
        else:
            out.append((kind, str(ctx.input_path(stage, "adapter")), None))
    return out
