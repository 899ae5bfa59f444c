"""docs/design.md §3's module map names every module of the package and no module that does not exist.

The map is the first fenced block of §3: an indented tree, two spaces a level, each line a folder (`name/`) or
a module (`name.py`) followed by what it holds. A subpackage's `__init__.py` may go unlisted (its folder line
says what the folder holds); the package root's is listed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "midpo_cli"


def map_block() -> list[str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text[text.index("## 3. Architecture"):]
    section = section[:section.index("\n## 4.")]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "docs/design.md §3 has no fenced module map"
    return block.group(1).splitlines()


def mapped_paths(lines: list[str]) -> set[str]:
    """Every `folder/` and `module.py` of the tree under `midpo_cli/`, as paths relative to the package."""
    stack: list[str] = []
    paths: set[str] = set()
    inside = False
    for line in lines:
        name = line.strip().split(" ")[0] if line.strip() else ""
        if name == "midpo_cli/":
            inside = True
            continue
        indent = len(line) - len(line.lstrip(" "))
        if not inside or not name or indent == 0:
            inside = inside and indent > 0
            continue
        level = indent // 2 - 1
        assert indent % 2 == 0 and level <= len(stack), f"design.md §3: bad indentation: {line!r}"
        stack = stack[:level]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            paths.add("/".join(stack) + "/")
        elif name.endswith(".py"):
            paths.add("/".join([*stack, name]))
    return paths


def tree_paths() -> set[str]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if "/" in rel and rel.endswith("/__init__.py"):
            out.add(rel.removesuffix("__init__.py"))  # the folder stands for it
        else:
            out.add(rel)
    return out


def test_the_module_map_names_every_module_and_only_modules_that_exist() -> None:
    mapped, real = mapped_paths(map_block()), tree_paths()
    assert not real - mapped, f"modules missing from docs/design.md §3: {sorted(real - mapped)}"
    assert not mapped - real, f"docs/design.md §3 names modules that do not exist: {sorted(mapped - real)}"


def test_the_parser_reads_nesting() -> None:
    """A map that misplaces a module under the wrong folder must not pass: the parser keeps the folder path."""
    lines = ["midpo_cli/", "  a.py  x", "  b/  y", "    c.py  z", "    d/  w", "      e.py  v", "  f.py  u"]
    assert mapped_paths(lines) == {"a.py", "b/", "b/c.py", "b/d/", "b/d/e.py", "f.py"}
