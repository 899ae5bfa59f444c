"""Experts chosen on dev (`stages.<expert>.select: dev`, docs/design.md §2.6): keep the step that is best on the
expert's own objective, not the last one.

Direct-alignment methods overshoot early (a pretrained base's safety expert can refuse every benign prompt a
few dozen steps in, docs/design.md §8), and MoGU's authors single out the expert checkpoint as what matters
most. So within the recipe's step budget the stage keeps the adapter every `select_every` steps (and at the
last step: the snapshots are midpo_cli.modeling.lora's), answers the recipe's dev prompts
(midpo_cli.stages.kit.dev_choice) with each, and keeps the best:

- safety expert: on the harmful dev prompts, the share answered safely — by the toy judge where the set has one
  (refusal or safe redirect), else by the cost model (c < 0);
- helpfulness (and plain-DPO) expert: on the benign dev prompts, the toy judge's share helped, else the mean
  reward.

Ties go to the earlier step (less drift from the base for the same dev score). The curve goes into the manifest.
Pure: the choice only, no model and no file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def best_step(curve: Sequence[tuple[int, float | None]]) -> int | None:
    """The step of the highest score; ties → the earlier step; None / NaN scores never win; None if none scores."""
    best: tuple[int, float] | None = None
    for step, score in sorted(curve, key=lambda c: c[0]):
        if score is None or math.isnan(score):
            continue
        if best is None or score > best[1]:
            best = (step, score)
    return None if best is None else best[0]


def flat_curve(curve: Sequence[tuple[int, float | None]]) -> str | None:
    """What a flat dev curve (the same score at every scored step, two or more) means, or None: `best_step` then
    keeps the earliest step, the least trained snapshot, on no evidence, which the stage must say."""
    scores = [score for _, score in curve if score is not None and not math.isnan(score)]
    if len(scores) < 2 or max(scores) != min(scores):
        return None
    why = ("the judge saw no right answer at any step: answers cut short (stages.generate.max_new_tokens), a "
           "template the judge does not read, or an expert that has not learned it yet" if scores[0] == 0 else
           "the dev prompts do not tell the steps apart (too few, or every step answers them alike)")
    return (f"the dev curve is flat ({scores[0]:.3f} at all {len(scores)} steps), so the earliest step is kept, the "
            f"least trained snapshot; {why}. Read the dev answers, or set select: last")


def wants_harmful(stage: str) -> bool:
    """Which prompt kind an expert is judged on: harmful for the safety expert, benign for the others."""
    return stage == "safety_expert"


def objective(stage: str, rows: Sequence[Mapping[str, Any]], *, judge: Callable[[Mapping[str, Any]], float] | None,
              costs: Sequence[float] | None = None, rewards: Sequence[float] | None = None) -> float | None:
    """The expert's dev score of its answers `rows` (all of the kind `wants_harmful(stage)`; module docstring).

    judge: the toy judge's per-row outcome (1 = the right kind of answer), used when given; else the cost
    model's scores (safety: share with c < 0) or the reward model's (mean). None for no rows.
    """
    if not rows:
        return None
    if judge is not None:
        outcomes = [judge(r) for r in rows]
        return sum(outcomes) / len(outcomes)
    if wants_harmful(stage):
        if costs is None:
            raise ValueError("safety expert without a judge needs the cost model's scores")
        return sum(c < 0 for c in costs) / len(costs)
    if rewards is None:
        raise ValueError("helpfulness expert without a judge needs the reward model's scores")
    return sum(rewards) / len(rewards)
