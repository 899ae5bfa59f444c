"""The model side of every dev choice: answer the recipe's dev prompts under each variant of one model, and judge
the answers.

An expert's step (`stages.<expert>.select: dev`: the variants are its adapter snapshots) and the probe switch's
threshold (the variants are the corners (1, 0) and (0, 1)) are chosen the same way: every variant answers every
dev prompt, greedy, with the generate stage's settings; then all variants' answers are judged together by the dev
judge (midpo_cli.judges). What is best given the judged answers is a pure choice in midpo_cli.evaluation
(`expert_select.best_step`, `probe_switch.choose_threshold`), and what the manifest keeps is the stage's.
Everything here comes in as values, so no stage context is read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from midpo_cli import console
from midpo_cli.recipe import GenerationSettings

Variant = TypeVar("Variant", bound=Hashable)


@dataclass(frozen=True)
class DevPrompts:
    """What a dev choice judges, read once by its stage before any model loads: the dev set's name, the prompt
    rows the choice reads (an expert's kind; every labelled prompt for the switch) and their judge (one of
    midpo_cli.judges: the recipe's `stages.score.dev_judge`, else the first of `stages.score.judge` that can judge
    these prompts)."""

    name: str
    prompts: list[dict[str, Any]]
    judge: Any


@dataclass(frozen=True)
class Judged:
    """One variant's dev answers: each prompt row with its answer, and each answer's outcome by the dev judge
    (midpo_cli.evaluation.judge_labels: 1 = answered as it should be, NaN = not judged)."""

    rows: list[dict[str, Any]]
    outcomes: list[float]


def judge_on_dev(model: Any, variants: Mapping[Variant, Callable[[], AbstractContextManager[Any]]],
                 dev: DevPrompts, *, tokenizer: Any, template: str, settings: GenerationSettings,
                 label: str = "dev choice") -> dict[Variant, Judged]:
    """Each variant's answers to the dev prompts and their outcomes by `dev.judge`, in the variants' order;
    `label` names the choice in the progress display (`safety_expert: select: dev`).

    A variant is a callable whose context sets the model up (loads a snapshot, fixes the gates). Every variant
    answers before any is judged, so a judge's model is loaded only once the policy's answers are all written, and
    the judge reads every variant's answers at once: one load of each of its models, and a choice it makes on the
    dev answers (the score-models judge's reward threshold) is the same for every variant.
    """
    from midpo_cli.evaluation.judge_labels import outcome

    answers = {}
    with console.progress(f"{label}: dev answers", len(variants) * len(dev.prompts), unit="answers") as bar:
        for key, variant in variants.items():
            with variant():
                answers[key] = answer_rows(model, tokenizer, dev.prompts, template=template, settings=settings)
            bar.advance(len(dev.prompts))
    pooled = [{**r, "prompt_set": dev.name} for rows in answers.values() for r in rows]
    with console.progress(label):  # names the judge's passes (the score models'), where they judge
        labels, _ = dev.judge.label(pooled, dev_set=dev.name)
    outcomes = [outcome(r.get("is_harmful"), label) for r, label in zip(pooled, labels, strict=True)]
    out, start = {}, 0
    for key, rows in answers.items():
        out[key] = Judged(rows, outcomes[start:start + len(rows)])
        start += len(rows)
    return out


def answer_rows(model: Any, tokenizer: Any, prompts: list[dict[str, Any]], *, template: str,
                settings: GenerationSettings) -> list[dict[str, Any]]:
    """Each prompt row with the model's answer under `settings` (stages.generate's), in the prompts' order."""
    from midpo_cli.modeling.generation import generate_answers

    out = sorted((b for batch in generate_answers(model, tokenizer, [p["prompt"] for p in prompts], settings,
                                                  template=template) for b in batch), key=lambda b: b["index"])
    return [{**prompts[b["index"]], "answer": b["answer"]} for b in out]
