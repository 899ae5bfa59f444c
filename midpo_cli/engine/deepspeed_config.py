"""The DeepSpeed config of a training run: built from the recipe's settings, a user JSON merged over it.

A user JSON (`deepspeed.config`) may set anything DeepSpeed reads; HF-style "auto" values are filled
with ours, its `scheduler` is ignored (the schedule is the recipe's `train.scheduler`), and the
recipe's batch sizes always win, so the data order the engine plans is the one DeepSpeed runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.engine.settings import EngineSettings
from midpo_cli.errors import InputError
from midpo_cli.io import read_json
from midpo_cli.recipe import deep_merge


def _fill_auto(user: Any, ours: Any) -> Any:
    """Replace HF-style "auto" values with ours; drop an "auto" we cannot resolve (DeepSpeed's default)."""
    if isinstance(user, dict):
        out = {}
        for key, value in user.items():
            mine = ours.get(key) if isinstance(ours, dict) else None
            if value == "auto":
                if mine is not None and not isinstance(mine, dict):
                    out[key] = mine
            else:
                out[key] = _fill_auto(value, mine)
        return out
    return user


def deepspeed_config(settings: EngineSettings, world: int) -> dict[str, Any]:
    """The DeepSpeed config: built from the recipe, a user JSON merged over it, recipe batch sizes win."""
    if settings.precision not in ("fp32", "bf16", "fp16"):
        raise InputError(f"train.precision: unknown precision {settings.precision!r}; use fp32, bf16 or fp16")
    batch_sizes = {
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "train_batch_size": settings.batch_size * settings.grad_accum * world,
    }
    ours: dict[str, Any] = {
        **batch_sizes,
        "gradient_clipping": float(settings.max_grad_norm or 0.0),
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": settings.precision == "bf16"},
        "fp16": {"enabled": settings.precision == "fp16"},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    optimizer_params = {"lr": settings.lr, "weight_decay": settings.weight_decay}
    if settings.offload:
        ours["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        ours["optimizer"] = {"type": "AdamW", "params": optimizer_params}
        if settings.zero_stage == 0:
            raise InputError("deepspeed.offload needs deepspeed.zero_stage 1, 2 or 3")
    if settings.deepspeed_config:
        user = _read_user_config(Path(settings.deepspeed_config))
        if isinstance(user.get("optimizer"), dict):
            user["optimizer"] = deep_merge({"params": optimizer_params}, user["optimizer"])
        ours = deep_merge(ours, _fill_auto(user, ours))
        ours.update(batch_sizes)
    return ours


def _read_user_config(path: Path) -> dict[str, Any]:
    """The user's DeepSpeed JSON, less its `scheduler` (the schedule comes from the recipe)."""
    try:
        user = read_json(path)
    except FileNotFoundError:
        raise InputError(f"deepspeed.config: {path} does not exist") from None
    except InputError as exc:  # invalid JSON, named by file and line
        raise InputError(f"deepspeed.config: {exc}") from None
    if not isinstance(user, dict):
        raise InputError(f"deepspeed.config: {path} must hold a JSON object")
    if "scheduler" in user:
        console.warn(f"{path}: 'scheduler' ignored; the schedule comes from train.scheduler")
        user.pop("scheduler")
    return user
