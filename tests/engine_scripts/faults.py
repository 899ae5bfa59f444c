"""Engine faults injected from outside the engine, for the resume and NaN-stop tests.

`faulty_step(kind, at)` wraps `midpo_cli.engine.loop.train_step` (the driver looks it up at every step):

- `nan@N`: step N's loss is multiplied by NaN, before the engine checks it;
- `sigint@N`: a real SIGINT to this process right after step N, so the driver sees it at that step's end.

In-process tests install it with `monkeypatch.setattr(loop, "train_step", faulty_step("sigint", 3))`;
a subprocess runs `python faults.py sigint@30 ARGS...`, which is `midpo ARGS...` with the fault installed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable

from midpo_cli.engine import loop


def faulty_step(kind: str, at: int, step_fn: Callable | None = None) -> Callable:
    if kind not in ("nan", "sigint"):
        raise ValueError(f"unknown fault {kind!r}: nan or sigint")
    original = step_fn or loop.train_step

    def poisoned(loss_fn):
        def loss_with_nan(model, batch):
            loss, metrics = loss_fn(model, batch)
            return loss * float("nan"), metrics

        return loss_with_nan

    def step_with_fault(trainer, step):
        if kind == "nan" and step.index + 1 == at:
            trainer = dataclasses.replace(trainer, loss_fn=poisoned(trainer.loss_fn))
        record = original(trainer, step)
        if kind == "sigint" and record.step == at:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    return step_with_fault


def parse(spec: str) -> tuple[str, int]:
    kind, _, at = spec.partition("@")
    return kind, int(at)


def main(argv: list[str]) -> int:
    """`midpo ARGS...` with the fault `argv[0]` (e.g. sigint@30) in every training stage it runs."""
    from midpo_cli.cli import main as midpo

    loop.train_step = faulty_step(*parse(argv[0]))
    return midpo(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
