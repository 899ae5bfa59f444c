"""Every recipe snippet in README.md and docs/*.md parses with the recipe schema, so the docs cannot drift
from `midpo_cli/recipe.py` (issue 26: design §4's example once failed with `stages.rank.balance ... got True`).

What is checked: every fenced block tagged ```yaml (or ```yml) in README.md and docs/*.md is a recipe and goes
through `load_recipe` exactly as `midpo recipe check` would read it: keys it leaves out take their defaults
(the schema's own merge), unknown keys, wrong types and bad choices fail with their key path.

Fragments: a block that shows only part of a recipe (say one stage's section) is marked by an HTML comment
on the line just before its fence, `<!-- recipe fragment: stages.router -->`; it is placed under that key
path (dotted) and then validated the same way, merged into the defaults. A YAML block that is not a recipe at
all does not belong in these files under the `yaml` tag: tag it `text`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from midpo_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```ya?ml\s*$")
FRAGMENT = re.compile(r"^<!--\s*recipe fragment:\s*([A-Za-z0-9_.]+)\s*-->\s*$")


def yaml_blocks() -> list[tuple[str, int, str, str | None]]:
    """(file, line of the opening fence, block text, fragment key path or None) for each ```yaml block."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if FENCE.match(lines[i].strip()):
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
                marker = FRAGMENT.match(lines[i - 1].strip()) if i else None
                out.append((path.relative_to(ROOT).as_posix(), i + 1, "\n".join(lines[i + 1:end]),
                            marker[1] if marker else None))
                i = end
            i += 1
    return out


BLOCKS = yaml_blocks()


def test_the_docs_hold_recipe_blocks() -> None:
    assert any(f == "docs/design.md" for f, *_ in BLOCKS), "design §4's example recipe is no longer a ```yaml block"


@pytest.mark.parametrize(("file", "line", "text", "fragment"), BLOCKS, ids=[f"{f}:{n}" for f, n, *_ in BLOCKS])
def test_every_recipe_block_in_the_docs_parses_with_the_schema(file, line, text, fragment, tmp_path) -> None:
    if fragment is None:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(text + "\n", encoding="utf-8")
        load_recipe(recipe)
        return
    data = yaml.safe_load(text)
    for key in reversed(fragment.split(".")):
        data = {key: data}
    load_recipe(None, base=data)
