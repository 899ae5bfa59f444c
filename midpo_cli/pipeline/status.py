"""`midpo pipeline status`: each stage's state and *why*, from its folder alone; no torch.

A failed stage used to show `started` with no reason, a corrupt manifest the same, a stage whose artifact
folder was deleted `done`, and a manifest holding a JSON list crashed status and plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midpo_cli.manifest import MANIFEST, read_checked

FAILED = ".failed"  # the one error line of a stage's last failed run (pipeline.run.run_stage writes it)


def stage_state(run_dir: Path, stage: str) -> dict[str, Any]:
    """{"state": not run | done | incomplete | corrupt | failed | started | refused, "why": one line, "manifest"}."""
    folder = run_dir / stage
    if folder.is_symlink():
        return _row("refused", f"{folder} is a symbolic link; midpo will not write through it")
    if not folder.exists():
        return _row("not run", "")
    manifest, problem = read_checked(folder / MANIFEST)
    if problem:
        return _row("corrupt", problem)
    if manifest is not None:
        missing = missing_outputs(run_dir, stage, manifest)
        if missing:
            return _row("incomplete", f"missing {missing}; rerun the stage", manifest)
        return _row("done", "", manifest)
    failed = folder / FAILED
    if failed.is_file():
        return _row("failed", failed.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0][:300])
    latest = folder / "checkpoints" / "latest"
    if latest.is_file():
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()
        return _row("started", f"stopped at checkpoint {tag}; the same command resumes it")
    return _row("started", "no manifest yet: running now, or stopped before its first checkpoint")


def _row(state: str, why: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"state": state, "why": why, "manifest": manifest}


def missing_outputs(run_dir: Path, stage: str, manifest: dict[str, Any]) -> str | None:
    """The first artifact the manifest names inside the run dir that is gone ("model: sft/model")."""
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return None
    for key, value in outputs.items():
        if not isinstance(value, str):
            continue
        path = Path(value)
        if not (path.is_absolute() or value.startswith(f"{stage}/")):
            continue  # a hub name or embedded: model the stage used as is
        if not (path if path.is_absolute() else run_dir / path).exists():
            return f"{key}: {value}"
    return None
