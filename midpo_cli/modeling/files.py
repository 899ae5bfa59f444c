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


def refuse_weightless(folder: str | Path, label: str) -> None:
    """A config.json without weight files is built with random weights only for midpo's embedded assets (the
    tiny LLaMA ships no weights by design); a user's folder like that would silently be used untrained."""
    from midpo_cli.assets import ASSETS

    folder = Path(folder)
    if has_weights(folder) or folder.resolve().is_relative_to(ASSETS):
        return
    raise InputError(f"{label}: {folder} has config.json but no weight files ({', '.join(WEIGHT_FILES[::2])}"
                     " or *.safetensors); it would run with random weights")


def check_weight_files(folder: str | Path) -> None:
    """Read each weight file's header, not its tensors: a truncated safetensors file and a pickle that names
    anything but torch's tensor rebuilders are refused here, naming the file, before a stage touches its folder
    (they failed later with exit 1 or 3 and no file name)."""
    folder = Path(folder)
    for file in sorted(folder.glob("*.safetensors")):
        _check_safetensors(file)
    for file in sorted(folder.glob("*.bin")):
        _check_pickle(file)


def _check_safetensors(file: Path) -> None:
    import json
    import struct

    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise InputError(f"{file}: not a readable safetensors file (broken header); it may be truncated") from None
    if 8 + length + end > size:
        raise InputError(f"{file}: not a readable safetensors file ({size} bytes, its header needs "
                         f"{8 + length + end}); it is truncated")


SAFE_PICKLE_MODULES = ("torch", "collections", "numpy.core.multiarray", "numpy", "_codecs")


def _check_pickle(file: Path) -> None:
    """A torch .bin is a zip holding data.pkl; every global it names must be torch's or a container's."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(file) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError):
        raise InputError(f"{file}: not a torch zip checkpoint; convert it to safetensors") from None
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "SHORT_BINSTRING", "BINSTRING"):
                strings.append(str(arg))
            qualified = (str(arg).replace(" ", ".") if op.name in ("GLOBAL", "INST") else
                         ".".join(strings[-2:]) if op.name == "STACK_GLOBAL" else None)
            if qualified is not None and not qualified.startswith(SAFE_PICKLE_MODULES):
                raise InputError(f"{file}: refused: a pickle that would call {qualified} when loaded (midpo loads "
                                 "only plain tensors); convert it to safetensors")
    except (ValueError, EOFError):
        raise InputError(f"{file}: not a readable pickle; it may be truncated") from None


def check_model_folder(spec: str) -> None:
    """Before a command starts work: a local model folder given on the command line (a base model, a PEFT adapter
    or a MidPO folder) has readable weight files; a base model's config.json comes with weights."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return
    if not any((folder / name).is_file() for name in ("adapter_config.json", "midpo_config.json")) and (
            folder / "config.json").is_file():
        refuse_weightless(folder, "--model")
    check_weight_files(folder)


def weights_fingerprint(ref: str) -> str:
    """A model named two ways (two paths, a copy of a folder) is the same model when its weight files are: each
    file's name, size and first and last MiB hashed (seconds for a 7B folder, no tensor read). A reference that is
    no local folder with weight files (a hub name, a weightless embedded config) stands for itself."""
    import hashlib

    from midpo_cli.assets import is_embedded, resolve_embedded

    folder = resolve_embedded(ref) if is_embedded(ref) else Path(ref).expanduser()
    if not folder.is_dir() or not has_weights(folder):
        return f"ref:{folder.resolve() if folder.exists() else ref}"
    h = hashlib.sha256()
    chunk = 1 << 20
    for file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = file.stat().st_size
        h.update(f"{file.name}:{size}:".encode())
        with open(file, "rb") as fh:
            h.update(fh.read(chunk))
            fh.seek(max(size - chunk, 0))
            h.update(fh.read(chunk))
    return h.hexdigest()[:16]


def has_chat_template(ref: str) -> bool | None:
    """Whether a model ships a chat template — tokenizer_config.json's `chat_template`, or a chat_template.jinja /
    .json beside it — read from its files without loading it: what `midpo recipe new` takes for "instruction-tuned".
    None when the files are not on this machine (a hub model not downloaded yet: nothing is fetched here)."""
    import json

    from midpo_cli.assets import is_embedded, resolve_embedded

    folder = resolve_embedded(ref) if is_embedded(ref) else Path(ref).expanduser()
    if not folder.is_dir():
        folder = _hub_snapshot(ref)
        if folder is None:
            return None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template")) if config.is_file() else False
    except (OSError, ValueError, AttributeError):
        return None


def _hub_snapshot(repo: str) -> Path | None:
    """The folder of a hub model's cached tokenizer_config.json, without a download; None when not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "tokenizer_config.json")
    except Exception:  # an invalid repo id, or no huggingface_hub: not known here
        return None
    return Path(found).parent if isinstance(found, str) else None
