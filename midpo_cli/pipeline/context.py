"""What every stage receives: the recipe, its folder, its inputs' manifests, and its fingerprint.

Standalone commands and the pipeline build the same context, so `midpo train-rm` and
`midpo pipeline run` go through one code path. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_json
from midpo_cli.manifest import StageRecord, read_manifest, stage_dir
from midpo_cli.pipeline.changes import SETTINGS_FILE
from midpo_cli.pipeline.folders import ATTEMPT, FINGERPRINT_FILE, PREVIOUS, check_stage_folder, is_own
from midpo_cli.pipeline.graph import dependencies, stage_config, stage_plans
from midpo_cli.pipeline.status import FAILED
from midpo_cli.recipe import Recipe


@dataclass
class StageContext:
    recipe: Recipe
    stage: str
    folder: Path
    inputs: dict[str, dict[str, Any]]
    fingerprint: str
    resume: bool = True
    started: float = field(default_factory=time.time)  # when the stage began: the manifest's wall_s

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.run_dir)

    def input_path(self, stage: str, key: str) -> Path:
        """An upstream artifact path; manifests store them relative to the run dir."""
        manifest = self.inputs.get(stage)
        if manifest is None or key not in manifest.get("outputs", {}):
            raise InputError(
                f"stage {self.stage!r} needs {stage}'s {key!r} but {self.run_dir / stage} has none; "
                f"run that stage first (midpo pipeline run --until {stage})"
            )
        value = Path(manifest["outputs"][key])
        return value if value.is_absolute() else self.run_dir / value

    def rel(self, path: Path) -> str:
        """Store outputs relative to the run dir so a run folder can be moved."""
        try:
            return str(Path(path).resolve().relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(path)

    def record(self) -> StageRecord:
        return StageRecord(
            stage=self.stage,
            fingerprint=self.fingerprint,
            inputs={k: (v or {}).get("fingerprint") for k, v in self.inputs.items()},
            started=self.started,
        )


def upstream_manifests(recipe: Recipe, stage: str) -> dict[str, dict[str, Any]]:
    """Manifests of the stage's dependencies, read from the run dir (transitively fingerprinted)."""
    return {
        dep: m for dep in dependencies(recipe, stage) if (m := read_manifest(stage_dir(recipe.run_dir, dep)))
    }


def make_context(recipe: Recipe, stage: str, *, resume: bool = True, fingerprint: str | None = None) -> StageContext:
    """Validate everything that can be checked without a model, then prepare the stage folder.

    `fingerprint` is the one the pipeline's plan computed; a standalone stage command plans this stage alone.
    Nothing in the folder changes until every check passed. A changed fingerprint (or a forced run)
    moves a finished result into `<stage>/.previous/` (see `prepare_folder`), never deletes it first.
    """
    from midpo_cli.pipeline.preflight import preflight

    started = time.time()
    inputs = upstream_manifests(recipe, stage)
    missing = [d for d in dependencies(recipe, stage) if d not in inputs]
    if missing:
        raise InputError(
            f"stage {stage!r} needs {', '.join(missing)} in {recipe.run_dir}; run "
            f"`midpo pipeline run RECIPE --until {stage}` (or set stages.<name>.use for score models)"
        )
    preflight(recipe, stage)
    if fingerprint is None:  # a stage command: the pipeline said what re-runs before it started
        step = stage_plans(recipe, [stage])[0]
        warn_reruns([step])
        fingerprint = step.fingerprint
    folder = stage_dir(recipe.run_dir, stage)
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


def _clear(folder: Path, *, keep: tuple[str, ...] = (PREVIOUS, ATTEMPT)) -> None:
    """Delete what midpo wrote there (OWN_NAMES), never a user's file, never through a symlink."""
    for child in folder.iterdir():
        if child.name in keep or not is_own(child.name):
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _move_children(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for child in list(src.iterdir()):
        if child.name not in skip:
            os.replace(child, dst / child.name)


def prepare_folder(folder: Path, fingerprint: str, *, resume: bool) -> None:
    """Same fingerprint and resume: keep everything (checkpoints, caches). Otherwise start afresh, but:

    - a finished result (manifest present) moves into `.previous/` until the new one is written;
    - a `.previous/` whose fingerprint is the one wanted (settings changed back) is restored as done;
    - an `.attempt/` of the settings wanted (its artifact failed the post-save check) comes back in place to be
      resumed, the finished result moving into `.previous/` as for any re-run; of other settings it is dropped.
    A symlinked folder is refused always; stray user files when the folder is to be cleared or moved.
    """
    if folder.is_symlink():
        check_stage_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / FINGERPRINT_FILE
    current = marker.read_text().strip() if marker.is_file() else None
    if current == fingerprint and resume:
        return
    check_stage_folder(folder)
    backup = folder / PREVIOUS
    kept = read_manifest(backup)
    if resume and kept and kept.get("fingerprint") == fingerprint:
        _clear(folder)
        _move_children(backup, folder)
        backup.rmdir()
        console.log(f"{folder.name}: restored the finished result of these settings from {backup}")
        return
    attempt = folder / ATTEMPT
    if resume and _marker(attempt) == fingerprint and read_manifest(folder) is not None:
        shutil.rmtree(backup, ignore_errors=True)
        _move_children(folder, backup, skip=(PREVIOUS, ATTEMPT))
        _move_children(attempt, folder)
        attempt.rmdir()
        console.log(f"{folder.name}: resuming the attempt kept in {attempt}; the finished result waits in {backup}")
        return
    shutil.rmtree(attempt, ignore_errors=True)  # an attempt of other settings
    if read_manifest(folder) is not None:
        shutil.rmtree(backup, ignore_errors=True)
        _move_children(folder, backup, skip=(PREVIOUS,))
    else:
        _clear(folder)  # a stale partial run of other settings: nothing finished to keep
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(fingerprint + "\n")
    os.replace(tmp, marker)


def _marker(folder: Path) -> str | None:
    marker = folder / FINGERPRINT_FILE
    return marker.read_text().strip() if marker.is_file() else None


def finish_folder(folder: Path) -> None:
    """The new result is written: the previous one, any failed attempt and the note of an earlier failure are no
    longer needed."""
    shutil.rmtree(folder / PREVIOUS, ignore_errors=True)
    shutil.rmtree(folder / ATTEMPT, ignore_errors=True)
    (folder / FAILED).unlink(missing_ok=True)


def note_failure(folder: Path, exc: BaseException) -> None:
    """Keep the failure's one line where `pipeline status` shows it (best effort: never masks the error)."""
    from midpo_cli.errors import Interrupted
    from midpo_cli.io import atomic_write_text

    if not isinstance(exc, Exception) or isinstance(exc, Interrupted) or read_manifest(folder) is not None:
        return  # interrupted (status shows the checkpoint), or the previous result is back: nothing to explain
    line = " ".join(str(exc).split()) or type(exc).__name__
    with contextlib.suppress(OSError):
        atomic_write_text(folder / FAILED, f"{type(exc).__name__}: {line}\n")


def abandon_folder(folder: Path, *, error: BaseException | None = None) -> None:
    """A failed run with nothing to resume from gives the stage its previous finished result back; so does a
    run whose artifact failed its post-save check (`keep_finished`), which may hold a checkpoint."""
    from midpo_cli.errors import ArtifactCheckError

    backup = folder / PREVIOUS
    if read_manifest(folder) is not None or read_manifest(backup) is None:
        return
    if isinstance(error, ArtifactCheckError):
        keep_finished(folder, error)
        return
    if (folder / "checkpoints" / "latest").exists():
        console.warn(f"{folder.name}: the previous finished result is kept in {backup} while the new run "
                     "can be resumed (pipeline run resumes on its own, a stage command with --resume)")
        return
    _clear(folder)
    _move_children(backup, folder)
    backup.rmdir()


def keep_finished(folder: Path, error: BaseException) -> None:
    """The new run trained to the end but its artifact failed the post-save check: the finished result goes
    back in place (status `done` for its settings, its artifact usable), and the attempt (fingerprint marker,
    checkpoints, the error's one line in `.failed`) moves into `.attempt/`, which `--resume` with its settings
    picks up.

    Why not keep the attempt in place, as after an interrupt: a check that fails says the attempt's artifact
    cannot be trusted, and it would hide a good one behind it (issue 27: status `started`, `generate` could not
    find the adapter, `--resume` failed the same way).
    """
    attempt, backup = folder / ATTEMPT, folder / PREVIOUS
    shutil.rmtree(attempt, ignore_errors=True)
    _move_children(folder, attempt, skip=(PREVIOUS, ATTEMPT))
    line = " ".join(str(error).split()) or type(error).__name__
    (attempt / FAILED).write_text(f"{type(error).__name__}: {line}\n", encoding="utf-8")
    _move_children(backup, folder)
    backup.rmdir()
    console.warn(f"{folder.name}: the new artifact failed its check, so the previous finished result stays in "
                 f"{folder}; the attempt is kept in {attempt} (--resume with its settings retries the save)")
