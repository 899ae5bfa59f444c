"""Find and load tokenizers and causal LMs: `embedded:` assets, local folders or Hugging Face hub names.

Every failure becomes one InputError naming the model and what to do, instead of a transformers
traceback. The embedded tiny LLaMA ships a config but no weights (docs/design.md §7): it is built from the
config with a fixed seed, so the same seed gives the same "pretrained" model on every machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from midpo_cli.assets import is_embedded, resolve_embedded
from midpo_cli.errors import InputError
from midpo_cli.io import try_read_json
from midpo_cli.modeling.files import WEIGHT_FILES, has_weights, refuse_weightless  # noqa: F401 - re-exported

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated, corrupt or empty file is one InputError naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such weights file") from None
    except Exception as exc:  # SafetensorError, OSError, ...: the header or data is broken
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable safetensors file ({reason}); it may be truncated") from None
    if not tensors:
        raise InputError(f"{path}: holds no tensors")
    return tensors


def weights_error(path: Path, exc: BaseException) -> InputError | None:
    """One InputError naming the weight file for a truncated safetensors file or a pickle with code in it
    (refused by torch.load(weights_only=True)); None for other errors. They used to exit 1 or 3, unnamed."""
    import pickle

    path = Path(path)
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        file = path if path.is_file() else next(iter(sorted(path.glob("*.bin"))), path)
        return InputError(f"{file}: refused: a pickle that would run code when loaded (midpo loads only plain "
                          "tensors: safetensors, or torch.load(weights_only=True)); convert it to safetensors")
    if type(exc).__name__ == "SafetensorError" or "safetensors" in type(exc).__module__:
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        bad = next((f for f in files if not _safetensors_readable(f)), files[0] if files else path)
        return InputError(f"{bad}: not a readable safetensors file ({reason}); it may be truncated")
    return None


def _safetensors_readable(file: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                fh.get_slice(key)
        return file.stat().st_size > 8
    except Exception:  # noqa: BLE001 - any failure means "not readable"
        return False


def resolve_precision(name: str) -> str:
    """`auto` → `bf16` on a CUDA device that supports it, else `fp32`; other names are checked and kept.

    Why not bf16 on CPU too: CPU bf16 matmuls are slower than fp32 on most machines and the memory saved
    rarely matters at CPU model sizes; fp16 has no fast CPU kernels and needs loss scaling.
    """
    if name == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    torch_dtype(name)
    return name


def torch_dtype(name: str) -> torch.dtype:
    """`fp32` / `bf16` / `fp16` (or their long names, or `auto`) → torch dtype."""
    if name == "auto":
        name = resolve_precision(name)
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"dtype {name!r} is not one of auto, fp32, bf16, fp16") from None


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set (read now, not at import time)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(v.strip().lower() in {"1", "true", "yes", "on"} for v in flags)


def _looks_local(name: str) -> bool:
    """A path the user meant as a folder (`./x`, `/x`, `~/x`, `a/b/c`), as opposed to a hub `org/name`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_model_path(name: str, *, what: str = "model") -> str:
    """`embedded:tiny-llama` → its shipped folder; an existing path → that path; anything else → a hub name.

    A name that is clearly a path but does not exist is an error here, before transformers would
    try it as a hub repository and report something less helpful.
    """
    if is_embedded(name):
        return str(resolve_embedded(name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _looks_local(name):
        raise InputError(f"{what} {name!r}: no such file or folder")
    return name


def load_error(name: str, what: str, exc: BaseException) -> InputError:
    """One-line InputError for a model/tokenizer that could not be loaded."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(name).expanduser().exists():
        return InputError(f"{what} {name!r}: cannot be loaded from that folder: {reason}")
    if hub_offline():
        return InputError(f"{what} {name!r} is not a local folder and is not in the Hugging Face cache, and "
                          "the hub is offline (HF_HUB_OFFLINE=1); download it first or give a local path")
    return InputError(f"{what} {name!r} was not found locally or on the Hugging Face hub: {reason}")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (they would clutter the CLI's stderr)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str, *, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    """AutoTokenizer with a pad token: the existing one, else EOS, else UNK (batching needs one).

    Reusing EOS as pad is safe here because padding is always masked out by attention and response
    masks; a tokenizer with none of the three is an error rather than a silently resized vocabulary.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name, what="tokenizer")
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                      padding_side=padding_side)
    except (OSError, ValueError) as exc:
        raise load_error(name, "tokenizer", exc) from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise InputError(f"tokenizer {name!r} has no pad, EOS or UNK token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = padding_side
    return tokenizer


def refuse_score_model(folder: Path, name: str) -> None:
    """A safe-rlhf score model loads as a causal LM with a random LM head, silently: refuse it by its config."""
    config = folder / "config.json"
    if not config.is_file():
        return
    cfg = try_read_json(config)  # None when broken: transformers reports that itself
    if isinstance(cfg, dict) and ("score_type" in cfg or any(
            str(a).endswith("ForScore") for a in cfg.get("architectures") or [])):
        raise InputError(f"model {name!r} is a score model (safe-rlhf format), not a causal language model")


def load_causal_lm(name: str, *, dtype: str = "fp32", seed: int = 0, trust_remote_code: bool = False,
                   device: str | torch.device | None = None) -> Any:
    """An AutoModelForCausalLM in `dtype`; a local folder with config.json and no weights is built from the
    config with weights drawn from `seed` (the global RNG is left as it was)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name)
    dt, remote = torch_dtype(dtype), trust_remote_code
    local = Path(path)
    try:
        if local.is_dir() and not has_weights(local):
            if not (local / "config.json").exists():
                raise InputError(f"model {name!r}: folder {local} has neither config.json nor weight files")
            refuse_weightless(local, f"model {name!r}")
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            with torch.random.fork_rng(devices=[]), quiet_transformers():
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config, dtype=dt, trust_remote_code=remote)
        else:
            refuse_score_model(local, name)
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, trust_remote_code=remote)
    except (OSError, ValueError) as exc:
        raise load_error(name, "model", exc) from exc
    except RuntimeError as exc:  # e.g. a checkpoint whose shapes do not match its config
        raise weights_error(local, exc) or load_error(name, "model", exc) from None
    except Exception as exc:  # a truncated safetensors file, a pickle refused by weights_only
        problem = weights_error(local, exc)
        if problem is None:
            raise
        raise problem from None
    if device is not None:
        model = model.to(device)
    return model
