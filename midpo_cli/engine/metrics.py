"""Where training numbers go: `<stage>/metrics.jsonl`, the trackers of `logging.report_to` (TensorBoard,
W&B, MLflow: engine/trackers.py), and the progress of training on rank 0.

metrics.jsonl holds one JSON object per logged step: `{"split": "train", "step", "epoch", "lr", "loss",
...stage metrics, "samples_per_s", "tokens_per_s"}`; evaluations are `{"split": "eval", "step", "epoch",
"loss", ...}`. On resume, lines past the checkpoint's step are dropped (the resumed run logs them again),
so a step never appears twice.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.io import jsonl_rows


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsSink:
    """Appends to metrics.jsonl (and TensorBoard); every method is a no-op off rank 0."""

    def __init__(self, out_dir: Path, *, enabled: bool, stage_name: str, tensorboard: bool = False,
                 report_to: list[str] | tuple[str, ...] = ()) -> None:
        from midpo_cli.engine.trackers import open_trackers

        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        names = [*report_to, *(["tensorboard"] if tensorboard else [])]
        self.trackers = open_trackers(names, out_dir, stage_name) if enabled else []
        self.stage_name = stage_name

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (an interrupted run got past its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        rows = jsonl_rows(lines, str(self.path))
        kept = [ln for ln, (_, row) in zip(lines, rows, strict=True) if row is not None and row.get("step", 0) <= step]
        if len(kept) != len(lines):
            self.path.write_text("".join(kept), encoding="utf-8")

    def reset(self) -> None:
        """A fresh (non-resumed) run starts a fresh file."""
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self.trackers:
            split = record.get("split", "train")
            values = {f"{split}/{key}": float(value) for key, value in record.items()
                      if isinstance(value, int | float) and not isinstance(value, bool)
                      and key not in ("step", "epoch") and math.isfinite(value)}
            for tracker in self.trackers:
                tracker.log(values, record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


class Progress:
    """Training progress on rank 0: the shared console bar on a terminal (`console.Bar`, its info the last logged
    loss, lr and speed); one plain line per logged step otherwise (log files, CI)."""

    def __init__(self, *, enabled: bool, total: int, start: int, stage_name: str) -> None:
        self.enabled = enabled
        self.total, self.start_step, self.stage_name = total, start, stage_name
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and console.err.is_terminal and not console.quiet():
            self.bar = console.Bar(stage_name, total, unit="steps", completed=start, lines=False)

    def eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.t0) / done * (self.total - step) if done > 0 else float("nan")

    def update(self, step: int, record: dict[str, Any] | None) -> None:
        """Called every step; `record` is set on logged steps."""
        if not self.enabled:
            return
        if self.bar is not None:
            info = None
            if record:
                info = (f"loss {record['loss']:.4g}  lr {record['lr']:.2e}  "
                        f"{record['samples_per_s']:.1f} samples/s  {record['tokens_per_s']:.0f} tok/s")
            self.bar.update(completed=step, info=info)
        elif record:
            eta = self.eta(step)
            if not console.quiet():  # one line per record, never wrapped at 80 columns (log files, CI)
                console.err.print(f"{self.stage_name}: step {step}/{self.total} epoch {record['epoch']:g} "
                                  f"loss {record['loss']:.4g} lr {record['lr']:.2e} "
                                  f"{record['samples_per_s']:.1f} samples/s {record['tokens_per_s']:.0f} tokens/s "
                                  f"ETA {console.format_eta(eta) if math.isfinite(eta) else '?'}",
                                  soft_wrap=True, highlight=False, markup=False)

    def message(self, text: str) -> None:
        if self.enabled:
            console.log(text)  # plain text: messages carry paths and metric names, never markup

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
