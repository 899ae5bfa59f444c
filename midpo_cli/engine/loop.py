"""The one training loop every stage uses.

A stage hands over a model, a dataset (a sequence of features), a collate function and a loss
`loss_fn(model, batch) -> (loss, metrics)`; the engine owns the rest: DeepSpeed set-up, data order,
gradient accumulation, clipping, schedule, evaluation, metrics, checkpoints, resume, signals and NaN
stops. `train()` returns a `TrainResult` whose `model` is the plain, trained nn.Module (ZeRO-3 shards
gathered back into it), ready for the stage to save with `artifacts.save_verified`.

Read it top to bottom: `setup` (processes, seeds, the step plan, the DeepSpeed engine, resume),
`train_step` (one optimizer step over its micro-batches), `steps` (every remaining step, yielded as a
`StepRecord`), and `train`, the driver that logs, evaluates and checkpoints between steps.

Determinism: Python/numpy/torch are seeded from `settings.seed`; epoch e visits the data in the
permutation drawn from (seed, e); a checkpoint stores the RNG states and the step, so a resumed run
replays exactly the batches and dropout masks an uninterrupted one would have seen (fp32, CPU).
"""

from __future__ import annotations

import contextlib
import math
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
from midpo_cli.engine.deepspeed_config import deepspeed_config
from midpo_cli.engine.host_memory import release_freed_memory
from midpo_cli.engine.metrics import MetricsSink, Progress
from midpo_cli.engine.settings import EngineSettings
from midpo_cli.engine.subnormals import flush_subnormals
from midpo_cli.errors import InputError, Interrupted, TrainingError

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module, dict], dict[str, Any]]


@dataclass
class TrainResult:
    model: nn.Module
    global_step: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int | None = None
    wall_s: float = 0.0
    samples_per_s: float = 0.0


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


def step_plan(n_rows: int, settings: EngineSettings, world: int, stage_name: str) -> tuple[int, int, int]:
    """(optimizer steps per epoch, micro-batches per epoch and rank, total optimizer steps).

    The last partial optimizer step of an epoch is dropped: every epoch ends on an optimizer step.
    """
    steps_per_epoch = n_rows // (settings.batch_size * world) // settings.grad_accum
    if steps_per_epoch == 0:
        raise InputError(
            f"{stage_name}: {n_rows} training rows are fewer than one optimizer step needs "
            f"(batch_size {settings.batch_size} × grad_accum {settings.grad_accum} × {world} processes); "
            "lower train.batch_size or train.grad_accum"
        )
    total_steps = settings.max_steps or settings.epochs * steps_per_epoch
    return steps_per_epoch, steps_per_epoch * settings.grad_accum, total_steps


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


class EngineModel:
    """What `loss_fn` and `eval_fn` receive as `model`: the stage's own model, with its forward run by DeepSpeed.

    Calling it calls the DeepSpeed engine, never the bare module: ZeRO-3 counts gradient accumulation in
    `engine.forward`, and a forward of the bare module makes ZeRO-3 silently keep only the last
    micro-batch's gradient. Every attribute is the wrapped module's (`model.config`,
    `model.disable_adapter()`, `model.gate_tensors()`), so a loss function needs to know nothing of DeepSpeed.
    """

    def __init__(self, engine: Any) -> None:
        object.__setattr__(self, "_engine", engine)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine.module, name)


def _evaluate(engine, eval_data: Sequence, collate, eval_fn: EvalFn, batch_size: int,
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
    model = EngineModel(engine)
    was_training = engine.training
    engine.eval()
    with torch.no_grad():
        for b in range(n_batches):
            idx, w = (batches[b], len(batches[b])) if b < len(batches) else ([0], 0)
            out = eval_fn(model, to_device(collate([eval_data[i] for i in idx]), device))
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + _as_float(value) * w
            weight += w
    engine.train(was_training)
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


# ---------------------------------------------------------------- set-up

@dataclass
class Trainer:
    """What `setup` built: the DeepSpeed engine, the step plan, and where a resumed run starts."""

    engine: Any
    scheduler: Any
    settings: EngineSettings
    stage_name: str
    train_data: Sequence
    collate: Callable[[list], dict]
    loss_fn: LossFn
    token_key: str
    world: int
    rank: int
    device: torch.device
    steps_per_epoch: int
    n_micro: int
    total_steps: int
    ckpt_dir: Path
    layout: dict[str, Any]
    start_step: int = 0
    resumed_tag: str | None = None  # the checkpoint this run resumed from

    @property
    def resumed_from(self) -> int | None:
        return self.start_step if self.resumed_tag is not None else None


def setup(*, model: nn.Module, train_data: Sequence, collate: Callable[[list], dict], loss_fn: LossFn,
          settings: EngineSettings, out_dir: Path, trainable: list[nn.Parameter] | None, resume: bool,
          stage_name: str, token_key: str) -> Trainer:
    """Processes and seeds, the step plan, what trains, the DeepSpeed engine, then the checkpoint to resume.

    The order matters: the seeds come first (DeepSpeed's set-up draws no numbers, the model's dropout
    will), and a resumed checkpoint's RNG states are restored last, over everything set-up drew.
    """
    import deepspeed  # noqa: F401 - imported before the process group exists, in the order the engine always had

    dist.setup()
    world, rank = dist.world_size(), dist.rank()
    checkpoint.seed_everything(settings.seed)
    if dist.device().type == "cpu":  # the workers only see it if the pipeline set it first (engine/subnormals.py)
        flush_subnormals()
    steps_per_epoch, n_micro, total_steps = step_plan(len(train_data), settings, world, stage_name)
    params = _freeze_all_but(model, trainable, stage_name)
    if settings.activation_checkpointing:
        enable_activation_checkpointing(model, stage_name)
    engine, scheduler = _initialize(model, params, settings, world, total_steps)
    trainer = Trainer(
        engine=engine, scheduler=scheduler, settings=settings, stage_name=stage_name, train_data=train_data,
        collate=collate, loss_fn=loss_fn, token_key=token_key, world=world, rank=rank, device=dist.device(),
        steps_per_epoch=steps_per_epoch, n_micro=n_micro, total_steps=total_steps,
        ckpt_dir=out_dir / "checkpoints",
        layout={"batch_size": settings.batch_size, "grad_accum": settings.grad_accum, "world_size": world,
                "seed": settings.seed, "train_rows": len(train_data)},
    )
    trainer.resumed_tag, trainer.start_step = _resume(trainer, resume)
    return trainer


def _freeze_all_but(model: nn.Module, trainable: list[nn.Parameter] | None, stage_name: str) -> list[nn.Parameter]:
    """`trainable` (default: the parameters that require grad) is what the optimizer updates; the rest is frozen."""
    params = list(trainable) if trainable is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{stage_name}: the model has no trainable parameters")
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params


def _initialize(model: nn.Module, params: list[nn.Parameter], settings: EngineSettings, world: int,
                total_steps: int) -> tuple[Any, Any]:
    """The DeepSpeed engine and LR scheduler; a client torch AdamW unless the config names DeepSpeed's own."""
    import deepspeed

    warmup_steps = math.ceil(settings.warmup_ratio * total_steps)
    config = deepspeed_config(settings, world)
    groups = param_groups(params, settings.weight_decay)
    schedule = lr_lambda(settings.scheduler, warmup_steps, total_steps)
    if "optimizer" in config:  # DeepSpeed's own optimizer (offload or a user JSON): it builds it from groups
        engine, _, _, scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    else:
        client = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8)
        engine, _, _, scheduler = deepspeed.initialize(
            model=model, optimizer=client, config=config,
            lr_scheduler=torch.optim.lr_scheduler.LambdaLR(client, schedule))
    return engine, scheduler


def _resume(trainer: Trainer, resume: bool) -> tuple[str | None, int]:
    """(checkpoint tag, its step) of the run to continue, or (None, 0); a fresh run clears old checkpoints."""
    ckpt_dir = trainer.ckpt_dir
    # a dangling or escaping `latest` still resumes from the step folders (it used to restart at step 1)
    found = (checkpoint.latest_tag(ckpt_dir) or next(iter(checkpoint.step_tags(ckpt_dir)), None)) if resume else None
    tag = dist.broadcast_object(found)
    start_step = 0
    if tag is not None:
        tag, state = checkpoint.load_latest(trainer.engine, ckpt_dir, console.warn)
        checkpoint.check_compatible(state["layout"], trainer.layout, ckpt_dir / tag)
        start_step = int(state["step"])
    elif dist.is_rank0():
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a fresh run never resumes into an old run's pointer
    dist.barrier()
    return tag, start_step


# ---------------------------------------------------------------- steps

@dataclass
class Step:
    """One optimizer step to take: `index` optimizer steps are done before it; its micro-batches' rows."""

    index: int
    epoch: int
    micro_batches: list[list[int]]


@dataclass
class StepRecord:
    """What one optimizer step did: loss and metrics summed over its micro-batches, tokens seen on this rank."""

    step: int  # optimizer steps done, this one included
    epoch: int
    lr: float  # the learning rate this step used
    sums: dict[str, float]
    tokens: float
    seconds: float

    def means(self, grad_accum: int) -> dict[str, float]:
        """This step's metrics averaged over its micro-batches, and its learning rate."""
        return {**{k: v / grad_accum for k, v in self.sums.items()}, "lr": self.lr}


def train_step(trainer: Trainer, step: Step) -> StepRecord:
    """Forward, backward and DeepSpeed's step for each micro-batch (it applies the update on the last one).

    A NaN/inf loss on any rank stops every rank before its backward, naming the last good checkpoint.
    """
    t0 = time.perf_counter()
    engine, scheduler = trainer.engine, trainer.scheduler
    lr = float(scheduler.get_last_lr()[0]) if scheduler is not None else trainer.settings.lr
    model = EngineModel(engine)
    sums: dict[str, float] = {}
    tokens = 0.0
    for idx in step.micro_batches:
        batch = to_device(trainer.collate([trainer.train_data[i] for i in idx]), trainer.device)
        loss, metrics = trainer.loss_fn(model, batch)
        if dist.any_rank(not bool(torch.isfinite(loss.detach()).all())):
            good = checkpoint.latest_tag(trainer.ckpt_dir)
            raise TrainingError(
                f"{trainer.stage_name}: loss is {_as_float(loss)} at step {step.index + 1} (epoch {step.epoch + 1}); "
                f"last good checkpoint: {trainer.ckpt_dir / good if good else 'none'}; "
                "lower the learning rate or check the data")
        engine.backward(loss)
        engine.step()
        if trainer.device.type == "cpu" and trainer.settings.activation_checkpointing:
            release_freed_memory()  # memory over time, as checkpointing chose: the step's slack (host_memory)
        for key, value in {"loss": loss, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + _as_float(value)
        if isinstance(batch.get(trainer.token_key), torch.Tensor):
            tokens += float(batch[trainer.token_key].sum().item())
    return StepRecord(step=step.index + 1, epoch=step.epoch, lr=lr, sums=sums, tokens=tokens,
                      seconds=time.perf_counter() - t0)


def steps(trainer: Trainer) -> Iterator[StepRecord]:
    """Take every remaining optimizer step in data order, yielding each one's record as soon as it is taken."""
    s = trainer.settings
    micro, micro_epoch = [], None
    for index in range(trainer.start_step, trainer.total_steps):
        epoch = index // trainer.steps_per_epoch
        if epoch != micro_epoch:
            order = epoch_order(s.seed, epoch, len(trainer.train_data))
            micro = rank_micro_batches(order, batch_size=s.batch_size, world=trainer.world, rank=trainer.rank,
                                       n_micro=trainer.n_micro)
            micro_epoch = epoch
        k = index % trainer.steps_per_epoch
        yield train_step(trainer, Step(index, epoch, micro[k * s.grad_accum:(k + 1) * s.grad_accum]))


# ---------------------------------------------------------------- between steps: metrics, evaluation, checkpoints

class Bookkeeper:
    """What the driver does between steps: windowed train metrics, evaluation, checkpoints, the totals."""

    def __init__(self, trainer: Trainer, out_dir: Path, eval_data: Sequence | None, eval_fn: EvalFn) -> None:
        self.trainer, self.eval_data, self.eval_fn = trainer, eval_data, eval_fn
        name, resumed = trainer.stage_name, trainer.resumed_from is not None
        self.sink = MetricsSink(out_dir, enabled=dist.is_rank0(), tensorboard=trainer.settings.tensorboard,
                                report_to=trainer.settings.report_to, stage_name=name)
        self.sink.truncate_after(trainer.start_step) if resumed else self.sink.reset()
        self.progress = Progress(enabled=dist.is_rank0(), total=trainer.total_steps, start=trainer.start_step,
                                 stage_name=name)
        if resumed:
            self.progress.message(f"{name}: resumed from {trainer.ckpt_dir / trainer.resumed_tag} "
                                  f"(step {trainer.start_step}/{trainer.total_steps})")
        self.step = trainer.start_step
        self.last_saved = trainer.start_step if resumed else None
        self.last_record: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.last_eval_step: int | None = None
        self.train_time, self.samples_done, self.tokens_done = 0.0, 0, 0.0
        self._new_window()

    def _new_window(self) -> None:
        """The train metrics since the last logged step (window_t: compute seconds)."""
        self.window: dict[str, float] = {}
        self.window_micro, self.window_tokens, self.window_t = 0.0, 0.0, 0.0

    def log(self, record: StepRecord) -> None:
        """Count the step; on a logging step, write the window's means (over all ranks) and start a new window."""
        t, s = self.trainer, self.trainer.settings
        self.step = record.step
        self.train_time += record.seconds
        self.window_t += record.seconds
        self.samples_done += s.batch_size * s.grad_accum * t.world
        for key, value in record.sums.items():
            self.window[key] = self.window.get(key, 0.0) + value
        self.window_micro += s.grad_accum
        self.window_tokens += record.tokens
        line = None
        if record.step % max(1, s.log_every) == 0 or record.step == t.total_steps:
            means = _reduce_means(self.window, self.window_micro)
            tokens = float(dist.all_reduce_sum(torch.tensor([self.window_tokens], dtype=torch.float64))[0])
            dt = max(self.window_t, 1e-9)
            line = {"split": "train", "step": record.step, "epoch": round(record.step / t.steps_per_epoch, 4),
                    "lr": record.lr, **means, "samples_per_s": self.window_micro * s.batch_size * t.world / dt,
                    "tokens_per_s": tokens / dt}
            self.tokens_done += tokens
            self.sink.write(line)
            self.last_record = line
            self._new_window()
        self.progress.update(record.step, line)

    def evaluate(self) -> None:
        if not self.eval_data:
            return
        t, s = self.trainer, self.trainer.settings
        self.last_eval = _evaluate(t.engine, self.eval_data, t.collate, self.eval_fn,
                                   s.eval_batch_size or s.batch_size, t.device)
        self.last_eval_step = self.step
        self.sink.write({"split": "eval", "step": self.step, "epoch": round(self.step / t.steps_per_epoch, 4),
                         **self.last_eval})
        self.progress.message(f"{t.stage_name}: eval at step {self.step}: "
                              + " ".join(f"{k} {v:.4g}" for k, v in self.last_eval.items()))

    def save(self) -> Path:
        t = self.trainer
        path = checkpoint.save(t.engine, t.ckpt_dir, self.step, {"step": self.step, "layout": t.layout},
                               t.settings.checkpoint.keep)
        self.last_saved = self.step
        return path

    def interrupted(self) -> Interrupted:
        """Checkpoint this step (once) and say how to continue."""
        path = self.trainer.ckpt_dir / f"step-{self.step}" if self.last_saved == self.step else self.save()
        return Interrupted(f"{self.trainer.stage_name}: interrupted at step {self.step}; checkpoint written to "
                           f"{path}", resumable=True)

    def finish(self) -> None:
        """The last step is checkpointed and evaluated, unless that already happened at it."""
        if self.last_saved != self.step:
            self.save()
        if self.eval_data and self.last_eval_step != self.step:
            self.evaluate()

    def close(self) -> None:
        self.progress.close()
        self.sink.close()

    def result(self, module: nn.Module, wall_s: float) -> TrainResult:
        t = self.trainer
        return TrainResult(
            model=module,
            global_step=self.step,
            last_metrics={k: v for k, v in self.last_record.items() if k != "split"},
            last_eval=self.last_eval,
            resumed_from_step=t.resumed_from,
            wall_s=wall_s,
            samples_per_s=self.samples_done / self.train_time if self.train_time > 0 else 0.0,
        )


def _every(n: int | None, step: int) -> bool:
    return bool(n) and step % n == 0


def _loss_as_eval(loss_fn: LossFn) -> EvalFn:
    """The default evaluation: the training loss and its metrics on held-out rows."""
    def eval_fn(model, batch):
        loss, metrics = loss_fn(model, batch)
        return {"loss": loss, **metrics}

    return eval_fn


# ---------------------------------------------------------------- the driver

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

    `loss_fn` and `eval_fn` receive an `EngineModel`: the model, with its forward run by DeepSpeed.
    `trainable` (default: parameters with requires_grad) is what the optimizer updates; every other
    parameter is frozen. `on_step(step, metrics)` runs on every rank after each optimizer step.
    Raises Interrupted (130) after checkpointing on SIGINT/SIGTERM, TrainingError (3) on a NaN/inf loss.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = setup(model=model, train_data=train_data, collate=collate, loss_fn=loss_fn, settings=settings,
                    out_dir=out_dir, trainable=trainable, resume=resume, stage_name=stage_name, token_key=token_key)
    book = Bookkeeper(trainer, out_dir, eval_data, eval_fn or _loss_as_eval(loss_fn))
    try:
        with _stop_signals() as stop:
            for record in steps(trainer):
                if on_step is not None:
                    on_step(record.step, record.means(settings.grad_accum))
                book.log(record)
                if _every(settings.eval_every, record.step) or (
                        settings.eval_each_epoch and record.step % trainer.steps_per_epoch == 0):
                    book.evaluate()
                if _every(settings.checkpoint.every_steps, record.step):
                    book.save()
                if dist.any_rank(stop["signal"] is not None):
                    raise book.interrupted()
            book.finish()
    finally:
        book.close()

    module = _gather_zero3(trainer.engine) if settings.zero_stage == 3 else trainer.engine.module
    module.eval()
    dist.barrier()
    return book.result(module, wall_s=time.perf_counter() - t_start)
