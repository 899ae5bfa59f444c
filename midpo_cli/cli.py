"""The `midpo` typer app: global options, error mapping, and the commands.

Nothing here (or in commands/) imports torch, transformers, datasets or deepspeed at module
level: `midpo --help` and `midpo recipe check` must answer in well under a second.
"""

from __future__ import annotations

import errno
import importlib
import sys

import typer

from midpo_cli import __version__, console
from midpo_cli.commands import (
    chat_cmd,
    data_cmd,
    env_cmd,
    export_cmd,
    generate_cmd,
    help_format,
    pipeline_cmd,
    recipe_cmd,
    score_cmd,
    serve_cmd,
    stage_cmds,
)
from midpo_cli.errors import MidpoError

app = typer.Typer(
    name="midpo",
    help="Align language models for safety and helpfulness with MidPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

DEBUG_HINT = "(rerun with --debug for a traceback)"

# Each module exposes register(app); order is the order shown in --help.
COMMAND_MODULES = (pipeline_cmd, stage_cmds, generate_cmd, score_cmd, chat_cmd, serve_cmd, export_cmd, data_cmd,
                   recipe_cmd, env_cmd)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"midpo {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Align language models for safety and helpfulness with MidPO."""
    console.configure(quiet=quiet, debug=debug)
    if not debug:
        console.hide_library_warnings()


for _module in COMMAND_MODULES:
    _module.register(app)


def _escape_help(typer_app: typer.Typer) -> None:
    """Help texts are plain text with literal brackets (`org/name[/config][:split]`); rich would read them
    as markup tags and crash `--help`, so every command's docstring and option help is escaped once here."""
    import inspect

    from rich.markup import escape

    for command in typer_app.registered_commands:
        doc = command.help or inspect.getdoc(command.callback) or ""
        command.help = escape(doc) if doc else command.help
        for param in inspect.signature(command.callback).parameters.values():
            info = param.default
            if isinstance(getattr(info, "help", None), str) and not getattr(info, "_midpo_escaped", False):
                info.help = escape(info.help)
                info._midpo_escaped = True  # shared option objects (RecipeOpt, ...) are escaped once
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _escape_help(group.typer_instance)


_escape_help(app)
help_format.install()


def _click_classes(name: str) -> tuple[type, ...]:
    """click's exception class `name`: typer ≥ 0.2x raises its vendored copy (typer._click), older typer click's."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(exc: OSError) -> str:
    """Disk full is the user's to fix, not a crash: one line, exit 2. Nothing finished is lost: artifacts are
    written to a temp name and renamed (io.atomic_write_text), answers appended whole and cut back on resume."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"no space left on the device{where} ({exc.strerror or 'disk full'}); free some space and rerun the "
            "same command: finished files were not touched")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: map midpo's errors to one line and a stable exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        result = app(args=argv, standalone_mode=False)
    except MidpoError as exc:
        if debug:
            raise
        # bad input (exit 2) is fully described by its message; a traceback would not help the user
        console.error(str(exc), hint=None if exc.exit_code == 2 else DEBUG_HINT)
        return exc.exit_code
    except KeyboardInterrupt:
        console.err.print("[red]interrupted[/red]")
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors and friends
        if isinstance(exc, _click_classes("Exit")):
            return exc.exit_code
        if isinstance(exc, _click_classes("ClickException")):
            exc.show()  # usage errors: the usage line and the message, exit 2
            return exc.exit_code
        if isinstance(exc, _click_classes("Abort")):
            console.err.print("[red]aborted[/red]")
            return 130
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            console.error(disk_full_message(exc))
            return 2
        console.error(f"{type(exc).__name__}: {exc}", hint=DEBUG_HINT)
        return 1
    # standalone_mode=False: click returns a `typer.Exit(code)` raised inside a command as its value
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
