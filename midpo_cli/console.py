"""One stderr console for progress and logs; stdout is reserved for --json summaries."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

_state = {"quiet": False, "debug": False, "json": False}
err = Console(stderr=True, highlight=False)


def configure(*, quiet: bool = False, debug: bool = False) -> None:
    _state["quiet"] = quiet
    _state["debug"] = debug


def quiet() -> bool:
    return bool(_state["quiet"])


def debug() -> bool:
    return bool(_state["debug"])


def log(message: str, *, style: str | None = None) -> None:
    """Progress/info line on stderr, silenced by --quiet."""
    if not _state["quiet"]:
        err.print(message, style=style)


def warn(message: str) -> None:
    """Warnings are shown even with --quiet: they are what a user must not miss."""
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def emit_json(payload: Any) -> None:
    """Machine-readable summary on stdout, one JSON document."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()
