"""A stage folder's life around a run: the check that refuses to move or clear a folder holding a link or a
user's file (what midpo owns there: `pipeline.owned`), the folder prepared before the stage (a finished result
kept in `.previous/` until the new one is written), finished, or given back its previous result when the run
fails. Preflight runs the link check before a stage starts; `pipeline.run` does the rest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from midpo_cli import console
from midpo_cli.errors import ArtifactCheckError, InputError, Interrupted
from midpo_cli.manifest import read_manifest
from midpo_cli.pipeline.owned import ATTEMPT, FAILED, FINGERPRINT_FILE, PREVIOUS, is_own, link_problem, strays
from midpo_cli.pipeline.status import stage_done

__all__ = ["ATTEMPT", "FINGERPRINT_FILE", "PREVIOUS", "check_folder", "check_links", "pickup", "prepare_folder"]


def check_links(folder: Path) -> None:
    """Refuse a stage folder that is a link or a file, or holds a link anywhere under it (owned.link_problem)."""
    problem = link_problem(folder)
    if problem:
        raise InputError(problem)


def check_stage_folder(folder: Path) -> None:
    """Refuse a stage folder midpo may not move or clear: link_problem, or files midpo did not write in it or in
    its `.previous/` or `.attempt/` (pipeline.owned). Raised before anything in it changes."""
    check_links(folder)
    stray = strays(folder)
    if stray:
        shown = ", ".join(stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
        raise InputError(f"{folder} holds files midpo did not write ({shown}); a re-run would have to clear the "
                         "folder: move them out of the run dir first")


def _clear(folder: Path, *, keep: tuple[str, ...] = (PREVIOUS, ATTEMPT)) -> None:
    """Delete what midpo wrote there (pipeline.owned), never a user's file, never through a link."""
    for child in folder.iterdir():
        if child.name not in keep and is_own(folder, child.name):
            _remove(child)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree midpo wrote; a link is removed itself, its target left alone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_children(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for child in list(src.iterdir()):
        if child.name not in skip:
            os.replace(child, dst / child.name)


def pickup(folder: Path, fingerprint: str) -> str | None:
    """What a resuming run of these settings picks up in `folder` (prepare_folder; `pipeline plan` says it):
    "here" (the folder's own run of these settings: kept as it is), "previous" (a finished result of these
    settings in `.previous/`: restored, not run), "attempt" (an attempt of these settings in `.attempt/` beside a
    finished result: put back in place and resumed), or None (the run starts afresh)."""
    if _marker(folder) == fingerprint:
        return "here"
    if stage_done(folder / PREVIOUS, folder.name, fingerprint) is not None:
        return "previous"
    if _marker(folder / ATTEMPT) == fingerprint and read_manifest(folder) is not None:
        return "attempt"
    return None


def check_folder(folder: Path, fingerprint: str, *, resume: bool) -> None:
    """What `prepare_folder` refuses, checked on its own before a run starts anything: a link (always), and a
    user's file when the folder is to be moved or cleared (every run but the resume of its own checkpoint)."""
    check_links(folder)
    if not (resume and pickup(folder, fingerprint) == "here"):
        check_stage_folder(folder)


def prepare_folder(folder: Path, fingerprint: str, *, resume: bool) -> None:
    """Check the folder, then, resuming, take what `pickup` finds; otherwise start afresh:

    - "here": keep everything (checkpoints, caches);
    - "previous": the finished result of these settings (changed back) is restored as done;
    - "attempt": the attempt of these settings comes back in place to be resumed, the finished result moving
      into `.previous/` as for any re-run;
    - afresh: an attempt of other settings is dropped, a finished result moves into `.previous/` until the new
      one is written, and a partial run of other settings is cleared.
    A folder holding a link is refused always, stray user files when anything is to be moved or cleared.
    """
    check_folder(folder, fingerprint, resume=resume)
    folder.mkdir(parents=True, exist_ok=True)
    found = pickup(folder, fingerprint) if resume else None
    if found == "here":
        return
    backup, attempt = folder / PREVIOUS, folder / ATTEMPT
    if found == "previous":
        _clear(folder)
        _move_children(backup, folder)
        backup.rmdir()
        console.log(f"{folder.name}: restored the finished result of these settings from {backup}")
        return
    if found == "attempt":
        _remove(backup)
        _move_children(folder, backup, skip=(PREVIOUS, ATTEMPT))
        _move_children(attempt, folder)
        attempt.rmdir()
        console.log(f"{folder.name}: resuming the attempt kept in {attempt}; the finished result waits in {backup}")
        return
    _remove(attempt)  # an attempt of other settings
    if read_manifest(folder) is not None:
        _remove(backup)
        _move_children(folder, backup, skip=(PREVIOUS,))
    else:
        _clear(folder)  # a stale partial run of other settings: nothing finished to keep
    tmp = folder / f"{FINGERPRINT_FILE}.tmp"
    tmp.write_text(fingerprint + "\n")
    os.replace(tmp, folder / FINGERPRINT_FILE)


def _marker(folder: Path) -> str | None:
    marker = folder / FINGERPRINT_FILE
    return marker.read_text().strip() if marker.is_file() and not marker.is_symlink() else None


def finish_folder(folder: Path) -> None:
    """The new result is written: the previous one, any failed attempt and the note of an earlier failure are no
    longer needed."""
    _remove(folder / PREVIOUS)
    _remove(folder / ATTEMPT)
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
    """A failed run gives the stage its previous finished result back: with nothing to resume from, in place of
    the run; with a checkpoint, the attempt moves into `.attempt/` (`keep_finished`), which a resuming run of
    its settings picks up. An interrupted run with a checkpoint stays in place to be resumed."""
    backup = folder / PREVIOUS
    if read_manifest(folder) is not None or read_manifest(backup) is None:
        return
    resumable = (folder / "checkpoints" / "latest").exists()
    if resumable and isinstance(error, Exception) and not isinstance(error, Interrupted):
        keep_finished(folder, error)
        return
    if resumable:
        console.warn(f"{folder.name}: the previous finished result is kept in {backup} while the new run "
                     "can be resumed (pipeline run resumes on its own, a stage command with --resume)")
        return
    _clear(folder)
    _move_children(backup, folder)
    backup.rmdir()


def keep_finished(folder: Path, error: BaseException) -> None:
    """The new run failed after its first checkpoint (its artifact failed the post-save check, or an error found
    after training): the finished result goes back in place (status `done` for its settings, its artifact
    usable), and the attempt (fingerprint marker, checkpoints, the error's one line in `.failed`) moves into
    `.attempt/`, which `--resume` with its settings picks up.

    Why not keep the attempt in place, as after an interrupt: a failure says the attempt cannot be trusted as it
    is, and it would hide a good result behind it (status `started`, `generate` unable to find the adapter).
    """
    attempt, backup = folder / ATTEMPT, folder / PREVIOUS
    _remove(attempt)
    _move_children(folder, attempt, skip=(PREVIOUS, ATTEMPT))
    line = " ".join(str(error).split()) or type(error).__name__
    (attempt / FAILED).write_text(f"{type(error).__name__}: {line}\n", encoding="utf-8")
    _move_children(backup, folder)
    backup.rmdir()
    what = "the new artifact failed its check" if isinstance(error, ArtifactCheckError) else "the new run failed"
    console.warn(f"{folder.name}: {what}, so the previous finished result stays in {folder}; the attempt is kept "
                 f"in {attempt} (a resuming run of its settings picks up its checkpoint)")
