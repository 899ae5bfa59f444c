"""One stderr console for progress and logs; stdout carries results: --json summaries and result tables.

Progress of every long step goes through `progress` (a `Bar`): a rich bar on a terminal, plain lines in a log
file or CI; the training loop, generation, scoring, the reference and margin passes and the dev choices all use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape

_state = {"quiet": False, "debug": False, "json": False}
err = Console(stderr=True, highlight=False)


def configure(*, quiet: bool = False, debug: bool = False) -> None:
    _state["quiet"] = quiet
    _state["debug"] = debug


# the libraries midpo drives: their deprecation notices (transformers' `is_gradient_checkpointing`, read by peft)
# address the code that calls them, not midpo's users
LIBRARIES = r"(transformers|peft|deepspeed|torch|datasets|accelerate|huggingface_hub|safetensors)\b"


def hide_library_warnings() -> None:
    """FutureWarning and DeprecationWarning raised inside LIBRARIES stay out of midpo's output (--debug shows
    them): a notice printed between progress lines reads like a problem of the run."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)


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


# --------------------------------------------------------------------------------------------- progress

PLAIN_EVERY = 10.0  # seconds between two plain progress lines of one step (a log file, CI)
_bars: list[Bar] = []  # the open bars, outermost first: a nested bar's label names the steps around it
_live: dict[str, Any] = {"display": None}  # the one rich display every bar on a terminal shares


def format_eta(seconds: float) -> str:
    """`01:05`, or `1:02:03` past an hour: a duration as a clock."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _display() -> Any:
    """The shared rich display, started with the first bar on a terminal (rich allows one live display at once,
    so a bar opened inside another, e.g. the dev choice's answers inside a stage, must join it)."""
    if _live["display"] is None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        _live["display"] = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(),
                                        MofNCompleteColumn(), TextColumn("{task.fields[info]}", markup=False),
                                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
        _live["display"].start()
    return _live["display"]


class Bar:
    """The progress of one step: `total` units (None: a step that only names the counted steps inside it).

    On a terminal, a rich bar (a bar inside a counted one disappears when done); elsewhere, a plain line at most
    every PLAIN_EVERY seconds and one when it ends (`lines=False`: the caller writes its own, as training does);
    silent under --quiet. Bars nest: `progress("router: switch threshold")` around the dev answers names them.
    """

    def __init__(self, description: str, total: int | None = None, *, unit: str = "", completed: int = 0,
                 lines: bool = True) -> None:
        self.description, self.total, self.unit, self.lines = description, total, unit, lines
        self.completed, self.first, self.info = completed, completed, ""
        self.started = self.last_line = time.perf_counter()
        self.outer = list(_bars)
        self.task = None
        _bars.append(self)
        if total is not None and not quiet() and err.is_terminal:
            self.task = _display().add_task(self.label(), total=total, completed=completed, info="")

    def label(self) -> str:
        """`safety_expert: select: dev · scoring with the cost model`: this step inside the ones around it."""
        return " · ".join(b.description for b in [*self.outer, self])

    def nested(self) -> bool:
        """Inside a counted step: its own end is part of that step's, so it prints no end line."""
        return any(b.total is not None for b in self.outer)

    def advance(self, n: int = 1, *, info: str | None = None) -> None:
        self.update(completed=self.completed + n, info=info)

    def update(self, *, completed: int | None = None, info: str | None = None, description: str | None = None
               ) -> None:
        """Move the bar, replace its info text (a rate, a loss) or its description (a plain line only on a move)."""
        moved = completed is not None and completed != self.completed
        self.completed = self.completed if completed is None else completed
        self.info = self.info if info is None else info
        self.description = self.description if description is None else description
        if self.task is not None:
            _display().update(self.task, completed=self.completed, info=self.info, description=self.label())
        elif moved and self._plain() and time.perf_counter() - self.last_line >= PLAIN_EVERY:
            self.last_line = time.perf_counter()
            self._print(f"{self.completed}/{self.total} {self.unit} ({self._percent()}) {self._rate()} "
                        f"ETA {self._eta()}")

    def close(self) -> None:
        if self in _bars:
            _bars.remove(self)
        if self.task is not None and self.nested():
            _display().remove_task(self.task)
        elif self._plain() and not self.nested() and self.total:
            self._print(f"{self.completed}/{self.total} {self.unit} in "
                        f"{format_eta(time.perf_counter() - self.started)} ({self._rate()})")
        if not _bars and _live["display"] is not None:
            _live["display"].stop()
            _live["display"] = None

    def _plain(self) -> bool:
        return self.lines and self.total is not None and not quiet() and not err.is_terminal

    def _print(self, text: str) -> None:
        # one line per report, never wrapped: log files and CI read them
        err.print(f"{self.label()}: {text}{f' · {self.info}' if self.info else ''}", soft_wrap=True,
                  highlight=False, markup=False)

    def _percent(self) -> str:
        return f"{100 * self.completed / self.total:.0f}%" if self.total else "?"

    def _rate(self) -> str:
        per_s = (self.completed - self.first) / max(time.perf_counter() - self.started, 1e-9)
        return f"{per_s:.1f} {self.unit}/s" if per_s < 100 else f"{per_s:.0f} {self.unit}/s"

    def _eta(self) -> str:
        done = self.completed - self.first
        left = (time.perf_counter() - self.started) / done * (self.total - self.completed) if done > 0 else math.nan
        return format_eta(left) if math.isfinite(left) else "?"


@contextlib.contextmanager
def progress(description: str, total: int | None = None, *, unit: str = "") -> Iterator[Bar]:
    """A `Bar` for the duration of a step; closed however the step ends."""
    bar = Bar(description, total, unit=unit)
    try:
        yield bar
    finally:
        bar.close()
