"""Engine settings: the recipe's training settings, resolved for one run, plus what the engine alone needs.

`EngineSettings` *is* the recipe's `TrainSettings` (same fields, types, checks and defaults; one list,
tests/test_recipe.py checks it) with `precision` resolved (`auto` is decided by the stage from the
device) and the run-wide DeepSpeed and logging keys added. Tests and scripts build it directly, without
a recipe; stages build it with `from_recipe`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from midpo_cli.recipe import Recipe, TrainSettings


class EngineSettings(TrainSettings):
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Weights' dtype, resolved (no auto).")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage (recipe deepspeed.zero_stage).")
    deepspeed_config: str | None = Field(None, description="A user DeepSpeed JSON, merged under the recipe's "
                                         "batch sizes (recipe deepspeed.config).")
    offload: bool = Field(False, description="DeepSpeed CPU Adam with optimizer state on the CPU.")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files (recipe logging.tensorboard).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers (recipe logging.report_to).")

    @property
    def reference_batch_size(self) -> int:
        """Batch size of the reference log-prob passes: `eval_batch_size`, else twice the training batch (a
        no-grad pass holds fewer activations, and on a small model a batch costs mostly overhead), but only
        the training batch with activation checkpointing, which says memory matters more than time."""
        if self.eval_batch_size:
            return self.eval_batch_size
        return self.batch_size if self.activation_checkpointing else 2 * self.batch_size

    @classmethod
    def from_recipe(cls, recipe: Recipe, stage: str, precision: str) -> EngineSettings:
        """The stage's `train:` settings with its overrides, `precision` resolved by the caller, and the run's
        DeepSpeed and logging keys."""
        return cls.model_validate({
            **recipe.train_settings(stage).model_dump(), "precision": precision,
            "zero_stage": recipe.deepspeed.zero_stage, "deepspeed_config": recipe.deepspeed.config,
            "offload": recipe.deepspeed.offload, "tensorboard": recipe.logging.tensorboard,
            "report_to": recipe.logging.report_to,
        })
