"""The embedded default: a tiny model and a toy world shipped inside the package (docs/design.md §7).

A data spec may ask for a balanced slice of a shipped set, `embedded:toy-safety/train@400`: the first n/2
harmful and n/2 benign rows in file order (the files are shuffled), interleaved (`balanced`). Why: a pretrained
model on a CPU (recipes/local-model-cpu.yaml) cannot afford a full pass over the 2,000-pair split at every stage,
and the slices must ship with the package, not come from a repository script. (`@N`, not a `?n=N` query: PyYAML
refuses a `?` inside a `[...]` list.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from midpo_cli.errors import InputError

ASSETS = Path(__file__).resolve().parent
PREFIX = "embedded:"
_SIZE = re.compile(r"^(?P<name>[^@]+)@(?P<n>[0-9]+)$")
Row = TypeVar("Row", bound=Mapping[str, Any])


def is_embedded(spec: str) -> bool:
    return spec.startswith(PREFIX)


def list_embedded() -> list[str]:
    """Every name `embedded:` resolves, for error messages and `midpo data show --help`."""
    names = []
    for child in sorted(ASSETS.iterdir()):
        if child.is_dir() and not child.name.startswith(("_", ".")):
            if (child / "config.json").exists():
                names.append(f"{PREFIX}{child.name}")
            names += [f"{PREFIX}{child.name}/{f.stem}" for f in sorted(child.glob("*.jsonl"))]
    return names


def split_size(spec: str) -> tuple[str, int | None]:
    """`embedded:toy-safety/train@400` → (`embedded:toy-safety/train`, 400); no `@N` → (spec, None)."""
    if "@" not in spec:
        return spec, None
    found = _SIZE.match(spec)
    if found is None or int(found["n"]) == 0:
        raise InputError(f"{spec!r}: a slice of an embedded set is written NAME@N with N > 0, e.g. "
                         "embedded:toy-safety/train@400")
    return found["name"], int(found["n"])


def balanced(rows: Sequence[Row], n: int, source: str = "") -> list[Row]:
    """The first n/2 harmful and n/2 benign rows (`is_harmful`) in their order, interleaved; the other kind fills
    in where one runs short. More rows than there are is an error naming the set."""
    if n > len(rows):
        raise InputError(f"{source or 'the set'}@{n}: it has only {len(rows)} rows")
    every_harmful = [r for r in rows if r.get("is_harmful")]
    every_benign = [r for r in rows if not r.get("is_harmful")]
    harmful = every_harmful[: max(n // 2, n - len(every_benign))]
    benign = every_benign[: n - len(harmful)]
    return [r for pair in zip(harmful, benign, strict=False) for r in pair] + harmful[len(benign):] + \
        benign[len(harmful):]


def resolve_embedded(spec: str) -> Path:
    """`embedded:toy-safety/train` (or a slice of it, `…@400`) → the shipped JSONL; `embedded:tiny-llama` →
    its folder."""
    spec, size = split_size(spec)
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    folder = ASSETS / name
    if folder.is_dir() and (folder / "config.json").exists():
        if size is not None:
            raise InputError(f"{spec}@{size}: a model has no slices; `@N` takes rows of a data set")
        return folder
    file = ASSETS / f"{name}.jsonl"
    if file.is_file():
        return file
    raise InputError(f"unknown embedded asset {spec!r}; available: {', '.join(list_embedded()) or 'none'}")
