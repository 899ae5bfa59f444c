"""Resumable checkpoints: DeepSpeed's model/optimizer/scheduler state plus ours in client_state.

Layout: `<stage>/checkpoints/step-<N>/` (DeepSpeed's files) and `<stage>/checkpoints/latest`, a one-line
pointer written atomically *after* the step folder is complete, so a crash mid-save leaves the pointer
on the previous, whole checkpoint. DeepSpeed's own `latest` file is not used (`save_latest=False`).

Frozen parameters are left out (`exclude_frozen_parameters`): a LoRA expert or a router on a 7B base
would otherwise write the whole base into every checkpoint, although a resumed run reloads the same
base from its source. `step-<N>/midpo-trainable.json` lists the trainable parameters that were saved;
a resume loads the module non-strictly only after checking that list against the model's own.

Resume never unpickles arbitrary objects: midpo's own state (step, batch layout, RNG states) is JSON
in `step-<N>/midpo-state.json`, and DeepSpeed's `.pt` files are read with `torch.load(weights_only=True)`
and an allow-list of the few DeepSpeed/torch classes they hold (`safe_loading`), so a planted pickle
payload is refused, not run. A checkpoint that cannot be read (truncated, corrupt, foreign objects)
is skipped with a warning naming the file, and the previous one is used (`load_latest`).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midpo_cli.engine import dist
from midpo_cli.errors import InputError
from midpo_cli.io import as_disk_full, atomic_write_text, try_read_json

POINTER = "latest"
TRAINABLE = "midpo-trainable.json"
STATE = "midpo-state.json"
TAG_RE = re.compile(r"^step-(\d+)$")


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read safely; `path` names it."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain JSON data (lists of ints), so a checkpoint needs no pickle to restore it."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": [version, list(internal), gauss],
                             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag the pointer names, if that folder exists (a dangling pointer counts as none)."""
    pointer = ckpt_dir / POINTER
    if not pointer.is_file() or pointer.is_symlink():
        return None
    tag = pointer.read_text(encoding="utf-8", errors="replace").strip()
    return tag if TAG_RE.match(tag) and (ckpt_dir / tag).is_dir() and not (ckpt_dir / tag).is_symlink() else None


def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep: int) -> Path:
    """Every rank writes its shard; rank 0 then moves the pointer and prunes old folders."""
    tag = f"step-{step}"
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={}, save_latest=False,
                               exclude_frozen_parameters=True)
    except RuntimeError as exc:  # the pointer still names the last whole checkpoint; this one is cut short
        error = as_disk_full(exc, ckpt_dir / tag)  # before its partial files are removed, freeing space
        if latest_tag(ckpt_dir) != tag:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        if error is exc:
            raise
        raise error from exc
    dist.barrier()
    if dist.is_rank0():
        atomic_write_text(ckpt_dir / tag / STATE, json.dumps({**client_state, "rng": rng_state()}))
        atomic_write_text(ckpt_dir / tag / TRAINABLE, json.dumps(trainable_names(engine.module)))
        atomic_write_text(ckpt_dir / POINTER, tag + "\n")
        prune(ckpt_dir, keep=keep, current=tag)
    dist.barrier()
    return ckpt_dir / tag


def prune(ckpt_dir: Path, *, keep: int, current: str) -> None:
    """Keep the newest `keep` step folders (and always the one the pointer names)."""
    steps = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                   if p.is_dir() and (m := TAG_RE.match(p.name)))
    for _, path in steps[: max(0, len(steps) - max(keep, 1))]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)


def trainable_names(module: torch.nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if p.requires_grad]


def _read_json(path: Path) -> Any:
    data = try_read_json(path)
    if data is None:
        raise CorruptCheckpoint(path, "missing or not readable JSON")
    return data


def allowed_globals() -> list[Any]:
    """The classes DeepSpeed's checkpoint files may hold besides tensors and containers (fp32/bf16/fp16 ZeRO
    0–3 optimizer states): its loss scalers, ZeRO's fragment addresses and its config enums."""
    import importlib

    found: list[Any] = []
    for module, names in (
        ("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler", "LossScalerBase")),
        ("deepspeed.utils.tensor_fragment", ("fragment_address",)),
        ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
        ("deepspeed.runtime.zero.offload_config", ("OffloadDeviceEnum",)),
        ("torch.optim.lr_scheduler", ("LambdaLR",)),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return found


@contextlib.contextmanager
def safe_loading(engine) -> Iterator[dict[str, str]]:
    """Make DeepSpeed read its checkpoint files with torch.load(weights_only=True) and the allow-list above.

    Yields {"path": the file being read}, so a failure can name it.
    """
    original = engine.checkpoint_engine.load
    where: dict[str, str] = {}

    def load(path, map_location=None):
        where["path"] = str(path)
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine.load = load
    try:
        yield where
    finally:
        engine.checkpoint_engine.load = original


def load(engine, ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Restore the trainable weights, optimizer, scheduler and RNG; returns midpo's state (step, layout).

    Raises CorruptCheckpoint for a file that cannot be read safely, InputError for a foreign one.
    """
    saved = _read_json(ckpt_dir / tag / TRAINABLE)
    state = _read_json(ckpt_dir / tag / STATE)
    if not isinstance(state, dict) or not {"step", "layout", "rng"} <= set(state):
        raise CorruptCheckpoint(ckpt_dir / tag / STATE, "lacks step, layout or rng")
    current = trainable_names(engine.module)
    if saved != current:
        missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        raise InputError(f"{ckpt_dir / tag}: its trainable parameters differ from the model's (not in the "
                         f"checkpoint: {missing[:3]}; only in the checkpoint: {extra[:3]}); "
                         f"delete {ckpt_dir} to start over")
    # frozen weights are not in the checkpoint, so the module loads non-strictly; the listing above
    # proves every trainable tensor is there
    with safe_loading(engine) as where:
        try:
            path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_strict=False,
                                             load_optimizer_states=True, load_lr_scheduler_states=True)
        except Exception as exc:  # UnpicklingError (refused object), a truncated zip, a short read, ...
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CorruptCheckpoint(where.get("path", ckpt_dir / tag), f"{type(exc).__name__}: {reason}") from None
    if path is None:
        raise CorruptCheckpoint(ckpt_dir / tag, "DeepSpeed found no checkpoint files")
    try:
        set_rng_state(state["rng"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpoint(ckpt_dir / tag / STATE, f"bad rng state ({exc})") from None
    return state


def step_tags(ckpt_dir: Path) -> list[str]:
    """Step folders, newest first."""
    if not ckpt_dir.is_dir():
        return []
    steps = sorted(((int(m.group(1)), p.name) for p in ckpt_dir.iterdir()
                    if p.is_dir() and not p.is_symlink() and (m := TAG_RE.match(p.name))), reverse=True)
    return [name for _, name in steps]


def load_latest(engine, ckpt_dir: Path, warn) -> tuple[str, dict[str, Any]] | None:
    """Load the pointer's checkpoint; if it cannot be read, each older one in turn (warning with the file).

    None when there is nothing to resume; InputError when step folders exist but none is readable.
    """
    first = latest_tag(ckpt_dir)
    if first is None:  # no pointer, or one that dangles or points out of the folder: the step folders decide
        tags = step_tags(ckpt_dir)
        if not tags:
            return None
        if (ckpt_dir / POINTER).exists() or (ckpt_dir / POINTER).is_symlink():
            warn(f"{ckpt_dir / POINTER} names no step folder of {ckpt_dir}; resuming from the newest readable "
                 f"one ({tags[0]} or older)")
    else:
        tags = [first] + [t for t in step_tags(ckpt_dir) if t != first and int(t[5:]) < int(first[5:])]
    problem = ""
    for tag in tags:
        try:
            return tag, load(engine, ckpt_dir, tag)
        except CorruptCheckpoint as exc:
            problem = str(exc)
            warn(f"checkpoint {ckpt_dir / tag} is unusable ({exc}); trying the previous one")
    raise InputError(f"{ckpt_dir}: no readable checkpoint (last problem: {problem}); "
                     f"delete {ckpt_dir} to start over")


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Resuming with another batch layout would silently replay or skip data: refuse, naming the key."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise InputError(f"{where}: cannot resume, the run changed ({'; '.join(diffs)}); "
                         f"restore those settings or delete {where.parent} to start over")
