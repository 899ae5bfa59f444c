"""`midpo recipe check`: validate a recipe (every error at once) and print it resolved."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt, SetOpt


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Validate and inspect recipes.", no_args_is_help=True)
    sub.command("check")(check)
    app.add_typer(sub, name="recipe")


def check(
    file: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: list[str] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Validate FILE (and --set overrides); print the resolved recipe or every problem with its line."""
    from rich.markup import escape

    from midpo_cli.recipe import dump_yaml, load_recipe

    recipe = load_recipe(file, overrides or [])
    resolved = recipe.resolved()
    if as_json:
        console.emit_json(resolved)
    else:
        typer.echo(dump_yaml(resolved), nl=False)
    console.log(f"[green]ok[/green] {escape(str(file))}", markup=True)
