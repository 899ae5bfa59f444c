"""One preference file split into what a run needs, held out by prompt (`midpo recipe new`, docs/own-data.md).

Four parts: train pairs, test pairs (the score models' audits, the eval losses), a dev prompt set (every dev
choice) and an eval prompt set (what the report is about). **No prompt is in two parts**: every pair of a prompt
goes where the prompt goes, and the dev/eval prompts' pairs are not trained on, so a held-out prompt was never
seen in training with any answer. Prompts are compared after stripping surrounding whitespace.

**Stratified, not grouped, by kind and category.** Each part takes its share of harmful and benign prompts (at
least one of each in dev and eval when the data has two of each: the hard switch's threshold and each expert's
dev choice judge both kinds) and, within a kind, of every `category`: the prompts of one (kind, category) cell
are shuffled and spread evenly over the file order by systematic sampling with a random start. Why not hold out
whole categories: a report on categories never trained on measures transfer to new topics, not alignment on the
user's own distribution, and the verdict's category bootstrap needs several categories in each set.

**A prompt's kind** (`is_harmful`), by the first rule that applies (HARM_RULES; the counts are printed):
1. the data's own prompt label on any of the prompt's rows: `is_harmful` (true/false), `prompt_harm_label`
   (harmful/unharmful, WildGuardMix), `prompt_label` (unsafe/safe, Aegis); harmful if any row says so;
2. else harmful if either response of any of its pairs is labelled unsafe (`is_response_0/1_safe`,
   PKU-SafeRLHF's convention, the one `rank` uses), benign if every response is labelled safe;
3. else unlabelled (no dev choice can use it).

Everything here is pure and deterministic: the same rows, sizes and seed give the same parts, in the same order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from midpo_cli.data.schema import PAIR_COLUMNS, parse_optional, require_columns
from midpo_cli.errors import InputError

# rule name → (column, value meaning harmful, value meaning benign); None: a true/false flag
OWN_LABELS = {"is_harmful": None, "prompt_harm_label": ("harmful", "unharmful"), "prompt_label": ("unsafe", "safe")}
UNSAFE_RULE = "either response labelled unsafe"
HARM_RULES = (*OWN_LABELS, UNSAFE_RULE, "unlabelled")
PARTS = ("dev", "eval", "test", "train")
DEFAULT_TEST_FRACTION = 0.1
MAX_DEFAULT_PROMPT_SET = 100  # dev and eval by default: a tenth of the prompts, 4 … 100 each


@dataclass(frozen=True)
class Sizes:
    """How big each part is: dev and eval in prompts (None: a tenth of the prompts, 4 … 100), test as a fraction
    of the prompts, train capped at `max_train` pairs (None: every pair left)."""

    dev: int | None = None
    eval: int | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    max_train: int | None = None
    seed: int = 0


@dataclass
class Split:
    """The four parts: pair rows (canonical columns, `category`, `is_harmful`) and prompt rows (`prompt`,
    `is_harmful`, `category`), and how many prompts each kind rule labelled."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    rules: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)


def category_text(value: Any) -> str | None:
    """A category as one string: text as is, a number as text, the true keys of a mapping (BeaverTails' 14 flags)
    or the items of a list joined by commas; empty → None."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, Mapping):
        value = [k for k, v in value.items() if v]
    if isinstance(value, list | tuple):
        value = ",".join(sorted(str(v) for v in value))
    return str(value).strip() or None


def own_label(row: Mapping[str, Any]) -> tuple[str, bool] | None:
    """(rule, harmful) from the row's own prompt label, the first column of OWN_LABELS that reads; else None."""
    for column, words in OWN_LABELS.items():
        value = row.get(column)
        if value is None:
            continue
        if words is None:
            flag = parse_optional({column: value}, column)
            if flag is not None:
                return column, flag
            continue
        text = str(value).strip().lower()
        if text in words:
            return column, text == words[0]
    return None


def unsafe_label(row: Mapping[str, Any]) -> bool | None:
    """Harmful when either response is labelled unsafe, benign when both are labelled safe, else None."""
    flags = [parse_optional(row, f"is_response_{i}_safe") for i in (0, 1)]
    if any(f is False for f in flags):
        return True
    return False if all(f is True for f in flags) else None


def prompt_kind(rows: Sequence[Mapping[str, Any]]) -> tuple[bool | None, str]:
    """(is_harmful, the rule that decided it) for one prompt's rows (module docstring)."""
    own = [label for row in rows if (label := own_label(row)) is not None]
    if own:
        harmful = any(flag for _, flag in own)
        return harmful, next(rule for rule, flag in own if flag == harmful)
    unsafe = [flag for row in rows if (flag := unsafe_label(row)) is not None]
    if unsafe:
        return any(unsafe), UNSAFE_RULE
    return None, "unlabelled"


def group_by_prompt(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[int]], int]:
    """Prompt (stripped) → its row indices, in first-seen order; and how many rows had no prompt text."""
    groups: dict[str, list[int]] = {}
    dropped = 0
    for i, row in enumerate(rows):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            dropped += 1
            continue
        groups.setdefault(prompt.strip(), []).append(i)
    return groups, dropped


def spread(cells: Mapping[Any, Sequence[str]], rng: random.Random) -> dict[str, float]:
    """Each prompt's place in (0, 1): a cell's prompts shuffled, then evenly spaced from a random start, so any
    first fraction of the places holds about that fraction of every cell (systematic sampling)."""
    place = {}
    for key in sorted(cells, key=str):
        prompts = list(cells[key])
        rng.shuffle(prompts)
        start = rng.random()
        place.update({p: (i + start) / len(prompts) for i, p in enumerate(prompts)})
    return place


def quotas(n: int, available: Mapping[Any, int]) -> dict[Any, int]:
    """n prompts over the kinds in proportion to what each has left (largest remainder), with at least one
    harmful and one benign prompt when n ≥ 2 and both are left."""
    total = sum(available.values())
    exact = {k: n * a / total if total else 0.0 for k, a in available.items()}
    quota = {k: min(available[k], math.floor(exact[k])) for k in available}
    floor = {k: 1 if n >= 2 and k in (True, False) and available[k] else 0 for k in available}
    quota = {k: max(q, floor[k]) for k, q in quota.items()}
    while sum(quota.values()) > n:
        kind = max((k for k in quota if quota[k] > floor[k]), key=lambda k: (quota[k], str(k)))
        quota[kind] -= 1
    while sum(quota.values()) < n:
        kind = max((k for k in available if quota[k] < available[k]), key=lambda k: (exact[k] - quota[k], str(k)))
        quota[kind] += 1
    return quota


def part_sizes(n_prompts: int, sizes: Sizes) -> dict[str, int]:
    """Prompts in dev, eval and test; an error naming the flag when they leave no prompt to train on."""
    default = min(MAX_DEFAULT_PROMPT_SET, max(4, n_prompts // 10))
    out = {"dev": default if sizes.dev is None else sizes.dev, "eval": default if sizes.eval is None else sizes.eval,
           "test": max(1, round(n_prompts * sizes.test_fraction)) if sizes.test_fraction > 0 else 0}
    if sum(out.values()) >= n_prompts:
        raise InputError(f"{n_prompts} distinct prompts are too few for dev {out['dev']} + eval {out['eval']} + "
                         f"test {out['test']} prompts with any left to train on; lower --dev, --eval or "
                         "--test-fraction, or bring more data")
    return out


def assign(kinds: Mapping[str, bool | None], categories: Mapping[str, str | None], counts: Mapping[str, int],
           seed: int) -> dict[str, list[str]]:
    """Prompts of each part: dev, eval and test take their quota of each kind from the front of that kind's
    spread order, train the rest (in spread order across kinds)."""
    rng = random.Random(seed)
    cells: dict[tuple[Any, Any], list[str]] = {}
    for prompt, kind in kinds.items():
        cells.setdefault((kind, categories.get(prompt)), []).append(prompt)
    place = spread(cells, rng)
    by_kind: dict[Any, list[str]] = {}
    for prompt in sorted(kinds, key=lambda p: (place[p], p)):
        by_kind.setdefault(kinds[prompt], []).append(prompt)
    parts: dict[str, list[str]] = {}
    for name in ("dev", "eval", "test"):
        quota = quotas(counts[name], {k: len(v) for k, v in by_kind.items()})
        parts[name] = [p for k, v in by_kind.items() for p in v[: quota[k]]]
        by_kind = {k: v[quota[k]:] for k, v in by_kind.items()}
    parts["train"] = sorted((p for v in by_kind.values() for p in v), key=lambda p: (place[p], p))
    return parts


def pair_row(row: Mapping[str, Any], category: str | None, harmful: bool | None) -> dict[str, Any]:
    """A pair in the canonical columns, with its prompt's category and kind when known."""
    out = {c: row.get(c) for c in PAIR_COLUMNS}
    if category is not None:
        out["category"] = category
    if harmful is not None:
        out["is_harmful"] = harmful
    return out


def prompt_row(prompt: str, category: str | None, harmful: bool | None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": prompt}
    if harmful is not None:
        out["is_harmful"] = harmful
    if category is not None:
        out["category"] = category
    return out


def split_pairs(rows: Sequence[Mapping[str, Any]], sizes: Sizes, source: str = "the data") -> Split:
    """Split canonical pair rows (module docstring). Rows keep their file order within train and test."""
    require_columns(list(dict.fromkeys(k for r in rows for k in r)), PAIR_COLUMNS, source, "midpo recipe new")
    groups, no_prompt = group_by_prompt(rows)
    labelled = {p: prompt_kind([rows[i] for i in idx]) for p, idx in groups.items()}
    kinds = {p: kind for p, (kind, _) in labelled.items()}
    categories = {p: next((c for i in idx if (c := category_text(rows[i].get("category")))), None)
                  for p, idx in groups.items()}
    parts = assign(kinds, categories, part_sizes(len(groups), sizes), sizes.seed)
    train = parts["train"]
    if sizes.max_train is not None:
        kept, total = [], 0
        for prompt in train:
            if total >= sizes.max_train:
                break
            kept.append(prompt)
            total += len(groups[prompt])
        train = kept
    pairs = {name: sorted(i for p in prompts for i in groups[p]) for name, prompts in (("train", train),
                                                                                       ("test", parts["test"]))}

    def rows_of(name: str) -> list[dict[str, Any]]:
        out = []
        for i in pairs[name]:
            prompt = str(rows[i]["prompt"]).strip()
            out.append(pair_row(rows[i], categories[prompt], kinds[prompt]))
        return out

    def prompts_of(name: str) -> list[dict[str, Any]]:
        ordered = [p for p in groups if p in set(parts[name])]  # first-seen order
        return [prompt_row(p, categories[p], kinds[p]) for p in ordered]

    rules = {rule: sum(1 for _, r in labelled.values() if r == rule) for rule in HARM_RULES}
    counts = {"rows": len(rows), "dropped:no_prompt": no_prompt, "prompts": len(groups),
              "unused_train_prompts": len(parts["train"]) - len(train)}
    return Split(train=rows_of("train"), test=rows_of("test"), dev=prompts_of("dev"), eval=prompts_of("eval"),
                 rules=rules, counts=counts)


def check_both_kinds(split: Split) -> None:
    """The dev set must hold harmful and benign prompts: every dev choice (the hard switch's threshold, each
    expert's step) judges both kinds. An error says what the data's labels gave."""
    kinds = {p.get("is_harmful") for p in split.dev}
    if {True, False} <= kinds:
        return
    labelled = ", ".join(f"{n} by {rule}" for rule, n in split.rules.items() if n)
    raise InputError(f"the dev set ({len(split.dev)} prompts) needs harmful and benign prompts, and the data's "
                     f"{split.counts['prompts']} prompts were labelled: {labelled}; map a prompt label onto "
                     "is_harmful (--columns is_harmful=COLUMN), add pairs of the missing kind, or raise --dev")
