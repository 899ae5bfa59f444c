"""What a stage reads from its context and the recipe: engine settings, the policy's model and tokenizer names,
the template, a score model's audit gate, the shared reference log-prob cache, a dataset's pairs selected and
encoded for the stage, and the run's judges (a dev choice's judge). Shared by the stage modules; imports no
stage."""

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


def run_score_model(ctx: StageContext, stage: str) -> str | None:
    """A score model of the run, whether or not it is one of this stage's inputs (a dev choice judged by the score
    models reads it): its folder, or what its stage recorded (`use:`); None when that stage has not run."""
    from midpo_cli.manifest import read_manifest, stage_dir

    manifest = ctx.inputs.get(stage) or read_manifest(stage_dir(ctx.run_dir, stage)) or {}
    ref = (manifest.get("outputs") or {}).get("model")
    if ref is None:
        return None
    return str(ctx.run_dir / ref) if (ctx.run_dir / ref).exists() else str(ref)


def judge_env(ctx: StageContext, *, rows_scored: bool = False, scorer: Any = None):
    """What the judges of this run need (midpo_cli.judges.panel.JudgeEnv): the run's score models (also the ones the
    experts trained on, for "self-graded"), a scorer with the score stage's batch size and the recipe's template,
    the recipe's refusal patterns, and `<run_dir>/cache/judges` for the LLM judge's replies."""
    from midpo_cli.evaluation.refusal import RefusalDetector
    from midpo_cli.judges.base import JudgeEnv
    from midpo_cli.modeling.scorer import default_scorer

    recipe, cfg = ctx.recipe, ctx.recipe.stages.score
    models = {kind: run_score_model(ctx, stage) for kind, stage in (("cost", "cost_model"), ("reward", "reward_model"))}
    scorer = scorer or default_scorer(batch_size=cfg.batch_size, template=recipe.data.template,
                                      trust_remote_code=recipe.trust_remote_code)
    return JudgeEnv(score_model=models.get, scorer=scorer,
                    refusal=RefusalDetector(cfg.refusal_patterns or RefusalDetector.patterns),
                    cache_dir=ctx.run_dir / "cache" / "judges", rows_scored=rows_scored,
                    run_models={k: v for k, v in models.items() if v is not None},
                    trust_remote_code=recipe.trust_remote_code)


def dev_judge(ctx: StageContext, set_name: str, prompts: list[dict[str, Any]]):
    """The judge of a dev choice on `prompts` of the set `set_name`: `stages.score.dev_judge`, else the first of
    `stages.score.judge` that can judge them (by default the toy judge on the toy world's prompts, else the run's
    score models). Found before any model loads, so a dev choice nobody can judge is said before training."""
    from midpo_cli.judges.panel import build_judge

    cfg = ctx.recipe.stages.score
    env = judge_env(ctx)
    why = {}
    for entry in cfg.judges():
        if cfg.dev_judge not in (None, entry.name):
            continue
        judge = build_judge(entry, env)
        why[entry.name] = judge.cannot_judge(prompts)
        if why[entry.name] is None:
            return judge
    reasons = "; ".join(f"{name}: {reason}" for name, reason in why.items())
    raise InputError(f"{ctx.stage}: no judge of stages.score.judge can judge the dev set {set_name} ({reasons}); "
                     "run the score-model stages first, or add a judge (docs/judges.md)")


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
            model_text = f" ({model})" if model else ""
            pairs = audit.get("eval_pairs")
            on = f"{pairs} pairs of {audit.get('source', 'data.eval')}" if pairs else "the eval split"
            return GateError(
                f"audit {name} = {value:.3f} on {on} is below stages.{stage}.min_accuracy = {floor}: the "
                f"{stage}{model_text} fails its audit; train it longer, fix the data, or lower the floor"
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
