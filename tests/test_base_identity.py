"""Base identity (issue 27): an adapter's recorded base fingerprint names the base's *stored* weights, so the
same base loaded in fp32, bf16 or fp16 is accepted and another base is refused in every dtype.

The reference is the fingerprint as midpo computed it before (copied below, not imported): every fingerprint
in an existing run dir was computed that way on an fp32 model, and must still match.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from midpo_cli.errors import InputError
from midpo_cli.modeling.base_identity import base_fingerprint, base_parameters, stored_entries
from midpo_cli.modeling.loading import load_causal_lm
from midpo_cli.modeling.lora import MIDPO_META, check_adapter_base, lora_config

EMBEDDED = "embedded:tiny-llama"


def legacy_fingerprint(model) -> str:
    """midpo's weights_fingerprint before issue 27, verbatim: what existing run dirs recorded (in fp32)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].to("cpu", torch.float64)
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}:".encode())
        digest.update(sample.numpy().round(6).tobytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Two tiny bases of one shape (seeds 3 and 4) saved in fp32, the first one saved again in bf16 and as .bin."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for name, seed in (("a", 3), ("b", 4)):
        out[name] = root / name
        load_causal_lm(EMBEDDED, seed=seed).save_pretrained(out[name])
    out["a-bf16"] = root / "a-bf16"
    load_causal_lm(str(out["a"]), dtype="bf16").save_pretrained(out["a-bf16"])
    out["a-bin"] = root / "a-bin"  # the same weights as a torch file (pytorch_model.bin), read memory-mapped
    out["a-bin"].mkdir()
    shutil.copy(out["a"] / "config.json", out["a-bin"] / "config.json")
    torch.save(load_causal_lm(str(out["a"])).state_dict(), out["a-bin"] / "pytorch_model.bin")
    return out


@pytest.mark.parametrize("stored", ["a", "a-bf16", "a-bin"])
def test_the_fingerprint_is_the_stored_weights_whatever_the_load_dtype(bases, stored):
    source = str(bases[stored])
    recorded = legacy_fingerprint(load_causal_lm(source))  # fp32 load: exactly the stored values
    names = [(n, tuple(p.shape)) for n, p in base_parameters(load_causal_lm(source))]
    assert stored_entries(source, names) is not None  # read from the files, not by loading the model again
    for dtype in ("fp32", "bf16", "fp16"):
        model = load_causal_lm(source, dtype=dtype)
        assert base_fingerprint(model, source) == recorded, dtype
    assert legacy_fingerprint(load_causal_lm(source, dtype="bf16")) != recorded  # what refused every adapter
    # fp32 rounded to bf16 is another base: its stored values differ
    rounded, original = (legacy_fingerprint(load_causal_lm(str(bases[k]))) for k in ("a-bf16", "a"))
    assert rounded != original


def test_a_weightless_base_is_fingerprinted_from_its_fp32_draw():
    recorded = legacy_fingerprint(load_causal_lm(EMBEDDED, seed=3))
    model = load_causal_lm(EMBEDDED, dtype="bf16", seed=3)
    assert base_fingerprint(model, EMBEDDED, seed=3) == recorded
    assert base_fingerprint(model, EMBEDDED, seed=4) != recorded  # another seed draws another base


def test_a_model_in_bf16_needs_its_source():
    with pytest.raises(ValueError, match="needs its source"):
        base_fingerprint(load_causal_lm(EMBEDDED, dtype="bf16"), None)


def _adapter(bases, tmp_path: Path) -> Path:
    """A LoRA adapter on base `a` whose midpo.json records the fingerprint as fp32 training did."""
    base = load_causal_lm(str(bases["a"]))
    recorded = legacy_fingerprint(base)
    folder = tmp_path / "adapter"
    get_peft_model(base, lora_config(r=2, alpha=4)).save_pretrained(str(folder))
    (folder / MIDPO_META).write_text(json.dumps({"base_model": str(bases["a"]), "base_fingerprint": recorded}))
    return folder


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_check_adapter_base_accepts_its_base_and_refuses_another_in_every_dtype(bases, tmp_path, dtype):
    adapter = _adapter(bases, tmp_path)
    same, other = str(bases["a"]), str(bases["b"])
    check_adapter_base(adapter, load_causal_lm(same, dtype=dtype), base_name=same, source=same)
    with pytest.raises(InputError, match="is not the base this adapter was trained on"):
        check_adapter_base(adapter, load_causal_lm(other, dtype=dtype), base_name=other, source=other)
