"""Each stage's state and *why*, from its folder alone, and the one test of "done" that `pipeline run`,
`pipeline plan`, `pipeline status` and every stage command share (`stage_done`); no torch.

A stage is done when its manifest is present, readable and a JSON object, and every artifact it names inside the
run dir is present and readable; done *for a recipe* when, besides, it carries the fingerprint the recipe asks
for. Plan and run used to read the manifest alone, so a stage whose adapter was deleted was skipped as done
while status called it incomplete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from midpo_cli.manifest import MANIFEST, read_checked
from midpo_cli.pipeline.owned import FAILED, link_problem

__all__ = ["FAILED", "folder_state", "missing_output", "stage_done", "stage_state", "unusable"]


def stage_state(run_dir: Path, stage: str) -> dict[str, Any]:
    """`folder_state` of `<run_dir>/<stage>`."""
    return folder_state(Path(run_dir) / stage, stage)


def stage_done(folder: Path, stage: str, fingerprint: str) -> dict[str, Any] | None:
    """The manifest of the finished result in `folder` when it is done (folder_state) for these settings."""
    found = folder_state(folder, stage)
    manifest = found["manifest"]
    return manifest if found["state"] == "done" and manifest.get("fingerprint") == fingerprint else None


def folder_state(folder: Path, stage: str) -> dict[str, Any]:
    """{"state": not run | done | incomplete | corrupt | failed | started | refused, "why": one line, "manifest"}
    of the stage folder `folder` (or its `.previous/`): "manifest" is set only when the stage is done."""
    problem = link_problem(folder)
    if problem:
        return _row("refused", problem)
    if not folder.exists():
        return _row("not run", "")
    manifest, problem = read_checked(folder / MANIFEST)
    if problem:
        return _row("corrupt", problem)
    if manifest is not None:
        missing = missing_output(folder, stage, manifest)
        if missing:
            return _row("incomplete", f"{missing}; rerun the stage")
        return _row("done", "", manifest)
    failed = folder / FAILED
    if failed.is_file():
        return _row("failed", failed.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0][:300])
    latest = folder / "checkpoints" / "latest"
    if latest.is_file():
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()
        return _row("started", f"stopped at checkpoint {tag}; the same command resumes it")
    return _row("started", "no manifest yet: running now, or stopped before its first checkpoint")


def unusable(stage: str, found: dict[str, Any]) -> str:
    """How a stage that is needed and not done is named: `rank`, or `rank (corrupt: why)`."""
    return stage if found["state"] == "not run" else f"{stage} ({found['state']}: {found['why']})"


def _row(state: str, why: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"state": state, "why": why, "manifest": manifest}


def missing_output(folder: Path, stage: str, manifest: dict[str, Any]) -> str | None:
    """The first artifact of the stage's own that its manifest names and that is gone or unreadable ("missing
    model: sft/model"). Its own are stored relative to the run dir (`<stage>/...`) and found here under `folder`,
    so a `.previous/` is judged by what it holds; the other outputs name what the stage used (a hub name, the
    SFT model an adapter sits on), not what it wrote."""
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return None
    for key, value in outputs.items():
        if not isinstance(value, str) or not value.startswith(f"{stage}/"):
            continue
        path = folder / value.removeprefix(f"{stage}/")
        if not path.exists():
            return f"missing {key}: {value}"
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            return f"unreadable {key}: {value}"
    return None
