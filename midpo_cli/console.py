"""One stderr console for progress and logs; stdout carries results: --json summaries and result tables."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

_state = {"quiet": False, "debug": False, "json": False}
err = Console(stderr=True, highlight=False)


def configure(*, quiet: bool = False, debug: bool = False) -> None:
    _state["quiet"] = quiet
    _state["debug"] = debug


def quiet() -> bool:
    return bool(_state["quiet"])


def debug() -> bool:
    return bool(_state["debug"])


def log(message: str, *, style: str | None = None, markup: bool = False) -> None:
    """Progress/info line on stderr, silenced by --quiet.

    Plain text by default: messages carry user text (paths, column names, `[[2, 0]]`) that rich would
    otherwise read as markup tags and crash on or swallow. A caller that styles with markup passes
    markup=True and escapes its own user parts with `escape`.
    """
    if not _state["quiet"]:
        err.print(message, style=style, markup=markup, highlight=False)


def warn(message: str) -> None:
    """Warnings are shown even with --quiet: they are what a user must not miss (plain text, escaped)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def error(message: str, *, hint: str | None = None) -> None:
    """The one `error: ...` line a failed command leaves on stderr (user text escaped)."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(hint, style="dim", markup=False, highlight=False)


def counts_text(counts: dict[str, int]) -> str:
    """Filter/encoding accounting as a line a person reads: "200 of 400 kept (not exactly one safe 200)".

    The dicts keep machine keys (`dropped:not_exactly_one_safe`) for manifests; logs show only the
    non-zero reasons, in words.
    """
    total = next((counts[k] for k in ("rows_in", "pairs_in") if k in counts), None)
    reasons = [f"{k.removeprefix('dropped:').replace(':', ' ').replace('_', ' ')} {v}" for k, v in counts.items()
               if v and k not in ("rows_in", "pairs_in", "kept")]
    kept = counts.get("kept")
    head = f"{kept} of {total} kept" if kept is not None and total is not None else f"{kept} kept"
    return head + (f" ({', '.join(reasons)})" if reasons else "")


def table(title: str, columns: list[str], *, names: int = 1):
    """A result table that fits the terminal (80 columns when piped) by wrapping, never by cutting: the first
    `names` columns (stage, prompt set) stay whole on one line, the others wrap at spaces and fold a word
    longer than the column onto the next line instead of rich's '…'."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=Text(title))  # a run dir or prompt-set name is text, never markup
    for i, name in enumerate(columns):
        out.add_column(name, no_wrap=i < names, overflow="fold")
    return out


def print_result(renderable: Any) -> None:
    """A result (a table people read) on stdout, like --json: `midpo pipeline status RUN 2>/dev/null` shows it.
    A new Console per call so COLUMNS is read when it is printed."""
    Console(highlight=False).print(renderable)


def emit_json(payload: Any) -> None:
    """Machine-readable summary on stdout, one JSON document."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()
