"""The one training loop every stage uses.

A stage hands over a model, a dataset (a sequence of features), a collate function and a loss
`loss_fn(model, batch) -> (loss, metrics)`; the engine owns the rest: DeepSpeed set-up, data order,
gradient accumulation, clipping, schedule, evaluation, metrics, checkpoints, resume, signals and NaN
stops. `train()` returns a `TrainResult` whose `model` is the plain, trained nn.Module (ZeRO-3 shards
gathered back into it), ready for the stage to save with `artifacts.save_verified`.

Determinism: Python/numpy/torch are seeded from `settings.seed`; epoch e visits the data in the
permutation drawn from (seed, e); a checkpoint stores the RNG states and the step, so a resumed run
replays exactly the batches and dropout masks an uninterrupted one would have seen (fp32, CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from midpo_cli import console
from midpo_cli.engine import checkpoint, dist
from midpo_cli.engine.metrics import MetricsSink, Progress
from midpo_cli.engine.settings import EngineSettings
from midpo_cli.errors import InputError, Interrupted, TrainingError

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module, dict], dict[str, Any]]
FAULT_ENV = "MIDPO_ENGINE_FAULT"  # test hook: "nan@N" poisons step N's loss, "sigint@N" signals after step N


@dataclass
class TrainResult:
    model: nn.Module
    global_step: int
    epochs_done: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int | None = None
    wall_s: float = 0.0
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0


# ---------------------------------------------------------------- pure pieces (unit-tested directly)

def enable_activation_checkpointing(model: nn.Module, stage_name: str) -> None:
    """Have the Hugging Face model recompute each layer's activations in the backward pass.

    Non-reentrant checkpointing: the reentrant kind needs inputs that require grad, which a LoRA
    model with frozen embeddings does not have (its LoRA weights would silently get no gradient).
    transformers ≥ 5 names the switch `activation_checkpointing_enable`; older ones
    `gradient_checkpointing_enable` (PeftModel forwards either to its base model).
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):
        enable(activation_checkpointing_kwargs=kwargs)
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise InputError(f"{stage_name}: activation_checkpointing is on but {type(model).__name__} does not "
                         "support it; set activation_checkpointing: false for this stage")
    enable(gradient_checkpointing_kwargs=kwargs)


def lr_lambda(scheduler: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier after `step` optimizer steps: linear warmup, then cosine/linear decay to 0 or constant."""
    if scheduler not in ("cosine", "linear", "constant"):
        raise InputError(f"train.scheduler: unknown schedule {scheduler!r}; use cosine, linear or constant")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if scheduler == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if scheduler == "cosine" else 1.0 - progress

    return fn


def param_groups(params: Sequence[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases and norm weights (1-D) are left alone, as in GPT-2/LLaMA recipes."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order of epoch `epoch`: a function of (seed, epoch) only, so resume can redraw it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def rank_micro_batches(order: np.ndarray, *, batch_size: int, world: int, rank: int,
                       n_micro: int) -> list[list[int]]:
    """Micro-batch k of rank r is slice (k·world + r) of the order: distinct rows on every rank, same count."""
    return [order[(k * world + rank) * batch_size:(k * world + rank + 1) * batch_size].tolist()
            for k in range(n_micro)]


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


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
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "train_batch_size": settings.batch_size * settings.grad_accum * world,
        "gradient_clipping": float(settings.max_grad_norm or 0.0),
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": settings.precision == "bf16"},
        "fp16": {"enabled": settings.precision == "fp16"},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if settings.offload:
        ours["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        ours["optimizer"] = {"type": "AdamW", "params": {"lr": settings.lr, "weight_decay": settings.weight_decay}}
        if settings.zero_stage == 0:
            raise InputError("deepspeed.offload needs deepspeed.zero_stage 1, 2 or 3")
    if settings.deepspeed_config:
        path = Path(settings.deepspeed_config)
        try:
            user = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"deepspeed.config: {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"deepspeed.config: {path} is not valid JSON ({exc})") from None
        if not isinstance(user, dict):
            raise InputError(f"deepspeed.config: {path} must hold a JSON object")
        if "scheduler" in user:
            console.warn(f"{path}: 'scheduler' ignored; the schedule comes from train.scheduler")
            user.pop("scheduler")
        if isinstance(user.get("optimizer"), dict):
            user["optimizer"] = _deep_merge({"params": {"lr": settings.lr, "weight_decay": settings.weight_decay}},
                                            user["optimizer"])
        ours = _deep_merge(ours, _fill_auto(user, ours))
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
            ours[key] = {"train_micro_batch_size_per_gpu": settings.batch_size,
                         "gradient_accumulation_steps": settings.grad_accum,
                         "train_batch_size": settings.batch_size * settings.grad_accum * world}[key]
    return ours


# ---------------------------------------------------------------- helpers with side effects

def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _as_float(value: Any) -> float:
    return float(value.detach().float().mean().item()) if isinstance(value, torch.Tensor) else float(value)


def _reduce_means(sums: dict[str, float], count: float) -> dict[str, float]:
    """Average per-rank sums over all ranks (keys sorted so every rank packs the same vector)."""
    keys = sorted(sums)
    total = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64))
    n = max(float(total[-1]), 1e-12)
    return {k: float(total[i]) / n for i, k in enumerate(keys)}


@contextlib.contextmanager
def _stop_signals() -> Iterator[dict[str, Any]]:
    """SIGINT/SIGTERM set a flag the loop reads at step boundaries; a second SIGINT aborts at once."""
    state: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _fault() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "")
    if "@" not in spec:
        return None
    kind, _, step = spec.partition("@")
    return kind, int(step)


def _evaluate(module: nn.Module, eval_data: Sequence, collate, eval_fn: EvalFn, batch_size: int,
              device: torch.device) -> dict[str, float]:
    """Batch-size-weighted means over the eval split, sharded over ranks.

    Every rank runs the same number of forward passes (a rank short of data repeats a batch with
    weight 0), because under ZeRO-3 each forward is a collective.
    """
    world, rank = dist.world_size(), dist.rank()
    mine = list(range(rank, len(eval_data), world))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    n_batches = math.ceil(math.ceil(len(eval_data) / world) / batch_size)
    sums: dict[str, float] = {}
    weight = 0.0
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for b in range(n_batches):
            idx, w = (batches[b], len(batches[b])) if b < len(batches) else ([0], 0)
            out = eval_fn(module, to_device(collate([eval_data[i] for i in idx]), device))
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + _as_float(value) * w
            weight += w
    module.train(was_training)
    return _reduce_means(sums, weight)


def _gather_zero3(engine) -> nn.Module:
    """Give back a plain module: gather every ZeRO-3 partition into its parameter, then drop DS hooks."""
    import deepspeed

    module = engine.module
    full = {}
    for p in module.parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            full[id(p)] = p.data.detach().clone()
    if hasattr(engine.optimizer, "destroy"):
        engine.optimizer.destroy()
    for p in module.parameters():
        p.data = full[id(p)]
    return module


# ---------------------------------------------------------------- the loop

def train(
    *,
    model: nn.Module,
    train_data: Sequence,
    collate: Callable[[list], dict],
    loss_fn: LossFn,
    settings: EngineSettings,
    out_dir: Path,
    trainable: list[nn.Parameter] | None = None,
    eval_data: Sequence | None = None,
    eval_fn: EvalFn | None = None,
    resume: bool = True,
    stage_name: str = "train",
    token_key: str = "attention_mask",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `model` on `train_data`; see the module docstring for what the engine owns.

    `loss_fn` and `eval_fn` receive the DeepSpeed engine as `model`: calling it runs the module's forward
    through DeepSpeed (ZeRO-3 gradient accumulation is counted in engine.forward; calling the bare module
    makes ZeRO-3 keep only the last micro-batch's gradient), and attribute access (`model.config`,
    `model.disable_adapter()`) reaches the wrapped module.
    `trainable` (default: parameters with requires_grad) is what the optimizer updates; every other
    parameter is frozen. `on_step(step, metrics)` runs on every rank after each optimizer step.
    Raises Interrupted (130) after checkpointing on SIGINT/SIGTERM, TrainingError (3) on a NaN/inf loss.
    """
    import deepspeed

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    dist.setup()
    world, rank, device = dist.world_size(), dist.rank(), dist.device()
    checkpoint.seed_everything(settings.seed)

    n_micro = len(train_data) // (settings.batch_size * world)
    steps_per_epoch = n_micro // settings.grad_accum
    if steps_per_epoch == 0:
        raise InputError(
            f"{stage_name}: {len(train_data)} training rows are fewer than one optimizer step needs "
            f"(batch_size {settings.batch_size} × grad_accum {settings.grad_accum} × {world} processes); "
            "lower train.batch_size or train.grad_accum"
        )
    n_micro = steps_per_epoch * settings.grad_accum  # drop_last: every epoch ends on an optimizer step
    total_steps = settings.max_steps or settings.epochs * steps_per_epoch
    warmup_steps = math.ceil(settings.warmup_ratio * total_steps)

    params = list(trainable) if trainable is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{stage_name}: the model has no trainable parameters")
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)

    if settings.activation_checkpointing:
        enable_activation_checkpointing(model, stage_name)
    config = deepspeed_config(settings, world)
    groups = param_groups(params, settings.weight_decay)
    schedule = lr_lambda(settings.scheduler, warmup_steps, total_steps)
    if "optimizer" in config:  # DeepSpeed's own optimizer (offload or a user JSON): it builds it from groups
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    else:
        client = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=client, config=config,
            lr_scheduler=torch.optim.lr_scheduler.LambdaLR(client, schedule))
    module = engine.module

    ckpt_dir = out_dir / "checkpoints"
    layout = {"batch_size": settings.batch_size, "grad_accum": settings.grad_accum, "world_size": world,
              "seed": settings.seed, "train_rows": len(train_data)}
    tag = dist.broadcast_object(checkpoint.latest_tag(ckpt_dir) if resume else None)
    start_step, resumed_from = 0, None
    if tag is not None:
        tag, state = checkpoint.load_latest(engine, ckpt_dir, console.warn)
        checkpoint.check_compatible(state["layout"], layout, ckpt_dir / tag)
        start_step = resumed_from = int(state["step"])
    elif dist.is_rank0():
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a fresh run never resumes into an old run's pointer
    dist.barrier()

    sink = MetricsSink(out_dir, enabled=dist.is_rank0(), tensorboard=settings.tensorboard, stage_name=stage_name)
    sink.truncate_after(start_step) if resumed_from is not None else sink.reset()
    progress = Progress(enabled=dist.is_rank0(), total=total_steps, start=start_step, stage_name=stage_name)
    if resumed_from is not None:
        progress.message(f"{stage_name}: resumed from {ckpt_dir / tag} (step {start_step}/{total_steps})")
    if eval_fn is None:
        def eval_fn(m, b):  # default: the training loss and its metrics on held-out rows
            loss, metrics = loss_fn(m, b)
            return {"loss": loss, **metrics}
    eval_bs = settings.eval_batch_size or settings.batch_size
    fault = _fault()

    step = start_step
    last_saved = start_step if resumed_from is not None else None
    last_record: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    last_eval_step = None
    window: dict[str, float] = {}
    window_micro, window_tokens, window_t = 0.0, 0.0, 0.0  # window_t: compute seconds since the last log
    train_time, samples_done, tokens_done = 0.0, 0, 0.0

    def do_eval() -> None:
        nonlocal last_eval, last_eval_step
        if not eval_data:
            return
        last_eval = _evaluate(engine, eval_data, collate, eval_fn, eval_bs, device)
        last_eval_step = step
        sink.write({"split": "eval", "step": step, "epoch": round(step / steps_per_epoch, 4), **last_eval})
        progress.message(f"{stage_name}: eval at step {step}: "
                         + " ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))

    def save() -> Path:
        nonlocal last_saved
        path = checkpoint.save(engine, ckpt_dir, step, {"step": step, "layout": layout}, settings.checkpoint_keep)
        last_saved = step
        return path

    engine.train()
    try:
        with _stop_signals() as stop:
            while step < total_steps:
                epoch = step // steps_per_epoch
                micro = rank_micro_batches(epoch_order(settings.seed, epoch, len(train_data)),
                                           batch_size=settings.batch_size, world=world, rank=rank,
                                           n_micro=n_micro)
                for k in range(step % steps_per_epoch, steps_per_epoch):
                    if step >= total_steps:
                        break
                    t0 = time.perf_counter()
                    lr = float(scheduler.get_last_lr()[0]) if scheduler is not None else settings.lr  # this step's
                    step_sums: dict[str, float] = {}
                    for idx in micro[k * settings.grad_accum:(k + 1) * settings.grad_accum]:
                        batch = to_device(collate([train_data[i] for i in idx]), device)
                        loss, metrics = loss_fn(engine, batch)
                        if fault and fault[0] == "nan" and fault[1] == step + 1:
                            loss = loss * float("nan")
                        if dist.any_rank(not bool(torch.isfinite(loss.detach()).all())):
                            good = checkpoint.latest_tag(ckpt_dir)
                            raise TrainingError(
                                f"{stage_name}: loss is {_as_float(loss)} at step {step + 1} (epoch {epoch + 1}); "
                                f"last good checkpoint: {ckpt_dir / good if good else 'none'}; "
                                "lower the learning rate or check the data")
                        engine.backward(loss)
                        engine.step()
                        for key, value in {"loss": loss, **metrics}.items():
                            step_sums[key] = step_sums.get(key, 0.0) + _as_float(value)
                        if token_key in batch and isinstance(batch[token_key], torch.Tensor):
                            window_tokens += float(batch[token_key].sum().item())
                    step += 1
                    train_time += time.perf_counter() - t0
                    window_t += time.perf_counter() - t0
                    samples_done += settings.batch_size * settings.grad_accum * world
                    for key, value in step_sums.items():
                        window[key] = window.get(key, 0.0) + value
                    window_micro += settings.grad_accum
                    if on_step is not None:
                        on_step(step, {**{k: v / settings.grad_accum for k, v in step_sums.items()}, "lr": lr})

                    record = None
                    if step % max(1, settings.log_every) == 0 or step == total_steps:
                        means = _reduce_means(window, window_micro)
                        tokens = float(dist.all_reduce_sum(torch.tensor([window_tokens], dtype=torch.float64))[0])
                        dt = max(window_t, 1e-9)
                        record = {"split": "train", "step": step, "epoch": round(step / steps_per_epoch, 4),
                                  "lr": lr, **means,
                                  "samples_per_s": window_micro * settings.batch_size * world / dt,
                                  "tokens_per_s": tokens / dt}
                        tokens_done += tokens
                        sink.write(record)
                        last_record = record
                        window, window_micro, window_tokens, window_t = {}, 0.0, 0.0, 0.0
                    progress.update(step, record)

                    if settings.eval_every and step % settings.eval_every == 0:
                        do_eval()
                    if settings.eval_each_epoch and step % steps_per_epoch == 0 and last_eval_step != step:
                        do_eval()
                    if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                        save()
                    if fault and fault[0] == "sigint" and fault[1] == step:
                        os.kill(os.getpid(), signal.SIGINT)
                    if dist.any_rank(stop["signal"] is not None):
                        path = ckpt_dir / f"step-{step}" if last_saved == step else save()
                        raise Interrupted(f"{stage_name}: interrupted at step {step}; checkpoint written to "
                                          f"{path}; rerun the same command with --resume to continue")
            if last_saved != step:
                save()
            if eval_data and last_eval_step != step:
                do_eval()
    finally:
        progress.close()
        sink.close()

    if settings.zero_stage == 3:
        module = _gather_zero3(engine)
    module.eval()
    dist.barrier()
    wall = time.perf_counter() - t_start
    return TrainResult(
        model=module,
        global_step=step,
        epochs_done=step // steps_per_epoch,
        last_metrics={k: v for k, v in last_record.items() if k != "split"},
        last_eval=last_eval,
        resumed_from_step=resumed_from,
        wall_s=wall,
        samples_per_s=samples_done / train_time if train_time > 0 else 0.0,
        tokens_per_s=tokens_done / train_time if train_time > 0 else 0.0,
    )
