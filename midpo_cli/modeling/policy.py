"""Any model a command can answer with, loaded from one spec: a base causal LM, a PEFT adapter, or a MidPO model.

Models (`--model SPEC`): a folder with `midpo_config.json` is a MidPO model; a folder with
`adapter_config.json` is a PEFT adapter on the base named in that config (checked to be the base it
was trained on); anything else (embedded:, hub name, local folder) is a base causal LM. Used by the
generate stage, `midpo generate`, `midpo chat` and `midpo serve` (the last two through `open_policy`); torch,
transformers and peft are imported when a model is loaded, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError


@dataclass
class Policy:
    model: Any
    tokenizer: Any
    kind: str  # base | adapter | midpo


def load_policy(spec: str, *, gates: Sequence[float] | None = None, safety_bias: float = 0.0, dtype: str = "fp32",
                seed: int = 0, tokenizer: str | None = None, trust_remote_code: bool = False) -> Policy:
    """Resolve a model spec (module docstring) into a model in eval mode and its tokenizer."""
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer

    folder = Path(spec).expanduser()
    if (folder / "midpo_config.json").is_file():
        from midpo_cli.modeling.midpo import load_midpo

        model, tok = load_midpo(folder, dtype=dtype, fixed_gates=gates, trust_remote_code=trust_remote_code)
        model.set_safety_bias(safety_bias)
        return Policy(model, tok, "midpo")
    if gates is not None:
        raise InputError(f"--gates applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    if safety_bias:
        raise InputError(f"--safety-bias applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        from midpo_cli.modeling.lora import adapter_base, check_adapter_base

        base = adapter_base(folder, check=True)  # resolved from the adapter folder (midpo.json), else PEFT's config
        if not base:
            raise InputError(f"{folder / 'adapter_config.json'}: base_model_name_or_path is empty")
        base_model = load_causal_lm(base, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
        # the base it was trained on, not a look-alike; identified by its stored weights, so in any --dtype
        check_adapter_base(folder, base_model, base_name=base, source=base, seed=seed,
                           trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base_model, str(folder)).eval()
        has_tok = (folder / "tokenizer_config.json").is_file()
        tok = load_tokenizer(tokenizer or (str(folder) if has_tok else base), trust_remote_code=trust_remote_code)
        return Policy(model, tok, "adapter")
    model = load_causal_lm(spec, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code).eval()
    return Policy(model, load_tokenizer(tokenizer or spec, trust_remote_code=trust_remote_code), "base")


def open_policy(spec: str, *, template: str | None, safety_bias: float | None, gates: Sequence[float] | None,
                dtype: str, trust_remote_code: bool, device: str | None = None) -> tuple[Policy, str]:
    """(the model on `device` with its starting dial and gates, the template it answers in): what `midpo chat` and
    `midpo serve` load. The template is `template`, else the one the model recorded, else `auto`'s. The flags'
    checks run before the model loads; their errors name the flag."""
    import torch

    from midpo_cli.data.template import check_template, resolve_template, warn_mismatch

    if template is not None:
        check_template(template)
    is_midpo = (Path(spec).expanduser() / "midpo_config.json").is_file()
    for flag, value in (("--safety-bias", safety_bias), ("--gates", gates)):
        if value is not None and not is_midpo:
            raise InputError(f"{flag} applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise InputError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here")
    policy = load_policy(spec, gates=gates, dtype=dtype, trust_remote_code=trust_remote_code)
    if safety_bias is not None:
        policy.model.set_safety_bias(safety_bias)
    policy.model.to(device)
    trained = recorded_template_of(spec, policy)
    used = resolve_template(template or trained or "auto", policy.tokenizer)
    warn_mismatch(f"model {spec}", trained, used)
    return policy, used


def recorded_template_of(spec: str, policy: Policy) -> str | None:
    """The template a midpo-trained model recorded: midpo_config.json, else the HF config."""
    if policy.kind == "midpo":
        from midpo_cli.modeling.export import trained_template
        from midpo_cli.modeling.midpo import read_midpo_config

        return trained_template(read_midpo_config(Path(spec).expanduser()), policy.model)
    from midpo_cli.data.template import recorded_template

    return recorded_template(getattr(policy.model, "config", None))
