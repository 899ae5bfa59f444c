"""Stage filters: which pairs each stage trains on, and which is `chosen` (docs/design.md §2, §5).

| stage | keeps | chosen |
|---|---|---|
| reward_model, helpfulness_expert, dpo | all valid pairs | the better response |
| cost_model | all valid pairs | the safer response (safe/unsafe signs in chosen_safe/rejected_safe) |
| safety_expert | exactly one response labelled safe | the safer response (must be the safe one) |
| safedpo | some response labelled safe | the better response if safe, else the safe one (SafeDPO's re-ordering) |
| router, rule `labels` | both labelled safe and safer == better | the better (= safer) response |
| router, rule `agree` | safer == better | the better (= safer) response |

A file with `prompt, chosen, rejected` columns (D_dual from `rank`, or any preference file) is read as
is for reward_model, helpfulness_expert, dpo and router; the cost model and the safety expert need the
safety labels of the canonical schema.

Every row that is not kept is counted under one reason, checked in this order: `malformed` (missing
field, null, wrong type, a label that is not 0/1/bool), `empty_prompt`, `empty_response`,
`identical_responses` (equal after stripping whitespace), then the stage's own filter. Nothing is
dropped silently; a selection that ends up empty is an error naming the step that emptied it.

`Pair.meta` carries what later stages and reports need without re-reading the table: `category` and
`is_harmful` when present, and every per-response column mapped onto chosen/rejected —
`reward_0/reward_1` → `reward_chosen/reward_rejected`, `cost_0/1` → `cost_chosen/rejected`,
`response_0_type` → `type_chosen` (generally `X_0` → `X_chosen`, `response_0_X` → `X_chosen`). The keys
equal the column names of the D_dual file that `rank` writes, so the router reads scores the same way
from either source. Columns of a preference file other than prompt/chosen/rejected are copied as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from midpo_cli.data.readers import Table
from midpo_cli.data.schema import (
    PAIR_COLUMNS,
    PREFERENCE_COLUMNS,
    PROMPT_COLUMNS,
    Malformed,
    parse_field,
    parse_optional,
    require_columns,
)
from midpo_cli.errors import InputError

PAIR_STAGES = ("reward_model", "cost_model", "safety_expert", "helpfulness_expert", "dpo", "safedpo", "router")
ROUTER_RULES = ("labels", "agree")
VALIDITY_REASONS = ("malformed", "empty_prompt", "empty_response", "identical_responses")
MAX_EXAMPLES = 3

_TEXT_COLUMNS = ("prompt", "response_0", "response_1")
_BETTER = ("better_response_id",)
_SAFETY = ("safer_response_id", "is_response_0_safe", "is_response_1_safe")
_CANONICAL = set(PAIR_COLUMNS) | set(PREFERENCE_COLUMNS) | {"is_chosen_safe", "is_rejected_safe"}
_PER_RESPONSE = (re.compile(r"response_([01])_(.+)"), re.compile(r"(.+)_([01])"))


@dataclass
class Pair:
    """One preference pair as a stage sees it. `row` is the 0-based index into `Table.rows`."""

    prompt: str
    chosen: str
    rejected: str
    chosen_safe: bool | None
    rejected_safe: bool | None
    row: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection:
    """The kept pairs and the accounting.

    counts: `rows_in`, `dropped:<reason>` for every reason this stage checks (zeros included), `kept`.
    steps: rows remaining after each step (`rows_in`, `valid`, then the stage's filter steps).
    examples: up to 3 "row N: why" strings per drop reason (N is 1-based), for `midpo data show`.
    error: why the selection is empty (only with allow_empty=True; otherwise that is an InputError).
    """

    pairs: list[Pair]
    counts: dict[str, int]
    steps: dict[str, int]
    source: str
    stage: str
    examples: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


def pair_filter(stage: str, loss: str | None = None) -> str:
    """The filter (a PAIR_STAGES name) that selects a pipeline stage's pairs from data.train / data.eval.

    The plain-DPO baseline, and the helpfulness expert with `loss: dpo`, train on every `better` pair; rank
    scores every valid pair and the router's held-out check reads them with the same rule (`reward_model`).
    """
    if stage == "dpo_expert" or (stage == "helpfulness_expert" and loss == "dpo"):
        return "dpo"
    if stage in BASELINE_FILTERS:
        return BASELINE_FILTERS[stage]
    return stage if stage in ("reward_model", "cost_model", "safety_expert", "helpfulness_expert") else "reward_model"


# The baselines' pairs (docs/design.md §2.11): the experts' selections, or SafeDPO's re-ordered `better` pairs.
BASELINE_FILTERS = {"baseline_dpo_helpful": "dpo", "baseline_dpo_safe": "safety_expert", "baseline_modpo": "dpo",
                    "baseline_safedpo": "safedpo"}


def stage_label_columns(stage: str, rule: str | None = None) -> tuple[str, ...]:
    """The label columns a stage reads from canonical pair rows."""
    if stage == "safedpo":
        return _BETTER + _SAFETY
    if stage in ("reward_model", "helpfulness_expert", "dpo"):
        return _BETTER
    if stage in ("cost_model", "safety_expert"):
        return _SAFETY
    if stage == "router":
        return _BETTER + (_SAFETY if _router_rule(rule) == "labels" else ("safer_response_id",))
    raise InputError(f"unknown data stage {stage!r}; choose one of {', '.join(PAIR_STAGES)}")


def _router_rule(rule: str | None) -> str:
    rule = rule or "labels"
    if rule not in ROUTER_RULES:
        raise InputError(f"router data rule {rule!r}: choose one of {', '.join(ROUTER_RULES)}")
    return rule


def is_preference_table(columns: list[str]) -> bool:
    """A `prompt, chosen, rejected` file (D_dual or similar) rather than canonical pairs."""
    return "chosen" in columns and "rejected" in columns and "response_0" not in columns


def select_pairs(table: Table, stage: str, *, rule: str | None = None,
                 allow_empty: bool = False) -> Selection:
    """Validate rows, apply the stage's filter, orient each pair (chosen first); see the module docstring.

    An empty result raises InputError naming the step that emptied it, unless allow_empty (for reports).
    """
    labels = stage_label_columns(stage, rule)
    columns = table.columns
    if is_preference_table(columns) and stage not in ("cost_model", "safety_expert", "safedpo"):
        require_columns(columns, PREFERENCE_COLUMNS, table.source, f"stage {stage}")
        pairs, acc = _preference_pairs(table, stage)
        return acc.result(pairs, [], allow_empty)
    require_columns(columns, _TEXT_COLUMNS + labels, table.source, f"stage {stage}")
    # labels this stage does not need are still checked where the table has them: a row with a broken
    # safety label is malformed for every stage, so all stages see the same valid rows
    labels += tuple(c for c in _BETTER + _SAFETY if c in columns and c not in labels)
    filters = _stage_filters(stage, rule)
    acc = _Accounting(table.source, stage, len(table.rows), [name for name, _ in filters])
    pairs = []
    for index, row in enumerate(table.rows):
        parsed = acc.validate(index, row, _TEXT_COLUMNS, labels)
        if parsed is None:
            continue
        reason = next((name for name, keep in filters if not keep(parsed)), None)
        if reason is not None:
            acc.drop(reason, index)
            continue
        pairs.append(_orient(stage, parsed, row, index))
    return acc.result(pairs, [(name, _FILTER_STEPS[name]) for name, _ in filters], allow_empty)


def _preference_pairs(table: Table, stage: str) -> tuple[list[Pair], _Accounting]:
    acc = _Accounting(table.source, stage, len(table.rows), [])
    pairs = []
    for index, row in enumerate(table.rows):
        parsed = acc.validate(index, row, PREFERENCE_COLUMNS, ())
        if parsed is None:
            continue
        meta = {k: v for k, v in row.items() if k not in _CANONICAL}
        pairs.append(Pair(prompt=parsed["prompt"], chosen=parsed["chosen"], rejected=parsed["rejected"],
                          chosen_safe=parse_optional(row, "is_chosen_safe"),
                          rejected_safe=parse_optional(row, "is_rejected_safe"), row=index, meta=meta))
    return pairs, acc


# Label rules: one definition for the stage filters below and for rank's D_dual rules (stages/rank.py).

def both_labelled_safe(safe_0: bool | None, safe_1: bool | None) -> bool:
    """Both answers labelled safe (the paper's D_dual by labels)."""
    return bool(safe_0 and safe_1)


def label_winner(better: int, safer: int | None) -> int | None:
    """The answer that is both the better and the safer one by the labels; None when the labels disagree."""
    return better if better == safer else None


def safedpo_chosen(better: int, safe: tuple[bool, bool]) -> int | None:
    """SafeDPO's preference re-ordering T (arXiv 2505.20065, §3.2): which answer of a pair becomes y_w.

    better: the helpfulness label (0/1); safe: the two answers' safety labels. The better answer stays y_w
    when it is safe; an unsafe better answer against a safe one is swapped (the safe one wins); a pair of
    two unsafe answers is dropped (None): under the constrained reward both are −∞, so neither is preferred.
    """
    if safe[better]:
        return better
    if safe[1 - better]:
        return 1 - better
    return None


def harmful_from_labels(is_harmful: Any, safe_0: bool | None, safe_1: bool | None) -> bool | None:
    """A prompt's kind from labels: the data's `is_harmful` when present, else "some answer is labelled unsafe"
    (PKU-SafeRLHF's convention); None when the data says neither. One rule for rank and the router's checks."""
    if is_harmful is not None:
        return bool(is_harmful)
    if safe_0 is not None and safe_1 is not None:
        return not (safe_0 and safe_1)
    return None


# The stage filters: (drop reason, keep-predicate on the parsed row), applied in order.
_FILTER_STEPS = {
    "not_exactly_one_safe": "exactly_one_safe",
    "safer_is_unsafe": "safer_is_safe",
    "not_both_safe": "both_safe",
    "safer_differs_from_better": "safer_equals_better",
    "both_unsafe": "some_safe",
}


def _stage_filters(stage: str, rule: str | None) -> list[tuple[str, Any]]:
    if stage == "safety_expert":
        return [
            ("not_exactly_one_safe", lambda p: p["is_response_0_safe"] != p["is_response_1_safe"]),
            # exactly one is safe: a safer label pointing at the unsafe answer contradicts itself
            ("safer_is_unsafe", lambda p: p[f"is_response_{p['safer_response_id']}_safe"]),
        ]
    if stage == "safedpo":  # SafeDPO's T drops a pair of two unsafe answers (`safedpo_chosen`)
        return [("both_unsafe", lambda p: p["is_response_0_safe"] or p["is_response_1_safe"])]
    if stage == "router":
        agree = ("safer_differs_from_better",
                 lambda p: label_winner(p["better_response_id"], p["safer_response_id"]) is not None)
        if _router_rule(rule) == "labels":
            return [("not_both_safe", lambda p: both_labelled_safe(p["is_response_0_safe"], p["is_response_1_safe"])),
                    agree]
        return [agree]
    return []


def _orient(stage: str, parsed: dict[str, Any], row: dict[str, Any], index: int) -> Pair:
    key = "safer_response_id" if stage in ("cost_model", "safety_expert") else "better_response_id"
    c = parsed[key]
    if stage == "safedpo":
        c = safedpo_chosen(c, (parsed["is_response_0_safe"], parsed["is_response_1_safe"]))
    o = 1 - c
    safe = [parsed.get("is_response_0_safe"), parsed.get("is_response_1_safe")]
    if safe[0] is None:  # a stage that does not need the safety labels still carries them when present
        safe = [parse_optional(row, "is_response_0_safe"), parse_optional(row, "is_response_1_safe")]
    return Pair(prompt=parsed["prompt"], chosen=parsed[f"response_{c}"], rejected=parsed[f"response_{o}"],
                chosen_safe=safe[c], rejected_safe=safe[o], row=index, meta=pair_meta(row, c))


def pair_meta(row: dict[str, Any], chosen_id: int) -> dict[str, Any]:
    """category/is_harmful, and per-response columns renamed onto chosen/rejected (module docstring)."""
    meta: dict[str, Any] = {}
    for key, value in row.items():
        if key in _CANONICAL:
            continue
        for pattern in _PER_RESPONSE:
            m = pattern.fullmatch(key)
            if m:
                i, name = (int(m[1]), m[2]) if pattern is _PER_RESPONSE[0] else (int(m[2]), m[1])
                meta[f"{name}_{'chosen' if i == chosen_id else 'rejected'}"] = value
                break
        else:
            if key in ("category", "is_harmful"):
                meta[key] = value
    return meta


class _Accounting:
    """Counts and examples of dropped rows, shared by the pair, prompt and SFT selections."""

    def __init__(self, source: str, stage: str, rows_in: int, filters: list[str]) -> None:
        self.source, self.stage = source, stage
        self.reasons = [*VALIDITY_REASONS, *filters]
        self.counts = {"rows_in": rows_in, **{f"dropped:{r}": 0 for r in self.reasons}}
        self.examples: dict[str, list[str]] = {}

    def drop(self, reason: str, index: int, why: str = "") -> None:
        self.counts[f"dropped:{reason}"] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(f"row {index + 1}" + (f": {why}" if why else ""))

    def validate(self, index: int, row: dict[str, Any], texts: tuple[str, ...],
                 labels: tuple[str, ...]) -> dict[str, Any] | None:
        """Typed fields of a row, or None after counting why it is dropped."""
        try:
            parsed = {name: parse_field(row, name) for name in (*texts, *labels)}
        except Malformed as exc:
            self.drop("malformed", index, str(exc))
            return None
        if not parsed[texts[0]].strip():
            self.drop("empty_prompt", index)
            return None
        answers = [parsed[name] for name in texts[1:]]
        if any(not a.strip() for a in answers):
            self.drop("empty_response", index)
            return None
        if len(answers) == 2 and answers[0].strip() == answers[1].strip():
            self.drop("identical_responses", index)
            return None
        return parsed

    def result(self, pairs: list[Any], filter_steps: list[tuple[str, str]],
               allow_empty: bool = False) -> Selection:
        counts = dict(self.counts)
        counts["kept"] = len(pairs)
        valid = counts["rows_in"] - sum(counts.get(f"dropped:{r}", 0) for r in VALIDITY_REASONS)
        steps = {"rows_in": counts["rows_in"], "valid": valid}
        remaining = valid
        for reason, step in filter_steps:
            remaining -= counts[f"dropped:{reason}"]
            steps[step] = remaining
        error = None
        if not pairs:
            emptied = next((name for name, n in steps.items() if n == 0), "valid")
            error = (f"{self.source}: no rows left for {self.stage} after the {emptied!r} filter "
                     f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
            if not allow_empty:
                raise InputError(error)
        return Selection(pairs=pairs, counts=counts, steps=steps, source=self.source, stage=self.stage,
                         examples=self.examples, error=error)


@dataclass
class PromptSelection:
    """Prompt-set rows (`prompt`, optional `category`, `is_harmful`, and `row`, 0-based) and counts."""

    prompts: list[dict[str, Any]]
    counts: dict[str, int]
    examples: dict[str, list[str]] = field(default_factory=dict)


def select_prompts(table: Table, *, allow_empty: bool = False) -> PromptSelection:
    """Validate a prompt set: malformed and empty prompts are dropped and counted."""
    require_columns(table.columns, PROMPT_COLUMNS, table.source, "a prompt set")
    acc = _Accounting(table.source, "a prompt set", len(table.rows), [])
    acc.counts = {"rows_in": len(table.rows), "dropped:malformed": 0, "dropped:empty_prompt": 0}
    kept = []
    for index, row in enumerate(table.rows):
        parsed = acc.validate(index, row, PROMPT_COLUMNS, ())
        if parsed is not None:
            kept.append({"prompt": parsed["prompt"], "category": row.get("category"),
                         "is_harmful": parse_optional(row, "is_harmful"), "row": index})
    sel = acc.result(kept, [], allow_empty)
    skipped = {f"skipped:{k}": v for k, v in table.skipped.items()}  # never rows: the reader passed them over
    return PromptSelection(prompts=kept, counts={**skipped, **sel.counts}, examples=sel.examples)
