"""A score folder read back (`midpo report` re-draws the tables and report.html from it without scoring again)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError
from midpo_cli.io import read_json


def load_scores(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """(rows of scores.csv, summary.json, folder) from a score folder, one of its files, or a run dir."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not (folder / "summary.json").is_file() and (folder / "score" / "summary.json").is_file():
        folder = folder / "score"
    summary_path, scores_path = folder / "summary.json", folder / "scores.csv"
    for p in (summary_path, scores_path):
        if not p.is_file():
            raise InputError(f"{p} not found; give a `midpo score` output folder or a run dir with score/")
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), list):
        raise InputError(f"{summary_path}: no 'models' list; not a summary written by `midpo score`")
    try:
        with open(scores_path, encoding="utf-8", newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{scores_path}: not a readable scores CSV ({type(exc).__name__})") from None
    return rows, summary, folder
