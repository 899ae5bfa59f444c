"""The judges of one score or one dev choice: built from the recipe's `stages.score.judge` entries
(midpo_cli.judges.base says what a judge is), each run over the answers of the prompt sets it can judge, its labels
written into the answer rows (docs/judges.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from midpo_cli import console
from midpo_cli.evaluation.judge_labels import FIELDS, column, outcome
from midpo_cli.evaluation.summary import as_bool
from midpo_cli.judges.base import Judge, JudgeEnv, Label
from midpo_cli.recipe import JudgeEntry


def build_judge(entry: JudgeEntry, env: JudgeEnv) -> Judge:
    """The judge an entry of `stages.score.judge` names (its module imported only when it is used)."""
    kind, spec, name = entry.kind, entry.spec, entry.name
    if kind == "toy":
        from midpo_cli.judges.toy import ToyJudge

        return ToyJudge(name)
    if kind == "score-models":
        from midpo_cli.judges.score_models import ScoreModelsJudge

        return ScoreModelsJudge(name, spec, env)
    if kind == "guard":
        from midpo_cli.judges.guard import GuardJudge

        return GuardJudge(name, spec, env)
    from midpo_cli.judges.openai_compat import OpenAIJudge

    return OpenAIJudge(name, spec, env)


@dataclass
class PanelResult:
    """Each judge's sets (judge → the prompt sets it labelled, panel order) and report entry."""

    judged: dict[str, list[str]]
    info: dict[str, dict[str, Any]]


def label_answers(rows: list[dict[str, Any]], judges: Sequence[Judge], *, dev_set: str | None) -> PanelResult:
    """Run every judge over the prompt sets it can judge (every answer row of those sets) and write its columns
    (`judge:<name>:safe|refused|helpful|outcome|raw`) into each row; rows of other sets get empty columns."""
    by_set: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_set.setdefault(str(r.get("prompt_set", dev_set or "")), []).append(i)
    result = PanelResult({}, {})
    for judge in judges:
        sets, skipped = [], {}
        for name, idx in by_set.items():
            prompts = [rows[i] for i in idx if as_bool(rows[i].get("is_harmful")) is not None]
            why = "no prompt has an is_harmful label" if not prompts else judge.cannot_judge(prompts)
            if why:
                skipped[name] = why
            else:
                sets.append(name)
        picked = [i for s in sets for i in by_set[s]]
        labels, info = judge.label([rows[i] for i in picked], dev_set=dev_set if dev_set in sets else None) \
            if picked else ([], {})
        for i in range(len(rows)):
            rows[i].update({column(judge.name, f): None for f in FIELDS})
        for i, label in zip(picked, labels, strict=True):
            write_label(rows[i], judge.name, label)
        result.judged[judge.name] = sets
        result.info[judge.name] = {"name": judge.name, "kind": judge.kind, "tells_refusal": judge.tells_refusal,
                                   "sets": sets, "skipped": skipped, **info}
        console.log(f"judge {judge.name} ({judge.kind}): {len(picked)} answers on {len(sets)} prompt set(s)"
                    + (f"; cannot judge {', '.join(skipped)}" if skipped else ""))
    return result


def write_label(row: dict[str, Any], judge: str, label: Label | None) -> None:
    """One judge's columns of one row, the outcome computed from the labels (judge_labels.outcome)."""
    for f in ("safe", "refused", "helpful"):
        row[column(judge, f)] = None if label is None else label.get(f)
    raw = None if label is None else label.get("raw")
    row[column(judge, "raw")] = raw if raw is None or isinstance(raw, str) else json.dumps(raw, sort_keys=True)
    value = outcome(row.get("is_harmful"), label)
    row[column(judge, "outcome")] = None if value != value else value


def judged_by(judge: Judge) -> str:
    """How a manifest and the log name a dev choice's judge."""
    if judge.kind == "toy":
        return "toy judge"
    if judge.kind == "score-models":
        return f"score models (judge {judge.name}: harmful c < 0; benign not refused and reward above the dev cut)"
    return f"{judge.kind} judge {judge.name}"
