"""`midpo pipeline run`: every stage in dependency order, skipping what is done, under a run-dir lock."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.manifest import read_manifest, stage_dir
from midpo_cli.recipe import OPTIONAL_STAGES, STAGE_ORDER, Recipe
from midpo_cli.stages.context import abandon_folder, finish_folder, make_context
from midpo_cli.stages.graph import dependencies, expected_fingerprint

# Stage name → "module:function"; imported only when the stage runs (keeps `plan` torch-free).
RUNNERS = {
    "sft": "midpo_cli.stages.sft:run",
    "reward_model": "midpo_cli.stages.score_models:run_reward_model",
    "cost_model": "midpo_cli.stages.score_models:run_cost_model",
    "safety_expert": "midpo_cli.stages.expert:run_safety_expert",
    "helpfulness_expert": "midpo_cli.stages.expert:run_helpfulness_expert",
    "rank": "midpo_cli.stages.rank:run",
    "router": "midpo_cli.stages.router:run",
    "generate": "midpo_cli.stages.generate:run",
    "score": "midpo_cli.stages.score:run",
    "dpo_expert": "midpo_cli.stages.expert:run_dpo_expert",
}
LOCK = ".midpo.lock"
ALL_STAGES = (*STAGE_ORDER, *OPTIONAL_STAGES)


def runner(stage: str):
    module, _, func = RUNNERS[stage].partition(":")
    return getattr(importlib.import_module(module), func)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str = "pipeline run") -> Iterator[Path]:
    """One writing command per run dir (`pipeline run`, `train-*`, `rank`); a lock left by a dead process on
    this host is taken over. Without it a standalone stage command could wipe a running pipeline's stage."""
    from midpo_cli.stages.preflight import check_run_dir

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "command": command}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                other = {}
            same_host = other.get("host") == me["host"]
            if same_host and isinstance(other.get("pid"), int) and not _pid_alive(other["pid"]):
                console.warn(f"taking over a stale lock of dead process {other['pid']} in {run_dir}")
                path.unlink(missing_ok=True)
                continue
            raise InputError(
                f"{run_dir} is in use by `{other.get('command', 'pipeline run')}` (pid {other.get('pid', '?')} on "
                f"{other.get('host', '?')}, since {other.get('started', '?')}); wait for it, or delete {path} "
                "if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def run_stage(recipe: Recipe, stage: str, *, resume: bool) -> dict[str, Any]:
    """Check, prepare and run one stage (the caller holds the lock); returns its manifest.

    A failure with nothing to resume from gives the stage folder its previous finished result back;
    success drops that backup.
    """
    ctx = make_context(recipe, stage, resume=resume)
    restored = read_manifest(ctx.folder)
    if resume and restored and restored.get("fingerprint") == ctx.fingerprint:
        return restored  # settings changed back: prepare_folder restored the finished result from .previous
    try:
        runner(stage)(ctx)
    except BaseException:
        abandon_folder(ctx.folder)
        raise
    manifest = read_manifest(ctx.folder)
    if not manifest:
        raise RuntimeError(f"stage {stage} finished without writing its manifest")
    finish_folder(ctx.folder)
    return manifest


def run_pipeline(
    recipe: Recipe, *, stages: list[str], force: set[str] | None = None
) -> list[dict[str, Any]]:
    """Run the selected stages; return one row per stage: stage, action (skipped/ran), wall_s, metrics."""
    from midpo_cli.stages.graph import plan
    from midpo_cli.stages.preflight import preflight

    force = force or set()
    summary = []
    with run_lock(recipe.run_dir):
        for row in plan(recipe, stages, force):  # bad data or settings fail now, not after hours of earlier stages
            if row["status"] != "done":
                preflight(recipe, row["stage"])
        manifests: dict[str, dict[str, Any] | None] = {}
        for stage in ALL_STAGES:
            folder = stage_dir(recipe.run_dir, stage)
            current = read_manifest(folder)
            if stage not in stages:
                manifests[stage] = current
                continue
            want = expected_fingerprint(recipe, stage, manifests)
            if stage not in force and current and current.get("fingerprint") == want:
                console.log(f"[dim]⏭  {stage}: done (fingerprint {want}), skipped[/dim]", markup=True)
                manifests[stage] = current
                summary.append({"stage": stage, "action": "skipped", "wall_s": 0.0,
                                "metrics": current.get("metrics", {})})
                continue
            missing = [d for d in dependencies(recipe, stage) if not manifests.get(d)]
            if missing:
                raise InputError(f"stage {stage!r} needs {', '.join(missing)}: include them or run them first")
            console.log(f"[bold cyan]▶ {stage}[/bold cyan]", markup=True)
            t0 = time.time()
            manifests[stage] = run_stage(recipe, stage, resume=stage not in force)
            wall = time.time() - t0
            console.log(f"[green]✔ {stage}[/green] in {wall:.0f}s", markup=True)
            summary.append({"stage": stage, "action": "ran", "wall_s": round(wall, 1),
                            "metrics": manifests[stage].get("metrics", {})})
    return summary
