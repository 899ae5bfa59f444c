"""`midpo recipe check|show`: validate a recipe (every error at once) and print it resolved; print or copy
a shipped recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt, SetOpt


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Validate and inspect recipes.", no_args_is_help=True)
    sub.command("check")(check)
    sub.command("show")(show)
    app.add_typer(sub, name="recipe")


def check(
    file: Path = typer.Argument(..., help="Recipe YAML file, or a shipped recipe's name."),
    overrides: list[str] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Validate FILE (and --set overrides) and every file, folder and model the stages that would run name; print
    the resolved recipe, or every problem with its line or key."""
    from rich.markup import escape

    from midpo_cli.pipeline.preflight import check_whole_run
    from midpo_cli.recipe import dump_yaml, load_recipe

    recipe = load_recipe(file, overrides or [])
    check_whole_run(recipe)
    resolved = recipe.resolved()
    if as_json:
        console.emit_json(resolved)
    else:
        typer.echo(dump_yaml(resolved), nl=False)
    console.log(f"[green]ok[/green] {escape(str(file))}", markup=True)


def show(
    name: str = typer.Argument(None, help="A shipped recipe: quickstart, local-model-cpu, ... (none: list them)."),
    to: Path = typer.Option(None, "--to", help="Copy it to this file (refused if the file exists)."),
) -> None:
    """Print a recipe shipped with midpo, or copy it with --to to edit; no NAME lists the shipped recipes."""
    from midpo_cli.errors import InputError
    from midpo_cli.io import atomic_write_text
    from midpo_cli.recipe import shipped_names, shipped_recipe

    if name is None:
        console.print_result("\n".join(shipped_names()))
        return
    text = shipped_recipe(name).read_text(encoding="utf-8")
    if to is None:
        typer.echo(text, nl=False)
        return
    if to.exists():
        raise InputError(f"{to} exists; choose another file or remove it first")
    atomic_write_text(to, text)
    console.log(f"wrote {to}; run it with `midpo pipeline run {to}`")
