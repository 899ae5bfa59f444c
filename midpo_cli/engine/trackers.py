"""Experiment trackers beside metrics.jsonl: TensorBoard, Weights & Biases, MLflow (`logging.report_to`).

The same switch TRL and transformers users know (`report_to: [tensorboard, wandb, mlflow]`); each tracker
is an optional extra (`pip install 'midpo-cli[wandb]'`), checked when the recipe is validated, so a
missing package is a recipe error before any model loads. Every tracker receives exactly the numbers
written to metrics.jsonl, under `<split>/<name>` (`train/loss`, `eval/rewards/accuracies`), at the
optimizer step. Project and experiment names come from the trackers' own settings (WANDB_PROJECT,
WANDB_MODE=offline, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME), defaulting to `midpo`; each stage is
one tracker run named `<run_dir>/<stage>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from midpo_cli.recipe import TRACKERS


class TensorBoard:
    def __init__(self, out_dir: Path, run_name: str, stage: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.stage = SummaryWriter(log_dir=str(out_dir / "tensorboard")), stage

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{self.stage}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, out_dir: Path, run_name: str, stage: str) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "midpo"), name=run_name, dir=str(out_dir),
                              group=str(Path(run_name).parent), job_type=stage, reinit=True)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Mlflow:
    def __init__(self, out_dir: Path, run_name: str, stage: str) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "midpo"))
        self.run = mlflow.start_run(run_name=run_name, tags={"midpo.stage": stage})

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_trackers(names: list[str], out_dir: Path, stage: str) -> list[Any]:
    """One tracker per name, in TRACKERS order; the run is named `<run_dir name>/<stage>`."""
    run_name = f"{out_dir.resolve().parent.name}/{stage}"
    kinds = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": Mlflow}
    return [kinds[name](out_dir, run_name, stage) for name in TRACKERS if name in names]
