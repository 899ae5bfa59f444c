"""Thin helpers around peft for the LoRA experts (DESIGN §2 "Experts").

peft trains and saves the adapters; the MidPO model (modeling/midpo.py) does not run peft at all, it
reads the two saved adapters back as plain tensors (`read_adapter`) and mixes them itself. Reading
them here, next to the config that wrote them, keeps one definition of the LoRA scaling: the
routed model must use exactly the s that peft used while training each expert (the reference
implementation used a different one at inference), so `read_adapter` computes it the way peft does,
per module, including `use_rslora`, `rank_pattern` and `alpha_pattern`. Adapter features that change
the forward in ways the routed linear does not reproduce (DoRA, LoRA biases, Conv1D
`fan_in_fan_out`, `modules_to_save`, ...) are refused with a message instead of being dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from midpo_cli.errors import InputError
from midpo_cli.io import read_json

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# peft prefixes every saved key with the PeftModel → LoraModel path; what follows is the module path
# inside the causal LM (e.g. `model.layers.0.mlp.down_proj`).
KEY_PREFIX = "base_model.model."
KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")

# adapter_config.json keys whose non-empty value changes the LoRA forward beyond y += s·B A h.
UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (use_dora) rescales the whole weight by a learned magnitude",
    "lora_bias": "lora_bias adds a bias to the LoRA B matrix",
    "fan_in_fan_out": "fan_in_fan_out marks Conv1D (GPT-2 style) layers; only torch.nn.Linear is routed",
    "modules_to_save": "modules_to_save trains full copies of other modules",
    "trainable_token_indices": "trainable_token_indices trains embedding rows",
    "layer_replication": "layer_replication duplicates layers",
    "target_parameters": "target_parameters adapts raw parameters, not linear layers",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) switches the adapter per token",
    "use_qalora": "QA-LoRA pools the input",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "monteclora_config": "MonteCLoRA samples the adapter",
    "arrow_config": "Arrow routes between several LoRAs itself",
    "kasa_config": "KaSA changes the LoRA product",
    "velora_config": "VeLoRA changes the LoRA product",
}


@dataclass(frozen=True)
class LoraBranch:
    """One adapted linear: ΔW = scaling · B A, with A (r, in) and B (out, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    @property
    def r(self) -> int:
        return int(self.A.shape[0])


@dataclass
class AdapterWeights:
    """A PEFT LoRA adapter read as tensors, keyed by module path inside the causal LM.

    `r`, `alpha` and `scaling` are the adapter's defaults; a module hit by `rank_pattern` or
    `alpha_pattern` carries its own value in `modules[path].scaling`, which is the one to use.
    """

    modules: dict[str, LoraBranch]
    r: int
    alpha: float
    scaling: float
    use_rslora: bool = False
    base_model: str | None = None
    source: Path | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)


def lora_config(
    r: int = 16, alpha: float = 32, dropout: float = 0.0, target_modules: Sequence[str] = ("down_proj",)
) -> LoraConfig:
    """The experts' LoRA config (DESIGN §2: r=16, alpha=32, dropout 0, `down_proj`)."""
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
    )


def add_lora(model: nn.Module, cfg: LoraConfig) -> PeftModel:
    """Wrap a causal LM with a trainable LoRA adapter; everything else is frozen by peft."""
    return get_peft_model(model, cfg)


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """peft's scaling: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"{folder}: not a PEFT adapter folder ({CONFIG_NAME} missing)")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a JSON object")
    return cfg


def base_model_of_adapter(folder: str | Path) -> str:
    """The `base_model_name_or_path` the adapter was trained on."""
    cfg = read_adapter_config(folder)
    name = cfg.get("base_model_name_or_path")
    if not name:
        raise InputError(f"{Path(folder) / CONFIG_NAME}: base_model_name_or_path is empty")
    return str(name)


def check_supported(cfg: dict[str, Any], where: str) -> None:
    """Refuse adapter options whose forward the routed linear would not reproduce."""
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise InputError(f"{where}: peft_type is {cfg.get('peft_type')!r}; MidPO experts must be LoRA adapters")
    problems = [f"{key}: {why}" for key, why in UNSUPPORTED_OPTIONS.items() if cfg.get(key)]
    if cfg.get("bias", "none") not in (None, "none"):
        problems.append(f"bias={cfg['bias']!r}: the adapter also trains the base biases")
    if problems:
        raise InputError(
            f"{where}: unsupported LoRA option(s) for the MidPO router — " + "; ".join(problems)
            + ". Retrain the expert as plain LoRA (midpo train-expert does)"
        )


def _load_state(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHT_NAMES:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path)), path
            return torch.load(path, map_location="cpu", weights_only=True), path
    raise InputError(f"{folder}: no adapter weights (expected one of {', '.join(WEIGHT_NAMES)})")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's `get_pattern_key` rule: a pattern key matches a module path by regex on its tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: str | Path) -> AdapterWeights:
    """Read a saved PEFT LoRA adapter into tensors (CPU, stored dtype) with per-module scaling."""
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    where = str(folder / CONFIG_NAME)
    check_supported(cfg, where)
    state, weights_path = _load_state(folder)

    r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    use_rslora = bool(cfg.get("use_rslora", False))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}

    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = KEY_RE.match(key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key)
        if match is None:
            raise InputError(
                f"{weights_path}: unexpected tensor {key!r}; only lora_A/lora_B weights of linear layers "
                "can be routed (DoRA magnitudes, LoRA biases, embeddings and saved modules cannot)"
            )
        pieces.setdefault(match["module"], {})[match["which"]] = tensor
    if not pieces:
        raise InputError(f"{weights_path}: the adapter holds no LoRA weights")

    modules: dict[str, LoraBranch] = {}
    for module, ab in sorted(pieces.items()):
        if set(ab) != {"A", "B"}:
            raise InputError(f"{weights_path}: module {module!r} has lora_{'A' if 'A' not in ab else 'B'} missing")
        A, B = ab["A"], ab["B"]
        m_r = int(_pattern_value(rank_pattern, module, r))
        m_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != m_r or B.shape[1] != m_r:
            raise InputError(
                f"{weights_path}: module {module!r}: lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} "
                f"do not match rank {m_r} from {CONFIG_NAME}"
            )
        modules[module] = LoraBranch(A=A, B=B, scaling=lora_scaling(m_r, m_alpha, use_rslora))

    return AdapterWeights(
        modules=modules,
        r=r,
        alpha=alpha,
        scaling=lora_scaling(r, alpha, use_rslora),
        use_rslora=use_rslora,
        base_model=cfg.get("base_model_name_or_path"),
        source=folder,
        config=cfg,
    )
