"""Any model a command can answer with, loaded from one spec: a base causal LM, a PEFT adapter, or a MidPO model.

Models (`--model SPEC`): a folder with `midpo_config.json` is a MidPO model; a folder with
`adapter_config.json` is a PEFT adapter on the base named in that config (checked to be the base it
was trained on); anything else (embedded:, hub name, local folder) is a base causal LM. Used by the
generate stage, `midpo generate` and `midpo chat`; torch, transformers and peft are imported when a
model is loaded, not with this module.
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
