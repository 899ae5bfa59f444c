"""Launcher command builder: `deepspeed` / `torchrun` argv lists that run the stage worker in every process.

Argv lists only, never a shell string: paths with spaces and quotes stay one argument, and nothing is
interpreted by a shell. `format_argv` is for printing (a line a user can paste). No torch at import time.
The deepspeed launcher has no `-m`; its `--module` flag makes it run the script name as a module.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from midpo_cli.errors import InputError

WORKER_MODULE = "midpo_cli.worker"
KINDS = ("none", "deepspeed", "torchrun")


def build_launcher_argv(
    kind: str,
    *,
    num_gpus: int | None,
    num_nodes: int | None,
    hostfile: str | Path | None,
    master_port: int | None,
    worker_argv: list[str],
    module: str | None = WORKER_MODULE,
    script: str | Path | None = None,
) -> list[str]:
    """The launcher argv that runs `python -m <module> *worker_argv` (or `script`) in each process."""
    if kind not in ("deepspeed", "torchrun"):
        raise InputError(f"launcher.kind: {kind!r} has no launcher command; use deepspeed or torchrun")
    if hostfile is not None and not Path(hostfile).is_file():
        raise InputError(f"launcher.hostfile: {hostfile} does not exist (DeepSpeed format: 'host slots=N' lines)")
    target = [str(script)] if script is not None else None
    if kind == "deepspeed":
        argv = ["deepspeed"]
        argv += ["--hostfile", str(hostfile)] if hostfile else []
        argv += ["--num_nodes", str(num_nodes)] if num_nodes and (num_nodes > 1 or hostfile) else []
        argv += ["--num_gpus", str(num_gpus)] if num_gpus else []
        argv += ["--master_port", str(master_port)] if master_port else []
        argv += target if target else ["--module", str(module)]
        return argv + list(worker_argv)
    if hostfile:
        raise InputError("launcher.hostfile: torchrun takes no hostfile; use launcher.kind=deepspeed for a "
                         "hostfile, or run torchrun on each node")
    argv = ["torchrun", "--nproc_per_node", str(num_gpus or 1)]
    argv += ["--nnodes", str(num_nodes)] if num_nodes and num_nodes > 1 else []
    argv += ["--master_port", str(master_port)] if master_port else []
    argv += target if target else ["-m", str(module)]
    return argv + list(worker_argv)


def format_argv(argv: list[str]) -> str:
    """One shell-quoted line a user can paste."""
    return shlex.join(argv)


def launcher_env() -> dict[str, str]:
    """This process's environment minus the rendezvous variables an in-process run set for itself (the names
    are dist's; imported here, when a launcher is about to start, so that printing an argv needs no torch)."""
    from midpo_cli.engine.dist import MARKER, SINGLE_PROCESS_ENV

    env = dict(os.environ)
    if env.pop(MARKER, None) is not None:
        for key in SINGLE_PROCESS_ENV:
            env.pop(key, None)
    return env


def run_argv(argv: list[str]) -> int:
    """Run the launcher (no shell) and return its exit code; a missing launcher is an InputError."""
    try:
        return subprocess.run(list(argv), check=False, env=launcher_env()).returncode
    except FileNotFoundError:
        raise InputError(f"launcher: {argv[0]!r} not found on PATH (is {argv[0]} installed in "
                         f"{sys.executable}'s environment?)") from None
