"""A stage folder: what midpo owns there (the only names it ever deletes), the check that refuses to clear a
folder that is a symlink or holds a user's file, and the folder's life around a run — prepared before the stage
(a finished result kept in `.previous/` until the new one is written), finished, or given back its previous
result when the run fails. Preflight runs the check before a stage starts; `pipeline.run` does the rest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from pathlib import Path

from midpo_cli import console
from midpo_cli.errors import ArtifactCheckError, InputError, Interrupted
from midpo_cli.manifest import read_manifest
from midpo_cli.pipeline.changes import SETTINGS_FILE
from midpo_cli.pipeline.status import FAILED

FINGERPRINT_FILE = ".fingerprint"
PREVIOUS = ".previous"  # the last finished result, kept while a changed stage re-runs
ATTEMPT = ".attempt"  # a run whose artifact failed its post-save check, set aside for --resume (keep_finished)
# Every name a stage writes into its folder (stages/, engine/, the report's renderers), and the temp names of
# io.py: the only names midpo ever deletes there. Anything else is a user's file: refused, never removed.
OWN_NAMES = (
    "manifest.json", "config.yaml", FINGERPRINT_FILE, PREVIOUS, "model", "adapter", "checkpoints", "metrics.jsonl",
    "tensorboard", "margins.json", "ref-logps-*.json", "scored.jsonl", "dual.jsonl", "audit.json", "answers.jsonl",
    "gate_maps.json", "scores.csv", "summary.json", "report.html", "*.png", ".*.tmp", ".*.old", FAILED,
    ATTEMPT, SETTINGS_FILE, "switch", "dev_select", "adapters",
)


def is_own(name: str) -> bool:
    """A name midpo writes into a stage folder (OWN_NAMES)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_NAMES)


def check_stage_folder(folder: Path) -> None:
    """Refuse a stage folder midpo may not clear: a symlink (it would clear the folder it points to, outside the
    run dir) or one holding files midpo did not write. Raised before anything in it changes."""
    if folder.is_symlink():
        raise InputError(f"{folder} is a symbolic link (to {os.readlink(folder)}); midpo writes a stage only into a "
                         "real folder inside the run dir: remove the link (its target is left alone)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a stage folder; move it out of the run dir")
    if not folder.is_dir():
        return
    stray = sorted(child.name for child in folder.iterdir() if not is_own(child.name))
    if stray:
        shown = ", ".join(stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
        raise InputError(f"{folder} holds files midpo did not write ({shown}); a re-run would have to clear the "
                         "folder: move them out of the run dir first")


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
    from midpo_cli.io import atomic_write_text

    if not isinstance(exc, Exception) or isinstance(exc, Interrupted) or read_manifest(folder) is not None:
        return  # interrupted (status shows the checkpoint), or the previous result is back: nothing to explain
    line = " ".join(str(exc).split()) or type(exc).__name__
    with contextlib.suppress(OSError):
        atomic_write_text(folder / FAILED, f"{type(exc).__name__}: {line}\n")


def abandon_folder(folder: Path, *, error: BaseException | None = None) -> None:
    """A failed run with nothing to resume from gives the stage its previous finished result back; so does a
    run whose artifact failed its post-save check (`keep_finished`), which may hold a checkpoint."""
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
    cannot be trusted, and it would hide a good one behind it (status `started`, `generate` unable to find the
    adapter, `--resume` failing the same way).
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
