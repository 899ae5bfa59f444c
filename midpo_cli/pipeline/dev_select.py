"""`stages.<expert>.select: dev` inside the expert stage: snapshots while training, then the dev choice.

The maths and the snapshot files are midpo_cli.evaluation.expert_select; this module does the stage's I/O: the
recipe's dev prompts (midpo_cli.pipeline.dev_set), greedy answers with stages.generate's settings, the toy judge
or the score model, and the curve for the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.evaluation.expert_select import (
    best_step,
    load_snapshot,
    objective,
    save_snapshot,
    saved_steps,
    wants_harmful,
)
from midpo_cli.pipeline.context import StageContext
from midpo_cli.pipeline.dev_set import answer_rows, require_dev_prompts

SCORE_STAGE = {"safety_expert": "cost_model", "helpfulness_expert": "reward_model", "dpo_expert": "reward_model"}


def check_settings(ctx: StageContext, stage: str, settings: Any) -> None:
    """Before training: the dev set exists and has prompts of the expert's kind; one process, no ZeRO-3."""
    recipe = ctx.recipe
    if settings.zero_stage == 3 or recipe.launcher.kind != "none":
        raise InputError(f"stages.{stage}.select: dev runs in one process without ZeRO-3 (it snapshots and reloads "
                         "the adapter); use select: last with launcher or zero_stage 3")
    dev_prompts(ctx, stage)


def dev_prompts(ctx: StageContext, stage: str) -> tuple[str, list[dict[str, Any]]]:
    """(the dev set's name, its prompts of the expert's kind)."""
    from midpo_cli.data.prompt_sets import load_prompt_set

    recipe = ctx.recipe
    spec = require_dev_prompts(recipe, f"stages.{stage}.select: dev")
    pset = load_prompt_set(spec, recipe.data.columns or None)
    harmful = wants_harmful(stage)
    kept = [p for p in pset.prompts if p.get("is_harmful") is not None and bool(p["is_harmful"]) is harmful]
    if not kept:
        raise InputError(f"{spec}: no {'harmful' if harmful else 'benign'} prompts with an is_harmful label; "
                         f"stages.{stage}.select: dev judges the expert on them")
    return pset.name, kept


def snapshotter(model: Any, folder: Path, every: int):
    """on_step for the engine: the adapter's weights every `every` optimizer steps."""
    def on_step(step: int, _metrics: dict[str, float]) -> None:
        if step % every == 0:
            save_snapshot(model, folder, step)
    return on_step


def choose_on_dev(ctx: StageContext, stage: str, model: Any, template: str, final_step: int) -> dict[str, Any]:
    """Answer the dev prompts with every snapshot (the last step included), score, load the best into `model`."""
    from midpo_cli.evaluation.toy_outcomes import toy_outcome_for
    from midpo_cli.modeling.loading import load_tokenizer
    from midpo_cli.modeling.scorer import default_scorer
    from midpo_cli.pipeline.inputs import policy_ref, score_model, tokenizer_ref

    recipe, gen = ctx.recipe, ctx.recipe.stages.generate
    if final_step not in saved_steps(ctx.folder):
        save_snapshot(model, ctx.folder, final_step)
    name, prompts = dev_prompts(ctx, stage)
    tokenizer = load_tokenizer(tokenizer_ref(recipe, policy_ref(ctx)), trust_remote_code=recipe.trust_remote_code)
    answers: dict[int, list[dict[str, Any]]] = {}
    for step in saved_steps(ctx.folder):
        load_snapshot(model, ctx.folder, step)
        answers[step] = answer_rows(model, tokenizer, prompts, template=template, settings=gen)
    judge = toy_outcome_for(name)
    scores: dict[int, list[float]] = {}
    if judge is None:
        score_stage = SCORE_STAGE[stage]
        scorer = default_scorer(batch_size=recipe.stages.score.batch_size, template=template,
                                trust_remote_code=recipe.trust_remote_code)
        kind = "cost" if score_stage == "cost_model" else "reward"
        for step, rows in answers.items():
            scores[step] = scorer(score_model(ctx, score_stage), kind, [r["prompt"] for r in rows],
                                  [r["answer"] for r in rows])
    curve = [(step, objective(stage, rows, judge=judge, costs=scores.get(step), rewards=scores.get(step)))
             for step, rows in answers.items()]
    chosen = best_step(curve)
    if chosen is None:
        raise InputError(f"{stage}: no dev score at any step ({name})")
    load_snapshot(model, ctx.folder, chosen)
    how = "toy judge" if judge is not None else f"{SCORE_STAGE[stage]} scores"
    console.log(f"{stage}: dev curve on {len(prompts)} {name} prompts ({how}): "
                + ", ".join(f"{s}: {v:.3f}" for s, v in curve if v is not None) + f"; keeping step {chosen}")
    return {"prompts": name, "n_prompts": len(prompts), "judged_by": how, "chosen_step": chosen,
            "curve": [{"step": s, "score": v} for s, v in curve]}
