"""Experts chosen on dev (`stages.<expert>.select: dev`, docs/design.md §2.6): keep the step that is best on the
expert's own objective, not the last one.

Direct-alignment methods overshoot early (a pretrained base's safety expert can refuse every benign prompt a
few dozen steps in, docs/design.md §8), and MoGU's authors single out the expert checkpoint as what matters
most. So within the recipe's step budget the stage keeps the adapter every `select_every` steps (and at the
last step: the snapshots are midpo_cli.modeling.lora's), answers the recipe's dev prompts
(midpo_cli.stages.kit.dev_choice) with each, and keeps the best:

- safety expert: on the harmful dev prompts, the share answered safely;
- helpfulness (and plain-DPO) expert: on the benign dev prompts, the share answered helpfully (and not refused);

both by the dev judge (`stages.score.dev_judge`, else the first judge that can judge the dev set: the toy judge on
the toy world, the score models elsewhere; midpo_cli.evaluation.judge_labels gives the outcome).

Ties go to the earlier step (less drift from the base for the same dev score). The curve goes into the manifest.
Pure: the choice only, no model and no file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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


def objective(stage: str, outcomes: Sequence[float]) -> float | None:
    """The expert's dev score: the mean outcome of its answers (all of the kind `wants_harmful(stage)`; module
    docstring) by the dev judge, unjudged answers (NaN) left out; None when none was judged."""
    del stage  # the answers are already the expert's kind; the judge's outcome is its objective
    judged = [o for o in outcomes if o is not None and not math.isnan(o)]
    return sum(judged) / len(judged) if judged else None
