"""What midpo owns in a stage folder: the only names it ever deletes there, and the check that refuses to clear a
folder that is a symlink or holds a user's file. Apart from `context` so that preflight can run the check before
a stage starts without importing the context that runs it.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from midpo_cli.errors import InputError
from midpo_cli.pipeline.changes import SETTINGS_FILE
from midpo_cli.pipeline.status import FAILED

FINGERPRINT_FILE = ".fingerprint"
PREVIOUS = ".previous"  # the last finished result, kept while a changed stage re-runs
ATTEMPT = ".attempt"  # a run whose artifact failed its post-save check, set aside for --resume (keep_finished)
# Every name a stage writes into its folder (stages/, engine/, report.py), and the temp names of io.py: the only
# names midpo ever deletes there. Anything else is a user's file: refused, never removed (issue 27).
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
