"""The embedded default: a tiny model and a toy world shipped inside the package (docs/design.md §7)."""

from __future__ import annotations

from pathlib import Path

from midpo_cli.errors import InputError

ASSETS = Path(__file__).resolve().parent
PREFIX = "embedded:"


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


def resolve_embedded(spec: str) -> Path:
    """`embedded:toy-safety/train` → the shipped JSONL; `embedded:tiny-llama` → its folder."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    folder = ASSETS / name
    if folder.is_dir() and (folder / "config.json").exists():
        return folder
    file = ASSETS / f"{name}.jsonl"
    if file.is_file():
        return file
    raise InputError(f"unknown embedded asset {spec!r}; available: {', '.join(list_embedded()) or 'none'}")
