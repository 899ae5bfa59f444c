"""What every stage receives: the recipe, its folder, its inputs' manifests, and its fingerprint.

Standalone commands and the pipeline build the same context (midpo_cli.pipeline.run.make_context), so
`midpo train-rm` and `midpo pipeline run` go through one code path. Preparing the folder is the pipeline's
job; a stage only reads its context. No torch here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError
from midpo_cli.manifest import StageRecord
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
