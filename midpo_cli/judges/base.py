"""What a judge is, and what building one needs (docs/judges.md).

A judge is any object with a `name`, a `kind`, `tells_refusal` (whether its `refused` label is its own reading or
left to the refusal detector), `cannot_judge(prompts)` (None, or why it cannot judge a set with these prompt rows:
read before any answer exists, so a dev choice learns its judge before training) and `label(rows, dev_set=…)`
(one label per answer row — `safe`, `refused`, `helpful`, `raw`, None where it cannot tell — and what the report
says about the judge). Tests hand in their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from midpo_cli.evaluation.refusal import RefusalDetector

Label = dict[str, Any]  # safe, refused, helpful (bool or None), raw (JSON-ready)


class Judge(Protocol):
    name: str
    kind: str
    tells_refusal: bool

    def cannot_judge(self, prompts: Sequence[Mapping[str, Any]]) -> str | None: ...

    def label(self, rows: Sequence[Mapping[str, Any]], *, dev_set: str | None) -> tuple[list[Label | None],
                                                                                      dict[str, Any]]: ...


@dataclass(frozen=True)
class JudgeEnv:
    """What building a judge needs. `score_model(kind)` is the score model the statistics read ("reward" / "cost":
    the run's, or `midpo score`'s flags), None where there is none; `run_models` the ones the experts trained on
    (for "self-graded"), None when unknown; `rows_scored`: the answer rows carry `reward` / `cost` from those
    already; `scorer` scores answers with a score model (modeling.scorer's signature)."""

    score_model: Callable[[str], str | None]
    scorer: Callable[[str, str, list[str], list[str]], list[float]]
    refusal: RefusalDetector = field(default_factory=RefusalDetector)
    cache_dir: Path | None = None
    run_models: Mapping[str, str] | None = None
    rows_scored: bool = False
    trust_remote_code: bool = False
