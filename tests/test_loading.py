"""modeling/loading.py: name resolution, dtypes, deterministic embedded init, clear errors (all offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from midpo_cli.errors import InputError
from midpo_cli.modeling.loading import (
    has_weights,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
    torch_dtype,
)


def test_torch_dtype():
    assert torch_dtype("fp32") is torch.float32
    assert torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("fp16") is torch.float16
    with pytest.raises(InputError, match="fp64"):
        torch_dtype("fp64")


def test_resolve_model_path(tmp_path):
    embedded = Path(resolve_model_path("embedded:tiny-llama"))
    assert (embedded / "config.json").exists() and not has_weights(embedded)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    hub = "PKU-Alignment/beaver-7b-unified-reward"
    assert resolve_model_path(hub) == hub
    with pytest.raises(InputError, match="no such file or folder"):
        resolve_model_path(str(tmp_path / "missing" / "model"))
    with pytest.raises(InputError, match="unknown embedded asset"):
        resolve_model_path("embedded:no-such-model")


def test_embedded_model_is_deterministic_per_seed_and_keeps_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_causal_lm("embedded:tiny-llama", seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    b = load_causal_lm("embedded:tiny-llama", seed=7)
    c = load_causal_lm("embedded:tiny-llama", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(sa[key], sc[key])
    assert a.dtype == torch.float32
    assert load_causal_lm("embedded:tiny-llama", dtype="bf16").dtype == torch.bfloat16


def test_local_folder_with_weights_uses_from_pretrained(tmp_path):
    model = load_causal_lm("embedded:tiny-llama", seed=3)
    model.save_pretrained(tmp_path / "m")
    assert has_weights(tmp_path / "m")
    loaded = load_causal_lm(str(tmp_path / "m"), seed=99)  # seed is irrelevant: the weights are read
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_missing_models_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"nobody/no-such-model.*offline"):
        load_causal_lm("nobody/no-such-model")
    with pytest.raises(InputError, match=r"tokenizer 'nobody/no-such-model'.*offline"):
        load_tokenizer("nobody/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither config.json nor weight"):
        load_causal_lm(str(tmp_path / "empty"))


def test_tokenizer_gets_pad_token_and_padding_side(tmp_path):
    tok = load_tokenizer("embedded:tiny-llama")
    assert tok.pad_token == "<pad>" and tok.padding_side == "right"
    assert load_tokenizer("embedded:tiny-llama", padding_side="left").padding_side == "left"
    folder = tmp_path / "nopad"
    tok.pad_token = None
    tok.save_pretrained(folder)
    reloaded = load_tokenizer(str(folder))
    assert reloaded.pad_token == reloaded.eos_token == "</s>"
    assert reloaded.pad_token_id == reloaded.eos_token_id
