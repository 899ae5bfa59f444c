"""Every architecture users bring (LLaMA, Mistral, Qwen2, Gemma 3, Phi-3, GPT-NeoX) end to end, on tiny random
configs of a few thousand parameters: the routed model against peft's own PeftModel, score models against an
independent safe-rlhf-style load, cached against uncached greedy decoding, and the per-architecture LoRA
targets (or an InputError naming what is unsupported) before any training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

from midpo_cli.errors import InputError
from midpo_cli.modeling.lora import lora_config, preflight_targets, read_adapter, resolve_targets
from midpo_cli.modeling.midpo import RouterSettings, wrap
from midpo_cli.modeling.score_model import ScoreModel, load_score_model, save_score_model

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, pad_token_id=0, eos_token_id=2, bos_token_id=1)


def gemma3() -> Gemma3TextConfig:
    """Gemma 3's own features on: a sliding layer (window 4 < prompt length) and a global one, query scaling by
    query_pre_attn_scalar (not head_dim), tied embeddings, GELU-tanh MLP, logit soft-capping."""
    cfg = Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=12,
                           layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0,
                           tie_word_embeddings=True)
    assert cfg.hidden_activation == "gelu_pytorch_tanh"
    return cfg


ARCHS = {  # name → (config factory, the MLP output linear the experts adapt, safe-rlhf backbone prefix)
    "llama": (lambda: LlamaConfig(**COMMON, num_key_value_heads=2), "down_proj", "model"),
    "mistral": (lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=4), "down_proj", "model"),
    "qwen2": (lambda: Qwen2Config(**COMMON, num_key_value_heads=2), "down_proj", "model"),
    "gemma3": (gemma3, "down_proj", "model"),
    "phi3": (lambda: Phi3Config(**COMMON, num_key_value_heads=2), "down_proj", "model"),
    "gpt_neox": (lambda: GPTNeoXConfig(**COMMON), "dense_4h_to_h", "gpt_neox"),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request, tmp_path_factory) -> dict:
    """A saved random base model and two saved PEFT experts (random non-zero B, else ΔW = 0) on its default target."""
    name = request.param
    make, target, prefix = ARCHS[name]
    root = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(make()).eval()
    assert sum(p.numel() for p in base.parameters()) < 30_000
    base.save_pretrained(str(root / "base"))
    targets = resolve_targets(base.config.model_type, None)
    assert targets == [target]
    adapters = {}
    for i, expert in enumerate(("safety", "helpfulness")):
        torch.manual_seed(10 + i)
        peft_model = get_peft_model(load(root / "base"), lora_config(r=4, alpha=8, target_modules=tuple(targets)))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.5)
        adapters[expert] = root / expert
        peft_model.save_pretrained(str(adapters[expert]))
    return {"name": name, "base": root / "base", "adapters": adapters, "prefix": prefix, "root": root}


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def batch() -> dict[str, torch.Tensor]:
    """Two left-padded rows of 12 tokens (longer than the sliding windows of 4)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(**batch()).logits.float()


def midpo_model(arch: dict, settings: RouterSettings | None = None):
    a = arch["adapters"]
    return wrap(load(arch["base"]), read_adapter(a["safety"]), read_adapter(a["helpfulness"]), settings)


def test_routed_model_with_fixed_gates_equals_base_and_each_peft_expert(arch) -> None:
    references = {"base": logits(load(arch["base"]))}
    for expert, folder in arch["adapters"].items():
        references[expert] = logits(PeftModel.from_pretrained(load(arch["base"]), str(folder)).eval())
    assert (references["safety"] - references["base"]).abs().max() > 1e-2  # the experts do change the output
    model = midpo_model(arch).eval()
    assert len(model.routed) == 2 and all(p.endswith(ARCHS[arch["name"]][1]) for p in model.routed)
    for gates, ref in (((0.0, 0.0), "base"), ((1.0, 0.0), "safety"), ((0.0, 1.0), "helpfulness")):
        with model.fixed_gates(*gates):
            got = logits(model)
        assert (got - references[ref]).abs().max().item() < 1e-5, (arch["name"], gates)


@pytest.mark.parametrize("granularity", ["token", "prompt"])
def test_cached_greedy_generation_equals_uncached(arch, granularity: str) -> None:
    """KV cache (sliding-window caches included) must not change a single greedy token, base or routed."""
    torch.manual_seed(3)
    model = midpo_model(arch, RouterSettings(granularity=granularity)).eval()
    with torch.no_grad():
        for p in model.router_parameters():
            p.normal_(std=1.0)  # gates that differ per token and per prompt
    b = batch()
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    for m in (model, load(arch["base"])):
        with torch.no_grad():
            cached = m.generate(**b, use_cache=True, **kw)
            uncached = m.generate(**b, use_cache=False, **kw)
        assert cached.shape[1] == 12 + 10
        assert torch.equal(cached, uncached), arch["name"]


def safe_rlhf_end_scores(folder: Path, prefix: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """safe-rlhf's <Arch>ForScore, written out: the backbone under `prefix.`, `score_head`, last real token."""
    config = AutoConfig.from_pretrained(str(folder))
    assert config.architectures[0].endswith("ForScore") and config.score_type == "reward"
    state = load_file(str(folder / "model.safetensors"))
    backbone = AutoModel.from_config(config).eval()
    own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    missing, unexpected = backbone.load_state_dict(own, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k and "inv_freq" not in k], missing
    assert set(state) - {f"{prefix}.{k}" for k in own} <= {"score_head.weight", "score_head.bias", "normalizer.mean",
                                                             "normalizer.var", "normalizer.count"}
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        scores = hidden @ state["score_head.weight"].T + state["score_head.bias"]  # (B, T, 1)
    last = mask.sum(1) - 1  # right padding: the last real token
    return scores[torch.arange(ids.shape[0]), last, 0]


def test_score_model_saves_in_safe_rlhf_format_and_loads_back_to_the_same_scores(arch, tmp_path) -> None:
    from midpo_cli.modeling.loading import load_tokenizer  # any tokenizer: the format saves one beside the weights

    backbone = load(arch["base"]).base_model
    model = ScoreModel(backbone, score_type="reward").eval()
    assert model.prefix == arch["prefix"]
    with torch.no_grad():
        model.score_head.weight.normal_(std=0.5)
        model.score_head.bias.fill_(0.25)
    ids = torch.randint(3, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    with torch.no_grad():
        _, before = model(input_ids=ids, attention_mask=mask)
    folder = save_score_model(model, load_tokenizer("embedded:tiny-llama"), tmp_path / "rm")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == [type(model.config).__name__.removesuffix("Config") + "ForScore"]
    keys = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith(arch["prefix"] + ".layers.") for k in keys) and "score_head.weight" in keys
    reference = safe_rlhf_end_scores(folder, arch["prefix"], ids, mask)
    loaded, _ = load_score_model(folder)
    with torch.no_grad():
        _, after = loaded(input_ids=ids, attention_mask=mask)
    assert torch.allclose(before, reference, atol=1e-5), (before, reference)
    assert torch.allclose(after, before, atol=1e-6)


# ---------------------------------------------------------------------------------------------- targets


def test_default_targets_per_architecture_and_errors_naming_the_model_type() -> None:
    assert resolve_targets("gpt_neox", None) == ["dense_4h_to_h"]
    assert resolve_targets("gemma3_text", None) == ["down_proj"]
    assert resolve_targets("phi3", None) == ["down_proj"]
    assert resolve_targets("gpt_neox", ["query_key_value"]) == ["query_key_value"]  # the recipe's choice wins
    with pytest.raises(InputError, match="model_type 'opt' has no default LoRA target.*target_modules"):
        resolve_targets("opt", None)
    assert resolve_targets("opt", ["fc2"]) == ["fc2"]
    with pytest.raises(InputError, match="model_type 'gpt2' is not supported.*Conv1D"):
        resolve_targets("gpt2", ["c_proj"])


def save_config(tmp_path: Path, config) -> Path:
    folder = tmp_path / config.model_type
    config.save_pretrained(str(folder))
    return folder


def test_preflight_checks_targets_on_a_weightless_model(tmp_path) -> None:
    """Before any training: the default target exists and is routable, a wrong name or a non-Linear layer fails."""
    neox = save_config(tmp_path, GPTNeoXConfig(**COMMON))
    assert preflight_targets(str(neox), None) == ["dense_4h_to_h"]
    with pytest.raises(InputError, match=r"\['down_proj'\]: no layer of this gpt_neox model"):
        preflight_targets(str(neox), ["down_proj"])
    with pytest.raises(InputError, match="model_type 'gpt2' is not supported"):
        preflight_targets(str(save_config(tmp_path, GPT2Config(n_embd=32, n_layer=1, n_head=4))), None)
    opt = save_config(tmp_path, OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                          num_attention_heads=4, word_embed_proj_dim=32))
    with pytest.raises(InputError, match="model_type 'opt' has no default"):
        preflight_targets(str(opt), None)
    assert preflight_targets(str(opt), ["fc2"]) == ["fc2"]
    with pytest.raises(InputError, match="is a .*LayerNorm; the MidPO router routes torch.nn.Linear layers only"):
        preflight_targets(str(opt), ["final_layer_norm"])


def test_pipeline_preflight_refuses_an_unsupported_base_before_sft(tmp_path) -> None:
    from midpo_cli.pipeline.preflight import check_architecture
    from midpo_cli.recipe import load_recipe

    gpt2 = save_config(tmp_path, GPT2Config(n_embd=32, n_layer=1, n_head=4))
    recipe = load_recipe(None, [f"base_model={gpt2}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(InputError, match="gpt2"):
        check_architecture(recipe, "safety_expert")
    check_architecture(recipe, "sft")  # SFT of any causal LM is fine


# ---------------------------------------------------------------------------------------------- precision


def test_bf16_base_keeps_router_and_lora_in_fp32(arch) -> None:
    base = AutoModelForCausalLM.from_pretrained(str(arch["base"]), dtype=torch.bfloat16)
    peft_model = get_peft_model(base, lora_config(r=4, alpha=8, target_modules=(ARCHS[arch["name"]][1],)))
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}
    a = arch["adapters"]
    model = wrap(AutoModelForCausalLM.from_pretrained(str(arch["base"]), dtype=torch.bfloat16),
                 read_adapter(a["safety"]), read_adapter(a["helpfulness"]))
    assert {p.dtype for p in model.router_parameters()} == {torch.float32}
    with torch.no_grad():
        out = model(**batch()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(g.dtype == torch.bfloat16 for g in model.gates())


def test_auto_precision_is_fp32_on_cpu(monkeypatch) -> None:
    from midpo_cli.modeling.loading import resolve_precision, torch_dtype
    from midpo_cli.recipe import load_recipe
    from midpo_cli.stages.kit.inputs import engine_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "fp32" and torch_dtype("auto") == torch.float32
    assert load_recipe(None).train.precision == "auto"
    assert engine_settings(load_recipe(None), "sft").precision == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto") == "bf16" and resolve_precision("fp16") == "fp16"
    with pytest.raises(InputError, match="'fp8' is not one of"):
        resolve_precision("fp8")
