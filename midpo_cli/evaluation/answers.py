"""The answers file (`answers.jsonl`): one JSON row per (model, prompt set, prompt), appended batch by batch.

The generate stage writes and resumes it (`read_answers`, `append_rows`); the score stage and `midpo score`
read it (`read_answer_rows`). Why append + fsync and not "rewrite a temp file + os.replace" per batch:
rewriting costs O(file) per batch (quadratic over a run), appending O(batch). A crash during an append can
leave a partial last line: resuming cuts it off (and says so), scoring refuses it and says to resume.
Lines are parsed by `io.jsonl_rows`, the package's one JSON-lines parser.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.io import JsonlError, jsonl_rows

ANSWER_KEYS = ("model", "prompt_set", "index", "answer")  # what makes a line an answers row
REQUIRED = ("model", "prompt_set", "index", "prompt", "answer")  # what scoring reads of each row
ROW_START = b'{"model": '  # how every row append_rows writes begins (json.dumps of a dict whose first key is model)


def read_answer_rows(path: str | Path) -> list[dict[str, Any]]:
    """Answer rows from `midpo generate` (or any JSONL with the REQUIRED fields), for scoring."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"answers file not found: {path}")
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, row in jsonl_rows(fh, str(path), cut_off="rerun `midpo generate` to repair it"):
                if row is None:
                    continue
                missing = [k for k in REQUIRED if k not in row]
                if missing:
                    raise InputError(f"{path}: line {number}: missing field(s) {', '.join(missing)}")
                rows.append(row)
    except UnicodeDecodeError as exc:  # a binary file: one line naming it, not a traceback (exit 1)
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); not an answers file from `midpo generate`?"
                         ) from None
    if not rows:
        raise InputError(f"{path}: no answers")
    return rows


def model_specs(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each model label's folder (or hub name) as generate recorded it (`model_spec`): what the verdict's command
    names. Rows without one (answers written by hand) are left out."""
    out: dict[str, str] = {}
    for r in rows:
        if r.get("model_spec") and str(r["model"]) not in out:
            out[str(r["model"])] = str(r["model_spec"])
    return out


def read_answers(path: Path) -> list[dict[str, Any]]:
    """Rows of an answers file about to be resumed. Everything is checked before anything is written: a
    file that is not an answers file is refused untouched; then a trailing partial line (a crash mid-append)
    is cut off and reported, and a complete last row without its newline gets one."""
    if not path.exists():
        return []
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")
    rows = _answer_rows(path, complete, 1)
    fix: bytes | None = None  # what to do with the last line: None = nothing
    if tail.strip():
        try:
            rows += _answer_rows(path, [tail], len(complete) + 1)
            fix = b"\n"
        except InputError:
            if not (tail.startswith(ROW_START) or ROW_START.startswith(tail)):  # no start of a row append_rows wrote
                raise
            fix = b""
    if fix == b"\n":
        with open(path, "ab") as fh:
            fh.write(fix)
    elif fix == b"":
        console.warn(f"{path}: dropping a partial last line ({len(tail)} bytes) left by an interrupted run")
        with open(path, "r+b") as fh:
            fh.truncate(len(data) - len(tail))
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def _answer_rows(path: Path, lines: Sequence[bytes], start: int) -> list[dict[str, Any]]:
    """The rows of these lines (numbered from `start`); any line that is not an answers row is an error."""
    def not_answers(number: int) -> InputError:
        return InputError(f"{path}: line {number} is not an answers row (JSON with {', '.join(ANSWER_KEYS)}); "
                          "not an answers file? Give another --output")

    def text(raw: Sequence[bytes]) -> Iterator[str]:
        for number, line in enumerate(raw, start=start):
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                raise not_answers(number) from None

    try:
        numbered = list(jsonl_rows(text(lines), str(path), start=start))
    except JsonlError as exc:
        raise not_answers(exc.line) from None
    for number, row in numbered:
        if row is not None and any(k not in row for k in ANSWER_KEYS):
            raise not_answers(number)
    return [row for _, row in numbered if row is not None]


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """One write of whole lines, then fsync: the batch is on disk before the next one starts."""
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
