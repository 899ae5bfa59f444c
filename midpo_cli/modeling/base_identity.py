"""Which base model an adapter sits on: a fingerprint of the base's weights *as stored*, in whatever dtype
the base was loaded.

Why as stored: loading in bf16 or fp16 rounds every weight, so a fingerprint of the loaded values named
the same base two ways, and `generate`/`chat`/`export --dtype bf16` refused every adapter trained in
fp32. Each stored dtype (fp32, bf16, fp16) converts to float32 exactly, so the fingerprint is
taken over the stored values seen in float32:

- a model loaded in fp32 holds exactly those values and is fingerprinted directly (this is also how every
  fingerprint recorded before this module was computed: bf16/fp16 training could not finish its
  post-save check then, so those fingerprints stay valid and are checked unchanged);
- a model loaded in another dtype is fingerprinted from its source: a strided sample of each stored tensor,
  read from the weight files by name (safetensors slices or a memory-mapped torch file; milliseconds, no
  second copy of the model);
- where that is impossible (a weightless folder such as `embedded:`, drawn from a seed, or checkpoint keys
  that differ from the parameter names), the source is loaded once more in fp32 for the fingerprint.

Hashing every byte of a 7B base would take minutes; two different bases of the same shape (another seed,
another fine-tune) differ in the sampled values. LoRA parameters and peft's wrapping are ignored, so the
base gives the same fingerprint before and after `add_lora`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FINGERPRINT_SAMPLES = 64
# the dtype the fingerprint sees every stored value in (the hash names it, as fingerprints always did)
VIEW_DTYPE = torch.float32
Entry = tuple[str, tuple[int, ...], np.ndarray]  # (parameter name, shape, sampled values as float64)


def sample_positions(numel: int) -> range:
    """Flat indices of the sampled values: every `numel // 64`-th, at most 64."""
    step = max(1, numel // FINGERPRINT_SAMPLES)
    return range(0, numel, step)[:FINGERPRINT_SAMPLES]


def digest(entries: Iterable[Entry]) -> str:
    """The fingerprint of (name, shape, sampled float32 values) entries, in name order."""
    h = hashlib.sha256()
    for name, shape, values in sorted(entries, key=lambda e: e[0]):
        h.update(f"{name}:{tuple(shape)}:{VIEW_DTYPE}:".encode())
        h.update(np.asarray(values, dtype=np.float64).round(6).tobytes())
    return h.hexdigest()[:16]


def base_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base's parameters under their causal-LM names (peft's prefix and `base_layer` removed, LoRA left out)."""
    out = []
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        out.append((name.removeprefix("base_model.model.").replace(".base_layer.", "."), param))
    return out


def model_entries(model: nn.Module) -> list[Entry]:
    """Entries of an in-memory model's own values (its stored values only when it was loaded in fp32)."""
    entries = []
    for name, param in base_parameters(model):
        flat = param.detach().reshape(-1)
        idx = torch.as_tensor(list(sample_positions(flat.numel())), dtype=torch.long, device=flat.device)
        entries.append((name, tuple(param.shape), flat[idx].to("cpu", torch.float64).numpy()))
    return entries


def weights_fingerprint(model: nn.Module) -> str:
    """The fingerprint of a model's values as they are in memory: its base identity when loaded in fp32."""
    return digest(model_entries(model))


def base_fingerprint(model: nn.Module, source: str | None, *, seed: int = 0, trust_remote_code: bool = False) -> str:
    """The identity of the base `model` was loaded from `source` (a model spec), whatever dtype it is in.

    `seed` is the one the model was loaded with: a weightless folder's weights are drawn from it.
    """
    params = base_parameters(model)
    if all(p.dtype == VIEW_DTYPE for _, p in params):
        return weights_fingerprint(model)
    if source is None:
        raise ValueError("base_fingerprint: a model not in fp32 needs its source to be fingerprinted")
    entries = stored_entries(source, [(n, tuple(p.shape)) for n, p in params])
    if entries is not None:
        return digest(entries)
    from midpo_cli.modeling.loading import load_causal_lm

    view = load_causal_lm(source, dtype="fp32", seed=seed, trust_remote_code=trust_remote_code)
    try:
        return weights_fingerprint(view)
    finally:
        del view


def source_folder(source: str) -> Path | None:
    """The local folder holding `source`'s weight files: the folder itself, or a hub model's cached snapshot."""
    from midpo_cli.modeling.loading import has_weights, resolve_model_path

    path = Path(resolve_model_path(source))
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(source), local_files_only=True))
        except Exception:  # not cached (or not a hub name): the caller loads it instead
            return None
    return path if has_weights(path) else None


def stored_entries(source: str, wanted: list[tuple[str, tuple[int, ...]]]) -> list[Entry] | None:
    """Sampled stored values of each wanted (name, shape), read from `source`'s weight files; None when a name
    or shape is not found there (renamed checkpoint keys, a weightless folder): the caller loads the source."""
    folder = source_folder(source)
    if folder is None:
        return None
    try:
        tensors = _stored_tensors(folder)
        entries = []
        for name, shape in wanted:
            read = tensors.get(name)
            if read is None or tuple(read[1]) != shape:
                return None
            entries.append((name, shape, read[0](shape)))
    except Exception:  # a legacy (non-zip) .bin, an unreadable file: the loader names the problem, if any
        return None
    return entries


def _stored_tensors(folder: Path) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """name → (a function returning the sampled values as float64, stored shape), for every stored tensor."""
    from safetensors import safe_open

    found: dict[str, tuple[Any, tuple[int, ...]]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        handle = safe_open(str(path), framework="pt")
        for key in handle.keys():
            piece = handle.get_slice(key)
            found[key] = (lambda shape, piece=piece: _sample_slice(piece, shape), tuple(piece.get_shape()))
    if found:
        return found
    for path in sorted(folder.glob("*.bin")):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for key, tensor in (state.items() if isinstance(state, dict) else ()):
            if isinstance(tensor, torch.Tensor):
                found[key] = (lambda shape, t=tensor: _sample_tensor(t), tuple(tensor.shape))
    return found


def _sample_slice(piece: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The sampled values of a safetensors slice, each read on its own (a few bytes, not the tensor)."""
    numel = int(np.prod(shape)) if shape else 1
    if not shape:
        return piece[:].reshape(-1).to(torch.float64).numpy()
    values = []
    for flat in sample_positions(numel):
        index = tuple(slice(int(i), int(i) + 1) for i in np.unravel_index(flat, shape))
        values.append(float(piece[index].reshape(-1)[0].to(VIEW_DTYPE)))
    return np.asarray(values, dtype=np.float64)


def _sample_tensor(tensor: torch.Tensor) -> np.ndarray:
    flat = tensor.reshape(-1)
    idx = torch.as_tensor(list(sample_positions(flat.numel())), dtype=torch.long)
    return flat[idx].to(VIEW_DTYPE).to(torch.float64).numpy()
