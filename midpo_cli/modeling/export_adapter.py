"""`midpo export ADAPTER --adapters`: one trained PEFT adapter (an expert's or a baseline's, docs/design.md §2.11)
made portable — the adapter with its base resolved (a hub name stays a reference; a local or embedded base is
copied into `base/`, as `export --adapters` does for a MidPO model's experts), reloaded through peft alone and
compared with the adapter as trained before it is renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from midpo_cli.engine.artifacts import save_verified
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_json, read_json
from midpo_cli.modeling.export import _dtype, check_destination, probe_batch, write_base
from midpo_cli.modeling.lora import MIDPO_META, adapter_base, check_adapter_base


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder).expanduser() / "adapter_config.json").is_file()


def export_adapter(source: str | Path, to: str | Path, *, dtype: str = "fp32",
                   trust_remote_code: bool = False) -> dict[str, Any]:
    """The adapter folder `source` as `to/adapter/` (+ `to/base/` when its base is not on the hub)."""
    from peft import PeftModel

    from midpo_cli.assets import is_embedded
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
    source, to = Path(source).expanduser(), check_destination(to)
    base = adapter_base(source, check=True)
    if not base:
        raise InputError(f"{source / 'adapter_config.json'}: base_model_name_or_path is empty")
    kind = "embedded" if is_embedded(base) else "local" if Path(base).expanduser().exists() else "hub"
    base_model = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    # the base it was trained on, not a look-alike; identified by its stored weights, so in any --dtype
    check_adapter_base(source, base_model, base_name=base, source=base, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base_model, str(source)).eval()
    has_tok = (source / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(source) if has_tok else base, trust_remote_code=trust_remote_code)
    ids = probe_batch(tokenizer, model.device)
    with torch.no_grad():
        reference = model(ids).logits.float().cpu()
    del model, base_model
    base_ref = base if kind == "hub" else str(to.resolve() / "base")

    def save(tmp: Path) -> None:
        shutil.copytree(source, tmp / "adapter")
        config = read_json(tmp / "adapter" / "adapter_config.json")
        config["base_model_name_or_path"] = base_ref
        atomic_write_json(tmp / "adapter" / "adapter_config.json", config)
        meta_path = tmp / "adapter" / MIDPO_META
        if meta_path.is_file():  # the exported base sits beside the adapter: point there
            meta = read_json(meta_path)
            meta.update({"base_model": base if kind == "hub" else "../base", "base_model_relative": kind != "hub"})
            atomic_write_json(meta_path, meta)
        if kind != "hub":
            write_base(tmp / "base", base, kind, tokenizer, trust_remote_code=trust_remote_code)

    def load(tmp: Path):
        plain = load_causal_lm(base if kind == "hub" else str(tmp / "base"), dtype=dtype,
                               trust_remote_code=trust_remote_code)
        return PeftModel.from_pretrained(plain, str(tmp / "adapter")).eval()

    save_verified(save, to, load_fn=load, probe_fn=lambda peft: peft(ids.to(peft.device)).logits.float().cpu(),
                  reference=reference, dtype=_dtype(dtype))
    return {"target": "adapter", "source": str(source), "to": str(to), "base": base_ref, "base_copied": kind != "hub",
            "adapters": {"adapter": str(to / "adapter")}}
