"""Process-group set-up and rank helpers.

Outside a launcher `deepspeed.init_distributed()` tries MPI discovery and dies on a missing mpi4py
(docs/design.md §6), so a single process sets the torch.distributed environment itself. The process group
is created once per process and reused by every later `train()` call (tests, the pipeline).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
from typing import Any

import torch
import torch.distributed as tdist

from midpo_cli import console

SINGLE_PROCESS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MARKER = "MIDPO_SINGLE_PROCESS"  # holds the MASTER_PORT we chose: the variables above are ours, not a launcher's


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


def setup() -> None:
    """Make sure a torch.distributed process group exists (gloo on CPU, nccl on CUDA)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if tdist.is_available() and tdist.is_initialized():
        return
    ours = os.environ.get(MARKER) is not None and os.environ.get(MARKER) == os.environ.get("MASTER_PORT")
    if "RANK" not in os.environ or ours:
        # Not under a launcher (or these came from a parent's single-process run): a world of one,
        # on a port that is free now. A child process inherits them; launch.run_argv strips them.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
        os.environ[MARKER] = os.environ["MASTER_PORT"]
    import deepspeed

    if use_cuda():
        torch.cuda.set_device(local_rank())
    # DeepSpeed prints "… built successfully" for its shared-memory op: on stdout, where --json goes
    with contextlib.redirect_stdout(sys.stderr if console.debug() else io.StringIO()):
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda() else "gloo", auto_mpi_discovery=False,
                                   verbose=False)


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if use_cuda() else torch.device("cpu")


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        tdist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float tensor over ranks (a no-op in a world of one); returns a new CPU tensor."""
    if not is_initialized() or world_size() == 1:
        return values.detach().clone().cpu()
    t = values.detach().to(device(), dtype=torch.float64 if not use_cuda() else torch.float32).clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.cpu()


def any_rank(flag: bool) -> bool:
    """True when the flag is set on any rank: ranks must agree to stop, or collectives hang."""
    if not is_initialized() or world_size() == 1:
        return flag
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
