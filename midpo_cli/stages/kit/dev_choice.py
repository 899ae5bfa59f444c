"""The model side of every dev choice: answer the recipe's dev prompts under each variant of one model, and judge
the answers.

An expert's step (`stages.<expert>.select: dev`: the variants are its adapter snapshots) and the probe switch's
threshold (the variants are the corners (1, 0) and (0, 1)) are chosen the same way: every variant answers every
dev prompt, greedy, with the generate stage's settings; then each variant's answers are judged, by the set's toy
judge where it has one (midpo_cli.evaluation.toy_outcomes), else by the score models. What is best given the
judged answers is a pure choice in midpo_cli.evaluation (`expert_select.best_step`, `probe_switch.choose_threshold`),
and what the manifest keeps is the stage's. Everything here comes in as values, so no stage context is read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from midpo_cli import console
from midpo_cli.recipe import GenerationSettings

Variant = TypeVar("Variant", bound=Hashable)


@dataclass(frozen=True)
class DevJudge:
    """What judges the dev answers: the set's toy judge (an outcome per answer, read by the chooser) where it has
    one; else each score model of `score_models` (kind "cost" or "reward" → its folder or hub name), read with
    the score stage's batch size."""

    toy: Callable[[Mapping[str, Any]], float] | None
    score_models: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 32
    trust_remote_code: bool = False

    def scores(self, rows: list[dict[str, Any]], template: str) -> dict[str, list[float]]:
        """Kind → each answer's score by that score model; empty under the toy judge."""
        if self.toy is not None:
            return {}
        from midpo_cli.modeling.scorer import default_scorer

        scorer = default_scorer(batch_size=self.batch_size, template=template, trust_remote_code=self.trust_remote_code)
        prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        return {kind: scorer(model, kind, prompts, answers) for kind, model in self.score_models.items()}


@dataclass(frozen=True)
class DevPrompts:
    """What a dev choice judges, read once by its stage before any model loads: the dev set's name, the prompt
    rows the choice reads (an expert's kind; every labelled prompt for the switch) and their judge."""

    name: str
    prompts: list[dict[str, Any]]
    judge: DevJudge


@dataclass(frozen=True)
class Judged:
    """One variant's dev answers: each prompt row with its answer, and the score models' scores (by kind)."""

    rows: list[dict[str, Any]]
    scores: dict[str, list[float]]


def judge_on_dev(model: Any, variants: Mapping[Variant, Callable[[], AbstractContextManager[Any]]],
                 dev: DevPrompts, *, tokenizer: Any, template: str, settings: GenerationSettings,
                 label: str = "dev choice") -> dict[Variant, Judged]:
    """Each variant's answers to the dev prompts and their judgement by `dev.judge`, in the variants' order;
    `label` names the choice in the progress display (`safety_expert: select: dev`).

    A variant is a callable whose context sets the model up (loads a snapshot, fixes the gates). Every variant
    answers before any is judged, so a score model is loaded only once the policy's answers are all written.
    """
    answers = {}
    with console.progress(f"{label}: dev answers", len(variants) * len(dev.prompts), unit="answers") as bar:
        for key, variant in variants.items():
            with variant():
                answers[key] = answer_rows(model, tokenizer, dev.prompts, template=template, settings=settings)
            bar.advance(len(dev.prompts))
    with console.progress(label):  # names the score models' passes, where they judge
        return {key: Judged(rows, dev.judge.scores(rows, template)) for key, rows in answers.items()}


def answer_rows(model: Any, tokenizer: Any, prompts: list[dict[str, Any]], *, template: str,
                settings: GenerationSettings) -> list[dict[str, Any]]:
    """Each prompt row with the model's answer under `settings` (stages.generate's), in the prompts' order."""
    from midpo_cli.modeling.generation import generate_answers

    out = sorted((b for batch in generate_answers(model, tokenizer, [p["prompt"] for p in prompts], settings,
                                                  template=template) for b in batch), key=lambda b: b["index"])
    return [{**prompts[b["index"]], "answer": b["answer"]} for b in out]
