"""Engine settings: plain data built by a stage from its resolved recipe section.

Plain dataclass (no pydantic) so the engine can be driven from tests and scripts without a recipe;
validation happened when the recipe was loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EngineSettings:
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8  # micro batch per process
    grad_accum: int = 1
    lr: float = 1e-4
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 42
    precision: str = "fp32"  # fp32 | bf16 | fp16
    zero_stage: int = 0
    deepspeed_config: str | None = None  # a user DeepSpeed JSON, merged under the recipe's batch sizes
    offload: bool = False  # DeepSpeed CPU Adam with optimizer state on the CPU
    eval_every: int | None = None
    eval_each_epoch: bool = True
    log_every: int = 10
    checkpoint_every: int | None = None
    checkpoint_keep: int = 2
    tensorboard: bool = False
    eval_batch_size: int | None = None
    activation_checkpointing: bool = False  # recompute layer activations in backward (HF models)

    def as_dict(self) -> dict:
        return asdict(self)
