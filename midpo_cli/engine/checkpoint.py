"""Resumable checkpoints: DeepSpeed's model/optimizer/scheduler state plus ours in client_state.

Layout: `<stage>/checkpoints/step-<N>/` (DeepSpeed's files) and `<stage>/checkpoints/latest`, a one-line
pointer written atomically *after* the step folder is complete, so a crash mid-save leaves the pointer
on the previous, whole checkpoint. DeepSpeed's own `latest` file is not used (`save_latest=False`).

Frozen parameters are left out (`exclude_frozen_parameters`): a LoRA expert or a router on a 7B base
would otherwise write the 13 GB base into every checkpoint, although a resumed run reloads the same
base from its source. `step-<N>/midpo-trainable.json` lists the trainable parameters that were saved;
a resume loads the module non-strictly only after checking that list against the model's own.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midpo_cli.engine import dist
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_text

POINTER = "latest"
TRAINABLE = "midpo-trainable.json"
TAG_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag the pointer names, if that folder exists (a dangling pointer counts as none)."""
    pointer = ckpt_dir / POINTER
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if TAG_RE.match(tag) and (ckpt_dir / tag).is_dir() else None


def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep: int) -> Path:
    """Every rank writes its shard; rank 0 then moves the pointer and prunes old folders."""
    tag = f"step-{step}"
    client_state = {**client_state, "rng": rng_state()}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=True)
    dist.barrier()
    if dist.is_rank0():
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


def load(engine, ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Restore the trainable weights, optimizer, scheduler and RNG; returns our client_state."""
    listing = ckpt_dir / tag / TRAINABLE
    try:
        saved = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"{ckpt_dir / tag}: no readable {TRAINABLE} (an incomplete or foreign checkpoint); "
                         f"delete {ckpt_dir} to start over") from None
    current = trainable_names(engine.module)
    if saved != current:
        missing, extra = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        raise InputError(f"{ckpt_dir / tag}: its trainable parameters differ from the model's (not in the "
                         f"checkpoint: {missing[:3]}; only in the checkpoint: {extra[:3]}); "
                         f"delete {ckpt_dir} to start over")
    # frozen weights are not in the checkpoint, so the module loads non-strictly; the listing above
    # proves every trainable tensor is there
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_strict=False,
                                                load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None or client_state is None:
        raise InputError(f"{ckpt_dir / tag}: checkpoint could not be loaded; delete {ckpt_dir} to start over")
    set_rng_state(client_state["rng"])
    return client_state


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Resuming with another batch layout would silently replay or skip data: refuse, naming the key."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise InputError(f"{where}: cannot resume, the run changed ({'; '.join(diffs)}); "
                         f"restore those settings or delete {where.parent} to start over")
