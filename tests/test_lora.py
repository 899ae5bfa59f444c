"""LoRA helpers: read_adapter must give back exactly what peft saved and the scaling peft uses."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from midpo_cli.errors import InputError
from midpo_cli.modeling.lora import add_lora, base_model_of_adapter, lora_config, read_adapter


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def saved_adapter(tmp_path, cfg: LoraConfig, name: str = "adapter", **save_kw):
    peft_model = get_peft_model(tiny_llama(), cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.3)
    folder = tmp_path / name
    peft_model.save_pretrained(str(folder), **save_kw)
    return peft_model, folder


def peft_layers(peft_model) -> dict[str, torch.nn.Module]:
    prefix = "base_model.model."
    return {n[len(prefix):]: m for n, m in peft_model.named_modules() if n.endswith("down_proj")}


def test_lora_config_defaults_follow_design():
    cfg = lora_config()
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.0)
    assert set(cfg.target_modules) == {"down_proj"}
    assert cfg.task_type == "CAUSAL_LM"


def test_add_lora_trains_only_lora_weights():
    model = add_lora(tiny_llama(), lora_config(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "down_proj" in n for n in trainable)


@pytest.mark.parametrize("serialization", ["safetensors", "bin"])
def test_read_adapter_matches_peft_tensors_and_scaling(tmp_path, serialization):
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["down_proj"],
                     rank_pattern={"layers.0.mlp.down_proj": 2}, alpha_pattern={"layers.1.mlp.down_proj": 3})
    peft_model, folder = saved_adapter(tmp_path, cfg, safe_serialization=serialization == "safetensors")
    adapter = read_adapter(folder)
    layers = peft_layers(peft_model)
    assert sorted(adapter.modules) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    for path, branch in adapter.modules.items():
        layer = layers[path]
        assert torch.equal(branch.A, layer.lora_A["default"].weight)
        assert torch.equal(branch.B, layer.lora_B["default"].weight)
        assert branch.scaling == layer.scaling["default"]
    # layer 0: r=2 by rank_pattern, alpha 8 → 4.0; layer 1: r=4, alpha 3 by alpha_pattern → 0.75
    assert [b.scaling for b in adapter.modules.values()] == [4.0, 0.75]
    assert (adapter.r, adapter.alpha, adapter.scaling) == (4, 8.0, 2.0)


def test_read_adapter_rslora_scaling(tmp_path):
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["down_proj"], use_rslora=True)
    peft_model, folder = saved_adapter(tmp_path, cfg)
    adapter = read_adapter(folder)
    layers = peft_layers(peft_model)
    for path, branch in adapter.modules.items():
        assert branch.scaling == pytest.approx(layers[path].scaling["default"]) == pytest.approx(4.0)


def test_dora_is_refused_with_a_clear_message(tmp_path):
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["down_proj"], use_dora=True)
    _, folder = saved_adapter(tmp_path, cfg)
    with pytest.raises(InputError, match="DoRA"):
        read_adapter(folder)


def test_modules_to_save_is_refused(tmp_path):
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["down_proj"],
                     modules_to_save=["lm_head"])
    _, folder = saved_adapter(tmp_path, cfg)
    with pytest.raises(InputError, match="modules_to_save"):
        read_adapter(folder)


def test_unexpected_tensor_is_refused(tmp_path):
    _, folder = saved_adapter(tmp_path, lora_config(r=4, alpha=8))
    path = folder / "adapter_model.safetensors"
    state = load_file(str(path))
    state["base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector"] = torch.ones(32)
    save_file(state, str(path))
    with pytest.raises(InputError, match="lora_magnitude_vector"):
        read_adapter(folder)


def test_rank_mismatch_names_the_module(tmp_path):
    _, folder = saved_adapter(tmp_path, lora_config(r=4, alpha=8))
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["r"] = 8
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"model\.layers\.0\.mlp\.down_proj.*rank 8"):
        read_adapter(folder)


def test_missing_folder_and_weights(tmp_path):
    with pytest.raises(InputError, match="adapter_config.json missing"):
        read_adapter(tmp_path / "nowhere")
    _, folder = saved_adapter(tmp_path, lora_config(r=4, alpha=8))
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(InputError, match="no adapter weights"):
        read_adapter(folder)


def test_base_model_of_adapter(tmp_path):
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(str(base_dir))
    model = add_lora(LlamaForCausalLM.from_pretrained(str(base_dir)), lora_config(r=4, alpha=8))
    model.save_pretrained(str(tmp_path / "ad"))
    assert base_model_of_adapter(tmp_path / "ad") == str(base_dir)
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": None}))
    with pytest.raises(InputError, match="base_model_name_or_path"):
        base_model_of_adapter(tmp_path / "ad")
