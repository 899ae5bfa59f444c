"""How option types read in `--help`: flags show no type, choices wrap between choices, never inside one.

typer ≥ 0.2x (which vendors click as `typer._click`) prints every option's type in the rich help panel,
`<bool>` for an on/off flag too, and lets a long choice list `<none|deepspeed|torchrun>` fold mid-word at
80 columns. midpo's help shows flags bare, as click and argparse do, and spaces the choices so the panel
wraps between them. Only the text shown changes; parsing is typer's.
"""

from __future__ import annotations


def shown_type(option, shown: str | None) -> str | None:
    """The type text for `option` in the help panel: None for a flag, choices spaced so they can wrap."""
    if getattr(option, "is_flag", False):
        return None
    return shown.replace("|", " | ") if shown else shown


def install() -> None:
    """Route typer's help-type text through `shown_type` (a no-op on a typer without rich help types)."""
    try:
        from typer.core import TyperOption
    except ImportError:
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_midpo", False):
        return

    def display_type_rich(self, ctx):
        return shown_type(self, original(self, ctx))

    display_type_rich._midpo = True
    TyperOption.display_type_rich = display_type_rich
