"""The recipes shipped with midpo (`recipes/*.yaml`, package data as `midpo_cli/recipes/`).

`midpo_cli/recipes` is a link to the repository's `recipes/`, so a checkout and a wheel read the same
files, and the quickstart's settings have one source: `recipes/quickstart.yaml` is both the file the
README runs and what every command without `--recipe` loads.
"""

from __future__ import annotations

from pathlib import Path

from midpo_cli.errors import InputError

FOLDER = Path(__file__).resolve().parent / "recipes"
QUICKSTART = "quickstart"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def shipped_recipe(name: str) -> Path:
    """The shipped recipe `name` (`quickstart` or `quickstart.yaml`); an unknown name lists the known ones."""
    path = FOLDER / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise InputError(f"no shipped recipe {name!r}; shipped: {', '.join(shipped_names()) or 'none found'}")
    return path
