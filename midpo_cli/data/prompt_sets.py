"""Named evaluation prompt sets (presets): where each lives on the hub and how its columns map.

A recipe (`stages.generate.prompts`) or `midpo generate --prompts` may name a preset instead of a
file. Each preset fixes the hub spec, the prompt column, the `category` column, the harm label and
which rows are kept; the result is a prompt set in the canonical shape (`prompt`, `category`,
`is_harmful`). `load_preset(name, source=PATH)` reads a local file of the same shape instead of the
hub (tests, offline mirrors).

Presets (hub spec → kept rows; is_harmful; category column):
- `PKU-Alignment/PKU-SafeRLHF:test` → the first row of each distinct prompt; is_harmful = either response
  labelled unsafe (a proxy: the prompts are red-team prompts); no category.
- `LibrAI/do-not-answer` (split train) → all 939 prompts a model should not answer; True; `risk_area`.
- `allenai/wildguardmix` (config `wildguardtest`, split test) → `prompt_harm_label == "harmful"`; True;
  `subcategory`.
- `walledai/XSTest` (split test) → `label == "safe"` (over-refusal probes); False; `type`.
- `natolambert/xstest-v2-copy` (split `prompts`) → `type` not starting with `contrast_` (the safe ones);
  False; `type`.

WildGuardMix is gated on the hub: accept its terms and `huggingface-cli login` first.

`load_prompt_set("[NAME=]SPEC")` loads any prompt set (a preset, an embedded: set, a hub dataset with a
column mapping, or a local JSONL/CSV/TXT file) for `generate` and the benchmarks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli.data.filters import select_prompts
from midpo_cli.data.readers import Table, load_rows
from midpo_cli.errors import InputError


def _any_unsafe(row: dict[str, Any]) -> bool | None:
    labels = [row.get("is_response_0_safe"), row.get("is_response_1_safe")]
    if any(v is None for v in labels):
        return None
    return not all(str(v).lower() in ("true", "1") for v in labels)


@dataclass(frozen=True)
class PromptPreset:
    name: str
    source: str  # readers spec (hub)
    prompt: str  # source column of the prompt text
    category: str | None
    harmful: bool | Callable[[dict[str, Any]], bool | None] | None
    keep: Callable[[dict[str, Any]], bool] | None = None
    keep_rule: str = "all rows"
    unique: bool = False
    note: str = ""


PRESETS: dict[str, PromptPreset] = {p.name: p for p in (
    PromptPreset("PKU-Alignment/PKU-SafeRLHF:test", "PKU-Alignment/PKU-SafeRLHF:test", "prompt", None,
                 _any_unsafe, unique=True, keep_rule="distinct prompts",
                 note="is_harmful = either response labelled unsafe (proxy)"),
    PromptPreset("LibrAI/do-not-answer", "LibrAI/do-not-answer:train", "question", "risk_area", True),
    PromptPreset("allenai/wildguardmix", "allenai/wildguardmix/wildguardtest:test", "prompt", "subcategory", True,
                 keep=lambda r: str(r.get("prompt_harm_label", "")).lower() == "harmful",
                 keep_rule="prompt_harm_label == harmful", note="gated: accept the terms on the hub first"),
    PromptPreset("walledai/XSTest", "walledai/XSTest:test", "prompt", "type", False,
                 keep=lambda r: str(r.get("label", "")).lower() == "safe", keep_rule="label == safe"),
    PromptPreset("natolambert/xstest-v2-copy", "natolambert/xstest-v2-copy:prompts", "prompt", "type", False,
                 keep=lambda r: not str(r.get("type", "")).startswith("contrast"),
                 keep_rule="type not contrast_*"),
)}


def is_preset(spec: str) -> bool:
    return spec in PRESETS


def load_preset(name: str, *, source: str | None = None) -> tuple[Table, dict[str, int]]:
    """The preset's prompts as a canonical Table (`prompt`, `category`, `is_harmful`) and its row counts."""
    preset = PRESETS.get(name)
    if preset is None:
        raise InputError(f"unknown prompt-set preset {name!r}; presets: {', '.join(PRESETS)}")
    table = load_rows(source or preset.source)
    return apply_preset(preset, table)


def apply_preset(preset: PromptPreset, table: Table) -> tuple[Table, dict[str, int]]:
    """Keep, deduplicate and map rows; a missing source column is an error naming it."""
    needed = [c for c in (preset.prompt, preset.category) if c]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(f"{table.source}: preset {preset.name!r} needs column(s) {', '.join(missing)} "
                         f"(columns: {', '.join(table.columns)})")
    counts = {"rows_in": len(table.rows), f"dropped:not({preset.keep_rule})": 0, "dropped:duplicate_prompt": 0}
    seen: set[str] = set()
    rows = []
    for row in table.rows:
        if preset.keep is not None and not preset.keep(row):
            counts[f"dropped:not({preset.keep_rule})"] += 1
            continue
        prompt = row.get(preset.prompt)
        if preset.unique:
            key = str(prompt).strip()
            if key in seen:
                counts["dropped:duplicate_prompt"] += 1
                continue
            seen.add(key)
        harmful = preset.harmful(row) if callable(preset.harmful) else preset.harmful
        rows.append({"prompt": prompt, "category": row.get(preset.category) if preset.category else None,
                     "is_harmful": harmful})
    if not rows:
        raise InputError(f"{table.source}: preset {preset.name!r} kept no rows ({counts})")
    return Table(rows, f"{preset.name} ({table.source})", dict(table.skipped)), counts


# ---------------------------------------------------------------------------------------------- prompt sets

_LABEL = re.compile(r"^[A-Za-z0-9_.@+-]+$")


def split_label(text: str) -> tuple[str | None, str]:
    """`name=spec` → (name, spec); a left side with a path separator is part of the spec, not a label, unless the
    right side is a spec on its own (an `embedded:` name or an existing path) and the whole is no existing path.

    A left side that is no path and no label (`my set=x.jsonl`), or a path-like one before a spec of its own
    (`my/model=embedded:tiny-llama`), is an error about the label: it used to be taken as part of the spec and
    reported as a missing file.
    """
    head, sep, tail = text.partition("=")
    if sep and head and tail and _LABEL.match(head):
        return head, tail
    path_like = any(c in head for c in "/\\:~")
    spec_alone = tail.startswith("embedded:") or Path(tail).expanduser().exists()
    if sep and head and tail and (spec_alone or not path_like) and not Path(text).expanduser().exists():
        bad = sorted({c for c in head if not _LABEL.match(c)})
        raise InputError(f"label {head!r} in {text!r}: a label may hold only letters, digits and _ . @ + - "
                         f"(not {' '.join(repr(c) for c in bad)}); a path with '=' in it must exist")
    return None, text


@dataclass
class PromptSet:
    name: str
    spec: str
    prompts: list[dict[str, Any]]  # prompt, category, is_harmful, row (0-based source row: the row key)
    counts: dict[str, int] = field(default_factory=dict)


def prompt_set_name(text: str) -> str:
    """A `--prompts [NAME=]SPEC` entry's set name: NAME, a local file's stem, else the spec."""
    label, spec = split_label(text)
    local = Path(spec).expanduser()
    return label or (local.stem if local.is_file() else spec)


def load_prompt_set(text: str, columns: dict[str, str] | None = None) -> PromptSet:
    """A prompt set by preset name, embedded: name, hub spec or local file; empty prompts dropped, counted."""
    label, spec = split_label(text)
    counts: dict[str, int] = {}
    if is_preset(spec):
        table, counts = load_preset(spec)
    else:
        table = load_rows(spec, columns=columns)
    sel = select_prompts(table)
    return PromptSet(name=prompt_set_name(text), spec=spec, prompts=sel.prompts, counts={**counts, **sel.counts})
