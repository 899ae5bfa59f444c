"""Run stages: `midpo pipeline run` (every selected stage in dependency order, skipping what is done, under
a run-dir lock) and each stage command (`run_stage`, one stage, the same code path).

Here the pipeline prepares what a stage receives (`make_context`: the checks, the folder, the
`StageContext` of midpo_cli.stages.kit) and calls the stage. This module imports each stage's module only when
that stage runs (`runner`), so planning, locking and `midpo --help` never import torch; no stage imports
`midpo_cli.pipeline`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError, Interrupted
from midpo_cli.io import atomic_write_json, try_read_json
from midpo_cli.manifest import stage_dir
from midpo_cli.pipeline.changes import SETTINGS_FILE
from midpo_cli.pipeline.folders import (
    PREVIOUS,
    abandon_folder,
    check_folder,
    finish_folder,
    note_failure,
    prepare_folder,
)
from midpo_cli.pipeline.graph import dependencies, stage_config, stage_plans
from midpo_cli.pipeline.owned import recording
from midpo_cli.pipeline.status import folder_state, stage_done, unusable
from midpo_cli.recipe import Recipe
from midpo_cli.stages.kit.context import StageContext

LOCK = ".midpo.lock"


def runner(stage: str) -> Callable[[StageContext], None]:
    """The function that runs `stage`; its module, and torch with it, is imported only now."""
    match stage:
        case "sft":
            from midpo_cli.stages.sft import run
        case "reward_model":
            from midpo_cli.stages.score_models import run_reward_model as run
        case "cost_model":
            from midpo_cli.stages.score_models import run_cost_model as run
        case "safety_expert":
            from midpo_cli.stages.expert import run_safety_expert as run
        case "helpfulness_expert":
            from midpo_cli.stages.expert import run_helpfulness_expert as run
        case "dpo_expert":
            from midpo_cli.stages.expert import run_dpo_expert as run
        case "baseline_dpo_helpful" | "baseline_dpo_safe" | "baseline_modpo" | "baseline_safedpo":
            from midpo_cli.stages.expert import run_baseline as run
        case "baseline_ties":
            from midpo_cli.stages.merge import run
        case "rank":
            from midpo_cli.stages.rank import run
        case "router":
            from midpo_cli.stages.router import run
        case "generate":
            from midpo_cli.stages.generate import run
        case "score":
            from midpo_cli.stages.score import run
        case _:
            raise KeyError(stage)
    return run


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
    from midpo_cli.pipeline.preflight import check_run_dir

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
            other = try_read_json(path)
            other = other if isinstance(other, dict) else {}
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


def upstream_manifests(recipe: Recipe, stage: str) -> dict[str, dict[str, Any]]:
    """Manifests of the stage's dependencies that are done (`folder_state`), read from the run dir (transitively
    fingerprinted)."""
    return {dep: m for dep in dependencies(recipe, stage)
            if (m := folder_state(stage_dir(recipe.run_dir, dep), dep)["manifest"]) is not None}


def make_context(recipe: Recipe, stage: str, *, resume: bool = True, fingerprint: str | None = None) -> StageContext:
    """Validate everything that can be checked without a model, then prepare the stage folder.

    `fingerprint` is the one the pipeline's plan computed; a standalone stage command plans this stage alone.
    Nothing in the folder changes until every check passed. A changed fingerprint (or a forced run)
    moves a finished result into `<stage>/.previous/` (see `prepare_folder`), never deletes it first.
    """
    from midpo_cli.pipeline.preflight import preflight

    started = time.time()
    inputs = upstream_manifests(recipe, stage)
    missing = [unusable(d, folder_state(stage_dir(recipe.run_dir, d), d))
               for d in dependencies(recipe, stage) if d not in inputs]
    if missing:
        raise InputError(
            f"stage {stage!r} needs {', '.join(missing)} in {recipe.run_dir}; run "
            f"`midpo pipeline run RECIPE --until {stage}` (or set stages.<name>.use for score models)"
        )
    preflight(recipe, stage)
    folder = stage_dir(recipe.run_dir, stage)
    if fingerprint is None:  # a stage command: the pipeline said what re-runs before it started
        step = stage_plans(recipe, [stage])[0]
        check_folder(folder, step.fingerprint, resume=resume)
        warn_reruns([step])
        fingerprint = step.fingerprint
    prepare_folder(folder, fingerprint, resume=resume)
    atomic_write_json(folder / SETTINGS_FILE, stage_config(recipe, stage))  # names changed keys next time
    return StageContext(recipe=recipe, stage=stage, folder=folder, inputs=inputs, fingerprint=fingerprint,
                        resume=resume, started=started)


def warn_reruns(plans) -> None:
    """Before anything moves: each finished result that other settings will replace, with the keys that
    differ, and where the old result waits (`<stage>/.previous/`) until the new one is written."""
    reruns = [p for p in plans if p.manifest and p.status == "will run"]
    for p in reruns:
        console.warn(f"{p.stage}: re-runs over its finished result ({p.why}); the old result moves to "
                     f"{p.stage}/{PREVIOUS}/ until the new one is written")
    if len(reruns) > 1:
        console.warn(f"re-running {len(reruns)} finished stages: {', '.join(p.stage for p in reruns)}")


def run_stage(recipe: Recipe, stage: str, *, resume: bool, fingerprint: str | None = None) -> dict[str, Any]:
    """Check, prepare and run one stage (the caller holds the lock); returns its manifest.

    Every name the stage writes in its folder is recorded there (pipeline.owned), so a later re-run clears
    exactly those. A failure gives the stage folder its previous finished result back (pipeline/folders.py);
    success drops that backup.
    """
    ctx = make_context(recipe, stage, resume=resume, fingerprint=fingerprint)
    restored = stage_done(ctx.folder, stage, ctx.fingerprint)
    if resume and restored is not None:
        return restored  # settings changed back: prepare_folder restored the finished result from .previous
    try:
        with recording(ctx.folder):
            runner(stage)(ctx)
    except BaseException as exc:
        abandon_folder(ctx.folder, error=exc)
        note_failure(ctx.folder, exc)
        raise
    manifest = stage_done(ctx.folder, stage, ctx.fingerprint)
    if manifest is None:
        found = folder_state(ctx.folder, stage)
        raise RuntimeError(f"stage {stage} finished, but its folder is not done: {found['state']} {found['why']}")
    finish_folder(ctx.folder)
    return manifest


def run_pipeline(
    recipe: Recipe, *, stages: list[str], force: set[str] | None = None
) -> list[dict[str, Any]]:
    """Run the selected stages; return one row per stage: stage, action (skipped/ran), wall_s, metrics."""
    from midpo_cli.pipeline.preflight import problems_error, run_problems

    force = force or set()
    summary = []
    with run_lock(recipe.run_dir):
        plans = stage_plans(recipe, stages, force)
        if any(step.status != "done" for step in plans):  # before any tensor op starts the intra-op threads
            from midpo_cli.engine.subnormals import flush_subnormals

            flush_subnormals()
        # every file, folder and model of every stage that will run, before the first one starts
        problems = run_problems(recipe, [step.stage for step in plans if step.status != "done"])
        if problems:
            raise problems_error(problems)
        for step in plans:
            if step.status != "done":
                check_folder(stage_dir(recipe.run_dir, step.stage), step.fingerprint, resume=step.stage not in force)
        warn_reruns(plans)
        for step in plans:
            stage = step.stage
            if step.status == "done":
                console.log(f"[dim]⏭  {stage}: done (fingerprint {step.fingerprint}), skipped[/dim]", markup=True)
                summary.append({"stage": stage, "action": "skipped", "wall_s": 0.0,
                                "metrics": step.manifest.get("metrics", {})})
                continue
            if step.missing:
                raise InputError(f"stage {stage!r} needs {', '.join(step.missing)}: include them or run them first")
            console.log(f"[bold cyan]▶ {stage}[/bold cyan]", markup=True)
            t0 = time.time()
            try:
                manifest = run_stage(recipe, stage, resume=stage not in force, fingerprint=step.fingerprint)
            except Interrupted as exc:
                raise exc.continue_with("rerun the same command to continue from it (pipeline run resumes on "
                                        "its own)") from None
            wall = time.time() - t0
            console.log(f"[green]✔ {stage}[/green] in {wall:.0f}s", markup=True)
            summary.append({"stage": stage, "action": "ran", "wall_s": round(wall, 1),
                            "metrics": manifest.get("metrics", {})})
    return summary
