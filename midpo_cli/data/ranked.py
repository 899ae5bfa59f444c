"""Rank's reading of preference rows: labels parsed, and each prompt's kind (harmful or benign).

Defined once, below the stages, because two of them read it: `rank` balances D_dual by prompt kind, and the
router's probe switch (`stages.router.switch_prompts: ranked`) is fit on every prompt rank scored, with the
kind rank gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midpo_cli.data.filters import harmful_from_labels, select_pairs
from midpo_cli.data.readers import Table, load_rows
from midpo_cli.data.schema import parse_field, parse_optional
from midpo_cli.errors import InputError


def ranked_rows(table: Table) -> tuple[list[dict[str, Any]], Any]:
    """The valid pair rows with their labels **parsed** (a CSV's "false" is False, an id "0.0" is 0).

    Validation is the data layer's (`select_pairs`), so rank keeps exactly the rows every other stage keeps;
    labels come back typed under `_better`, `_safer`, `_safe_0`, `_safe_1` (None where the data has no such
    column) and `_harmful_label` (the data's `is_harmful`): the prompt kind used to balance D_dual
    (see `prompt_is_harmful`).
    """
    valid = select_pairs(table, "reward_model")  # validates rows and drops malformed ones, counted
    rows = []
    for p in valid.pairs:
        raw = table.rows[p.row]
        row = {k: raw[k] for k in ("prompt", "response_0", "response_1") if k in raw}
        row.update({k: v for k, v in raw.items() if k not in row and k not in ("_row",)})
        row.update(_row=p.row, _better=parse_field(raw, "better_response_id"),
                   _safer=parse_optional(raw, "safer_response_id"),
                   _safe_0=parse_optional(raw, "is_response_0_safe"),
                   _safe_1=parse_optional(raw, "is_response_1_safe"),
                   _harmful_label=parse_optional(raw, "is_harmful"))
        rows.append(row)
    return rows, valid


def prompt_is_harmful(r: dict[str, Any]) -> bool:
    """The prompt's kind, for balancing: `harmful_from_labels`, else "some answer is predicted unsafe by the
    cost model" (cost > 0)."""
    harmful = harmful_from_labels(r.get("_harmful_label"), r.get("_safe_0"), r.get("_safe_1"))
    return harmful if harmful is not None else (r["cost_0"] > 0 or r["cost_1"] > 0)


def ranked_prompt_kinds(scored: Path) -> tuple[list[str], list[bool]]:
    """Every distinct prompt rank scored (its `scored.jsonl`) with the kind rank gives it — the labels, else the
    cost model (`prompt_is_harmful`) — for `stages.router.switch_prompts: ranked`.

    Why: D_dual keeps a few dozen prompts (60 pairs on Gemma), and a probe on thousands of features fit on so few
    is overconfident off its training tasks; every training prompt is labelled the same way, so the probe can
    have them all. A prompt any of whose rows rank calls harmful is harmful (rank's own rule, "some answer is
    predicted unsafe", read over all of the prompt's answers)."""
    rows, _ = ranked_rows(load_rows(str(scored)))
    kinds: dict[str, bool] = {}
    for r in rows:
        kinds[r["prompt"]] = kinds.get(r["prompt"], False) or prompt_is_harmful(r)
    return list(kinds), list(kinds.values())


def switch_fit_kinds(path: Path, fit_on: str) -> list[bool | None]:
    """The prompt kinds the probe switch is fit on, read from rank's output without a model: every prompt rank
    scored (its `scored.jsonl`, `stages.router.switch_prompts: ranked`) or each D_dual pair's (`dual.jsonl`,
    `dual`: harmful_from_labels, None where rank left it unknown)."""
    if fit_on == "ranked":
        return list(ranked_prompt_kinds(path)[1])
    return [harmful_from_labels(p.meta.get("is_harmful"), p.chosen_safe, p.rejected_safe)
            for p in select_pairs(load_rows(str(path)), "router").pairs]


def check_switch_kinds(kinds: list[bool | None], source: str, fit_on: str) -> None:
    """The probe switch is a logistic probe of harmful against benign prompts: it needs prompts of both kinds, and
    each prompt's kind. Checked before the router trains (the fit came after training, and failed there with a
    bare ValueError, the finished router left in `.previous/`)."""
    unknown = [i for i, kind in enumerate(kinds) if kind is None]
    if unknown:
        raise InputError(f"{source}: pair {unknown[0]} has no is_harmful (nor safety labels); the probe switch "
                         f"(stages.router.switch_prompts: {fit_on}) needs every prompt's kind; re-run rank")
    if len(set(kinds)) < 2:
        have = "none" if not kinds else f"all {len(kinds)} {'harmful' if kinds[0] else 'benign'}"
        raise InputError(f"{source}: the probe switch (stages.router.switch_prompts: {fit_on}) is fit on harmful and "
                         f"benign prompts, and these are {have}; give data.train prompts of both kinds (an "
                         "is_harmful column, or safety labels)")
