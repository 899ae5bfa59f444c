"""Which files make a model folder, without importing torch (preflight checks them before any model loads)."""

from __future__ import annotations

from pathlib import Path

from midpo_cli.errors import InputError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def has_weights(folder: str | Path) -> bool:
    """Whether a local model folder holds weight files (the embedded tiny LLaMA holds none)."""
    folder = Path(folder)
    return any((folder / f).exists() for f in WEIGHT_FILES) or any(folder.glob("*.safetensors"))


def refuse_weightless(folder: str | Path, name: str) -> None:
    """A config.json without weight files is built with random weights only for midpo's embedded assets (the
    tiny LLaMA ships no weights by design); a user's folder like that was silently used untrained (issue 27)."""
    from midpo_cli.assets import ASSETS

    folder = Path(folder)
    if has_weights(folder) or folder.resolve().is_relative_to(ASSETS):
        return
    raise InputError(f"model {name!r}: {folder} has config.json but no weight files ({', '.join(WEIGHT_FILES[::2])}"
                     " or *.safetensors); it would run with random weights")
