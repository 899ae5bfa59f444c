"""Thin helpers around peft for the LoRA experts (docs/design.md §2 "Experts").

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

import contextlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_json, read_json
from midpo_cli.modeling.base_identity import base_fingerprint

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
    """The experts' LoRA config (docs/design.md §2: r=16, alpha=32, dropout 0, `down_proj`)."""
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
    )


# The experts' default target per `config.model_type`: each decoder layer's MLP output projection, the
# layer docs/design.md §2 adapts. Architectures not listed need `lora.target_modules` set in the recipe.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: ("down_proj",) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
                                   "smollm3", "olmo", "olmo2", "granite")},
    "gpt_neox": ("dense_4h_to_h",),
}
# Model types known not to work with the routed model, and why (checked before any training).
UNSUPPORTED_ARCHITECTURES = {
    "gpt2": "GPT-2's MLP layers are transformers Conv1D, not torch.nn.Linear",
    "gemma3": "this is the multimodal Gemma 3 (Gemma3ForConditionalGeneration); use a text-only "
              "Gemma3ForCausalLM checkpoint (model_type gemma3_text, e.g. gemma-3-270m / gemma-3-1b)",
    "mixtral": "Mixtral's MLP experts are fused parameters, not torch.nn.Linear layers",
}


def resolve_targets(model_type: str | None, target_modules: Sequence[str] | None) -> list[str]:
    """The recipe's target_modules, or the architecture's default; an unknown architecture is an error."""
    if model_type in UNSUPPORTED_ARCHITECTURES:
        raise InputError(f"model_type {model_type!r} is not supported by the MidPO experts and router: "
                         f"{UNSUPPORTED_ARCHITECTURES[model_type]}")
    if target_modules:
        return list(target_modules)
    if model_type not in DEFAULT_TARGETS:
        raise InputError(f"model_type {model_type!r} has no default LoRA target; set "
                         "stages.safety_expert.lora.target_modules and stages.helpfulness_expert.lora.target_modules "
                         "to the name of its MLP output linear layer (e.g. [down_proj])")
    return list(DEFAULT_TARGETS[model_type])


def check_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Module paths `targets` selects (peft's suffix rule); each must exist and be a torch.nn.Linear.

    The routed model (midpo.wrap) mixes experts inside nn.Linear layers only, so an expert trained on
    anything else could never be routed: refuse it before training, not after.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    paths = [name for name, _ in model.named_modules() if any(name == t or name.endswith("." + t) for t in targets)]
    if not paths:
        raise InputError(f"lora.target_modules {list(targets)}: no layer of this {model_type} model has that name")
    for path in paths:
        mod = model.get_submodule(path)
        if not isinstance(mod, nn.Linear):
            kind = f"{type(mod).__module__}.{type(mod).__qualname__}"
            raise InputError(f"lora.target_modules: {path} of this {model_type} model is a {kind}; the MidPO router "
                             "routes torch.nn.Linear layers only, choose other target_modules")
    return paths


def preflight_targets(base_model: str, target_modules: Sequence[str] | None, *,
                      trust_remote_code: bool = False) -> list[str]:
    """resolve_targets + check_targets on a weightless (meta-device) copy of `base_model`: seconds, no weights.

    Run before the first stage, so an unsupported architecture fails before an hour of SFT.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from midpo_cli.modeling.loading import load_error, quiet_transformers, resolve_model_path

    path = resolve_model_path(base_model)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error(base_model, "model", exc) from exc
    targets = resolve_targets(getattr(config, "model_type", None), target_modules)
    try:
        with torch.device("meta"), quiet_transformers():
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"model {base_model!r} ({config.model_type}): no causal LM class for it: {exc}") from None
    check_targets(skeleton, targets)
    return targets


def add_lora(model: nn.Module, cfg: LoraConfig, *, seed: int | None = None) -> PeftModel:
    """Wrap a causal LM with a trainable LoRA adapter; everything else is frozen by peft.

    peft draws lora_A from the global torch RNG, whose state depends on whatever ran before (data
    loading, a previous stage in the same process); with `seed` the draw is fixed and the global RNG
    is left untouched, so the same seed gives the same adapter.
    """
    if seed is None:
        return get_peft_model(model, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, cfg)


def freeze_lora_a(model: nn.Module) -> int:
    """Freeze every lora_A (recipe `lora.shared_a`): the adapter trains its B only, so two experts built with the
    same seed, rank and targets keep one shared A and differ only in B. Returns how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError("lora.shared_a: the model has no lora_A weights to freeze")
    return frozen


@contextlib.contextmanager
def adapter_off(model: PeftModel):
    """The policy with its adapter disabled (the DPO reference π_ref), leaving every parameter's requires_grad as
    it found it: leaving peft's `disable_adapter` marks the whole active adapter trainable again, which thawed a
    frozen lora_A (`lora.shared_a`) after every reference pass, so A took gradients and the checkpoints listed it."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


MIDPO_META = "midpo.json"


def base_reference(base: str, adapter_folder: str | Path) -> dict[str, Any]:
    """How an adapter records its base: a local folder relative to the adapter (a copied or moved run still
    finds its own base), a hub name as given."""
    path = Path(base).expanduser()
    if not path.exists():
        return {"base_model": base, "base_model_relative": False}
    rel = os.path.relpath(path.resolve(), Path(adapter_folder).resolve())
    return {"base_model": rel, "base_model_relative": True}


def adapter_base(folder: str | Path, *, check: bool = False) -> str:
    """The base an adapter was trained on, resolved from the adapter folder (midpo.json), else PEFT's config.

    With `check`, a base midpo.json records relative to the adapter that is not there is an error naming
    midpo.json (an adapter copied away from its run was refused as "no such file or folder" of a path the user
    never gave)."""
    folder = Path(folder)
    meta_path = folder / MIDPO_META
    meta = read_json(meta_path) if meta_path.is_file() else {}
    if isinstance(meta, dict) and meta.get("base_model"):
        ref = str(meta["base_model"])
        if not meta.get("base_model_relative"):
            return ref
        base = (folder / ref).resolve()
        if check and not base.exists():
            raise InputError(f"{meta_path}: records the base as {ref}, relative to the adapter folder, and {base} "
                             "does not exist: the adapter was moved away from its run; keep it beside the run's "
                             "model, or set base_model in midpo.json to where its base is")
        return str(base)
    return base_model_of_adapter(folder)


def check_adapter_base(folder: str | Path, base_model: nn.Module, *, base_name: str = "the base model",
                       source: str | None = None, seed: int = 0, trust_remote_code: bool = False) -> None:
    """Refuse an adapter on a base it was not trained on: another shape, or the same shape with other weights
    (midpo.json's `base_fingerprint`). Without this a copied run silently mixed runs' models.

    `source` is the spec `base_model` was loaded from (with `seed`): a base loaded in bf16/fp16 is identified
    by its stored weights (modeling/base_identity.py), so any --dtype accepts an adapter trained in another.
    """
    folder = Path(folder)
    adapter = read_adapter(folder)
    modules = dict(base_model.named_modules())
    for path, branch in adapter.modules.items():
        module = modules.get(path) or modules.get(f"base_model.model.{path}")
        weight = getattr(getattr(module, "base_layer", module), "weight", None)
        if weight is None:
            raise InputError(f"{folder}: adapts {path!r}, which {base_name} does not have; "
                             f"the adapter was trained on {adapter_base(folder)}")
        if tuple(weight.shape) != (branch.B.shape[0], branch.A.shape[1]):
            raise InputError(f"{folder}: {path} is {tuple(weight.shape)} in {base_name} but the adapter expects "
                             f"{(branch.B.shape[0], branch.A.shape[1])}; it was trained on {adapter_base(folder)}")
    meta_path = folder / MIDPO_META
    recorded = (read_json(meta_path) or {}).get("base_fingerprint") if meta_path.is_file() else None
    if not recorded:
        return
    found = base_fingerprint(base_model, source, seed=seed, trust_remote_code=trust_remote_code)
    if recorded == found:
        return
    trained_on = adapter_base(folder)
    if source is not None and Path(trained_on).resolve() == Path(source).expanduser().resolve():
        raise InputError(f"{folder}: {base_name} is where midpo.json says its base is, but its weights are not "
                         f"those the adapter was trained on (fingerprint {found}, recorded {recorded}): the adapter "
                         "was copied from another run, or the base was replaced since; retrain the adapter on it")
    raise InputError(f"{folder}: {base_name} is not the base this adapter was trained on (weights fingerprint "
                     f"{found}, recorded {recorded}); use {trained_on}")


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
                from midpo_cli.modeling.loading import load_safetensors

                return load_safetensors(path), path
            try:
                return torch.load(path, map_location="cpu", weights_only=True), path
            except Exception as exc:  # truncated, not a torch file, or a pickle outside the allow-list
                raise InputError(f"{path}: unreadable weights ({type(exc).__name__}); re-save the adapter") from None
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


def save_checked_adapter(model, out: Path, probe_batch: dict, meta: dict, *, name: str = "default") -> None:
    """Adapter `name` as a plain PEFT folder + midpo.json, loaded back as a second adapter on the same base (no
    second copy of the base weights) and compared with the adapter as trained (engine.artifacts.save_checked).
    The experts, the trained baselines and the TIES merges are all saved here."""
    from midpo_cli.engine.artifacts import logits_on, save_checked
    logits = logits_on({k: probe_batch[k] for k in ("input_ids", "attention_mask")})

    def save_fn(path):
        model.save_pretrained(str(path), selected_adapters=[name], safe_serialization=True)
        if name != "default":  # peft writes a non-default adapter into a subfolder of its name
            saved = Path(path) / name
            for child in saved.iterdir():
                child.replace(Path(path) / child.name)
            saved.rmdir()
        base = Path(str(meta.get("base_model_at_training", ""))).expanduser()
        if base.exists():  # PEFT wrote the path as given (relative to the cwd): make it valid from anywhere
            config = read_json(Path(path) / "adapter_config.json")
            config["base_model_name_or_path"] = str(base.resolve())
            atomic_write_json(Path(path) / "adapter_config.json", config)
        atomic_write_json(Path(path) / "midpo.json", meta)

    def load_fn(path):
        model.load_adapter(str(path), adapter_name="verify")
        return model

    def probe_fn(loaded):
        loaded.set_adapter("verify")
        try:
            return logits(loaded)
        finally:
            loaded.set_adapter(name)
            loaded.delete_adapter("verify")

    save_checked(model, out, save_fn=save_fn, load_fn=load_fn, forward=logits, probe_fn=probe_fn)


# ------------------------------------------------------------------------------------ snapshots (select: dev)

SNAPSHOT_DIR = "dev_select"  # in the expert's stage folder: its adapter every `select_every` steps


def snapshot_path(folder: Path, step: int) -> Path:
    return folder / SNAPSHOT_DIR / f"step-{step:07d}.safetensors"


def save_snapshot(model: Any, folder: Path, step: int) -> Path:
    """The adapter's weights at `step` (peft's state dict, CPU, safetensors; written to a temp name, renamed)."""
    from safetensors.torch import save_file

    path = snapshot_path(folder, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "step": str(step)})
    os.replace(tmp, path)
    return path


def load_snapshot(model: Any, folder: Path, step: int) -> None:
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(snapshot_path(folder, step))))


@contextlib.contextmanager
def loaded_snapshot(model: Any, folder: Path, step: int):
    """The snapshot of `step` loaded into `model` for a dev choice's answers; it stays loaded after the block
    (the choice then loads the step it keeps)."""
    load_snapshot(model, folder, step)
    yield model


def saved_steps(folder: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("step-")) for p in (folder / SNAPSHOT_DIR).glob("step-*.safetensors"))
