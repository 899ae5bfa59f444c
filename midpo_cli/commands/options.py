"""Options shared by several commands, declared once so their help text stays identical."""

from __future__ import annotations

from pathlib import Path

import typer

RecipeOpt = typer.Option(None, "--recipe", "-r",
                         help="Recipe YAML (default: the shipped quickstart, `midpo recipe show quickstart`).")
SetOpt = typer.Option(None, "--set", help="Override a recipe key: --set train.lr=3e-5 (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary on stdout.")


def recipe_from(recipe: Path | None, overrides: list[str] | None, extra: list | None = None):
    """Load the recipe with --set overrides plus command-specific overrides (flags win over --set).

    `extra` items are "key=value" or ("key=value", "--flag"): a bad value is then blamed on the flag.
    No --recipe means the shipped quickstart recipe, the same file `midpo recipe show quickstart` prints.
    """
    from midpo_cli.recipe import QUICKSTART, load_recipe, shipped_recipe

    return load_recipe(recipe if recipe is not None else shipped_recipe(QUICKSTART), [*(overrides or []),
                                                                                       *(extra or [])])
