"""Small pieces several stages need: recipe → engine settings, the policy's model and tokenizer names."""

from __future__ import annotations

from pathlib import Path

from midpo_cli.engine.settings import EngineSettings
from midpo_cli.recipe import Recipe
from midpo_cli.stages.context import StageContext


def engine_settings(recipe: Recipe, stage: str) -> EngineSettings:
    t = recipe.train_settings(stage)
    return EngineSettings(
        epochs=t.epochs,
        max_steps=t.max_steps,
        batch_size=t.batch_size,
        eval_batch_size=t.eval_batch_size,
        grad_accum=t.grad_accum,
        lr=t.lr,
        scheduler=t.scheduler,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        precision=t.precision,
        zero_stage=recipe.deepspeed.zero_stage,
        deepspeed_config=recipe.deepspeed.config,
        offload=recipe.deepspeed.offload,
        eval_every=t.eval_every,
        eval_each_epoch=t.eval_each_epoch,
        log_every=t.log_every,
        checkpoint_every=t.checkpoint.every_steps,
        checkpoint_keep=t.checkpoint.keep,
        tensorboard=recipe.logging.tensorboard,
        activation_checkpointing=t.activation_checkpointing,
    )


def model_ref(ctx: StageContext, stage: str, key: str = "model") -> str:
    """An upstream model: a folder in the run dir, or the hub name / path that stage recorded via `use:`."""
    path = ctx.input_path(stage, key)
    return str(path) if Path(path).exists() else str(ctx.inputs[stage]["outputs"][key])


def policy_ref(ctx: StageContext) -> str:
    """The base policy every expert, the router and generation start from: the SFT stage's model."""
    return model_ref(ctx, "sft")


def tokenizer_ref(recipe: Recipe, model: str) -> str:
    return recipe.tokenizer or model
