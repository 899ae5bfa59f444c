"""What midpo owns in a stage folder, the only names it ever deletes or moves there, and the links it refuses.

A name is midpo's when it is one of the exact names the stages and the pipeline write (`STAGE_NAMES`), or a name
recorded in the folder's `.written.json`: after each run of a stage the pipeline adds every top-level name that
appeared while the stage ran (it holds the run-dir lock, so they are its own). Nothing is matched by pattern: a
user's `my-figure.png` in `score/` or `notes.json` in `sft/` is no name of midpo's, so it is refused, never
deleted. `.previous/` and `.attempt/` hold a stage folder's former content and carry its record with them.

A symbolic link anywhere under a stage folder (the folder itself, `.previous/`, `.attempt/`, `checkpoints/` or
deeper) is refused before anything moves: moving or clearing through it wrote into, and deleted from, the
folder it points to. No torch here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from midpo_cli.io import atomic_write_json, try_read_json
from midpo_cli.pipeline.changes import SETTINGS_FILE

FINGERPRINT_FILE = ".fingerprint"  # which settings the folder's checkpoints belong to
PREVIOUS = ".previous"  # the last finished result, kept while a changed stage re-runs
ATTEMPT = ".attempt"  # a run that failed after its first checkpoint, set aside for --resume (keep_finished)
FAILED = ".failed"  # the one error line of a stage's last failed run (pipeline.run.run_stage writes it)
RECORD = ".written.json"  # the other names a run of midpo wrote here (record_written)
# Every exact name a stage writes into its folder (stages/, engine/, the report's renderers in
# evaluation/report_html.py, the launcher's resolved.yaml) and the pipeline's own files.
STAGE_NAMES = frozenset({
    "manifest.json", "config.yaml", "resolved.yaml", FINGERPRINT_FILE, PREVIOUS, ATTEMPT, FAILED, SETTINGS_FILE,
    RECORD, "model", "adapter", "adapters", "switch", "dev_select", "checkpoints", "metrics.jsonl", "tensorboard",
    "margins.json", "scored.jsonl", "dual.jsonl", "audit.json", "answers.jsonl", "gate_maps.json", "scores.csv",
    "summary.json", "report.html", "tradeoff.png", "distributions.png", "gates.png", "gate_map_harmful.png",
    "gate_map_benign.png", "gate_map_trap.png",
})


def recorded(folder: Path) -> set[str]:
    """The names `.written.json` in `folder` records (none when it is missing or unreadable)."""
    names = (try_read_json(folder / RECORD) or {}) if not (folder / RECORD).is_symlink() else {}
    listed = names.get("names") if isinstance(names, dict) else None
    return {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()


def is_own(folder: Path, name: str) -> bool:
    """`name` in `folder` was written by midpo: an exact stage name, or one recorded there."""
    return name in STAGE_NAMES or name in recorded(folder)


def names(folder: Path) -> set[str]:
    """The top-level names in `folder` now (none when it is not a folder)."""
    return {child.name for child in folder.iterdir()} if folder.is_dir() and not folder.is_symlink() else set()


def record_written(folder: Path, before: set[str]) -> None:
    """Add to the folder's record every name that is there now and was not `before` the stage ran. Best effort:
    a name left unrecorded (a full disk, a killed process) is refused later as a user's, never deleted."""
    new = names(folder) - before - STAGE_NAMES
    if not new:
        return
    with contextlib.suppress(OSError):
        atomic_write_json(folder / RECORD, {"names": sorted(recorded(folder) | new)})


@contextlib.contextmanager
def recording(folder: Path) -> Iterator[None]:
    """Record the names written in `folder` while the block runs, whether it ends well or raises."""
    before = names(folder)
    try:
        yield
    finally:
        record_written(folder, before)


def first_link(folder: Path) -> Path | None:
    """The first symbolic link at or under `folder` (never followed), or None."""
    if folder.is_symlink():
        return folder
    for top, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(top, name)):
                return Path(top, name)
    return None


def link_problem(folder: Path) -> str | None:
    """Why midpo may not write a stage into `folder`: it is a link, a file, or holds a link anywhere under it."""
    link = first_link(folder)
    if link == folder:
        return (f"{folder} is a symbolic link (to {os.readlink(folder)}); midpo writes a stage only into a real "
                "folder inside the run dir: remove the link (its target is left alone)")
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a stage folder; move it out of the run dir"
    if link is not None:
        return (f"{link} is a symbolic link (to {os.readlink(link)}) inside the stage folder {folder}; midpo never "
                "moves or clears anything through a link: remove it (its target is left alone)")
    return None


def strays(folder: Path) -> list[str]:
    """Names in `folder` and in its `.previous/` and `.attempt/` that midpo did not write, as paths under
    `folder`: clearing or moving the folder would take them with it."""
    out = [child for child in sorted(names(folder)) if not is_own(folder, child)]
    for kept in (PREVIOUS, ATTEMPT):
        out += [f"{kept}/{child}" for child in sorted(names(folder / kept)) if not is_own(folder / kept, child)]
    return out
