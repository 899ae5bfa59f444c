"""The probe switch in `midpo export --adapters`: a small standalone classifier and a reference router.

A multi-LoRA server (vLLM, SGLang, LoRAX) applies the adapter a request names; none chooses it from the prompt. The
switch is what chooses, so an export of its experts carries it, in `router/`:

- `switch.safetensors`: the probe's mean, std, weight and bias (float64), as midpo saved them;
- `router.json`: what the probe reads — the input of each routed layer (`layers`, in order) averaged over the
  prompt's tokens with the base alone, the prompt encoded in the training template — its mode, threshold and
  where the base is;
- `route.py`: midpo_cli.modeling.switch_router, copied: plain Python + transformers for the features, then any
  OpenAI-compatible multi-LoRA server with `model=safety|helpfulness`.

The export runs that very code on the exported base before the folder is put in place (`check_router`): its
p(harmful) must equal midpo's on the probe prompts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from midpo_cli.data.template import SAFE_RLHF
from midpo_cli.errors import ArtifactCheckError
from midpo_cli.io import atomic_write_json
from midpo_cli.modeling import switch_router
from midpo_cli.modeling.switch import SWITCH_FILE

ROUTER_DIR = "router"
ROUTER_FORMAT = "midpo-probe-switch"
P_TOLERANCE = 1e-5  # p(harmful) of a float32 forward: two summation orders of the same features


def write_router(dst: Path, source: Path, cfg: dict[str, Any], template: str, base: str, relative: bool) -> None:
    """`dst` (the export's `router/`): the switch's weights, router.json and route.py (module docstring). `base`:
    the base as the export names it, relative to `dst` when `relative`."""
    dst.mkdir(parents=True)
    switch = cfg["switch"]
    shutil.copy2(source / switch.get("file", SWITCH_FILE), dst / SWITCH_FILE)
    atomic_write_json(dst / "router.json", {
        "format": ROUTER_FORMAT, "format_version": 1,
        "mode": switch.get("mode", "hard"), "threshold": float(switch.get("threshold", 0.5)),
        "weights": SWITCH_FILE, "layers": list(cfg["target_modules"]),
        "features": "each layer's input averaged over the prompt's tokens, the base alone, concatenated in order",
        "template": template, "prompt_format": SAFE_RLHF if template == "safe-rlhf" else None,
        "base": base, "base_relative": relative, "experts": {"safety": "safety", "helpfulness": "helpfulness"},
    })
    shutil.copy2(switch_router.__file__, dst / "route.py")


def check_router(folder: Path, base_model: Any, tokenizer: Any, prompts: list[str], reference: list[float]) -> None:
    """route.py's code on the exported base gives midpo's p(harmful) on `prompts`, or ArtifactCheckError.
    `base_model`: the exported base (a PEFT model's adapters are switched off here)."""
    import contextlib

    config, weights = switch_router.load_switch(folder)
    off = base_model.disable_adapter() if hasattr(base_model, "disable_adapter") else contextlib.nullcontext()
    plain = base_model.get_base_model() if hasattr(base_model, "get_base_model") else base_model
    with off:
        got = [switch_router.choose(switch_router.features(plain, switch_router.encode(tokenizer, p, config),
                                                           config["layers"]), config, weights)["p_harmful"]
               for p in prompts]
    worst = max(abs(a - b) for a, b in zip(got, reference, strict=True))
    if not worst <= P_TOLERANCE:
        raise ArtifactCheckError(f"{folder}: the exported router gives p(harmful) {got} where midpo gives "
                                 f"{reference} (differs by {worst:.3g}); nothing was written")
