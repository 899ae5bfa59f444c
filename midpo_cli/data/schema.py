"""The canonical row schemas (docs/design.md §5) and the per-field checks that decide a row is malformed.

Pair rows follow PKU-SafeRLHF: `prompt, response_0, response_1, better_response_id, safer_response_id,
is_response_0_safe, is_response_1_safe`. Prompt sets: `prompt` (+ optional `category`, `is_harmful`).
SFT rows: `prompt, answer`; corpus rows (plain text for SFT's `corpus`): `text`. D_dual (the `rank` stage's
output) and other preference files: `prompt, chosen, rejected`.

Field values are checked with pydantic in its lax mode, so what PKU-SafeRLHF and CSV files contain is
accepted: ids as 0/1, 0.0/1.0 or "0"/"1"; safety flags as booleans, 0/1 or "true"/"false". Text must
be a real string — a number where an answer should be is a malformed row, not text.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from midpo_cli.errors import InputError

PAIR_COLUMNS = (
    "prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
    "is_response_0_safe", "is_response_1_safe",
)
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
PROMPT_COLUMNS = ("prompt",)
SFT_COLUMNS = ("prompt", "answer")
TEXT_COLUMNS = ("text",)

TEXT = TypeAdapter(str)
RESPONSE_ID = TypeAdapter(Annotated[int, Field(ge=0, le=1)])
FLAG = TypeAdapter(bool)

FIELD_TYPES: dict[str, TypeAdapter[Any]] = {
    "prompt": TEXT, "response_0": TEXT, "response_1": TEXT, "chosen": TEXT, "rejected": TEXT, "answer": TEXT,
    "text": TEXT,
    "better_response_id": RESPONSE_ID, "safer_response_id": RESPONSE_ID,
    "is_response_0_safe": FLAG, "is_response_1_safe": FLAG,
    "is_chosen_safe": FLAG, "is_rejected_safe": FLAG, "is_harmful": FLAG,
}


class Malformed(ValueError):
    """A row value that is missing or has the wrong type; the row is dropped and counted, not fatal."""


def parse_field(row: dict[str, Any], name: str) -> Any:
    """The typed value of `row[name]`; raises Malformed when missing, null or of the wrong type."""
    if name not in row or row[name] is None:
        raise Malformed(f"missing {name}")
    try:
        return FIELD_TYPES[name].validate_python(row[name])
    except ValidationError as exc:
        raise Malformed(f"{name}: {exc.errors()[0]['msg']}") from None


def parse_optional(row: dict[str, Any], name: str) -> Any:
    """Like parse_field, but a missing/null/unparseable optional field reads as None."""
    try:
        return parse_field(row, name)
    except Malformed:
        return None


def require_columns(columns: list[str], required: tuple[str, ...] | list[str], source: str,
                    purpose: str = "") -> None:
    """Fail when a required column exists in no row; name it and list the ones that do exist."""
    for name in required:
        if name not in columns:
            what = f" for {purpose}" if purpose else ""
            raise InputError(
                f"{source}: missing column {name!r}{what} (columns: {', '.join(columns) or 'none'}); "
                "map it with data.columns (e.g. --columns prompt=question)"
            )


def parse_columns_option(text: str | None) -> dict[str, str]:
    """`prompt=question,response_0=a` → {"prompt": "question", "response_0": "a"} (the --columns flag)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        canonical, sep, source = (s.strip() for s in item.partition("="))
        if not sep or not canonical or not source:
            raise InputError(f"--columns: {item!r} is not CANONICAL=SOURCE (e.g. prompt=question)")
        if canonical in out:
            raise InputError(f"--columns: {canonical!r} is mapped twice")
        out[canonical] = source
    return out
