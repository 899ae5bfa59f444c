"""What every stage receives: the recipe, its folder, its inputs' manifests, and its fingerprint.

Standalone commands and the pipeline build the same context, so `midpo train-rm` and
`midpo pipeline run` go through one code path. No torch here.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError
from midpo_cli.manifest import StageRecord, read_manifest, stage_dir
from midpo_cli.recipe import Recipe
from midpo_cli.stages.graph import dependencies, expected_fingerprint

FINGERPRINT_FILE = ".fingerprint"


@dataclass
class StageContext:
    recipe: Recipe
    stage: str
    folder: Path
    inputs: dict[str, dict[str, Any]]
    fingerprint: str
    resume: bool = True
    debug_hooks: dict[str, Any] = field(default_factory=dict)

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
        )


def upstream_manifests(recipe: Recipe, stage: str) -> dict[str, dict[str, Any]]:
    """Manifests of the stage's dependencies, read from the run dir (transitively fingerprinted)."""
    return {
        dep: m for dep in dependencies(recipe, stage) if (m := read_manifest(stage_dir(recipe.run_dir, dep)))
    }


def make_context(recipe: Recipe, stage: str, *, resume: bool = True) -> StageContext:
    """Prepare the stage folder: a changed fingerprint discards stale checkpoints and caches."""
    inputs = upstream_manifests(recipe, stage)
    missing = [d for d in dependencies(recipe, stage) if d not in inputs]
    if missing:
        raise InputError(
            f"stage {stage!r} needs {', '.join(missing)} in {recipe.run_dir}; run "
            f"`midpo pipeline run RECIPE --until {stage}` (or set stages.<name>.use for score models)"
        )
    fingerprint = expected_fingerprint(recipe, stage, inputs)
    folder = stage_dir(recipe.run_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / FINGERPRINT_FILE
    previous = marker.read_text().strip() if marker.exists() else None
    if previous != fingerprint or not resume:
        for child in folder.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(fingerprint + "\n")
        os.replace(tmp, marker)
    return StageContext(recipe=recipe, stage=stage, folder=folder, inputs=inputs, fingerprint=fingerprint,
                        resume=resume)
