"""The routed MidPO model (docs/design.md §2): parity with base and experts, the hand mix, training, generation, I/O.

The references are independent of midpo.py: the base model and peft's own `PeftModel` with one
adapter for the experts, and a float64 computation written out in the test for the mix.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from midpo_cli.errors import InputError
from midpo_cli.modeling.lora import AdapterWeights, LoraBranch, lora_config, read_adapter
from midpo_cli.modeling.midpo import (
    CONFIG_FILE,
    ROUTER_FILE,
    RoutedLinear,
    Router,
    RouterSettings,
    RoutingState,
    count_router_parameters,
    load_midpo,
    save_midpo,
    wrap,
)

D_MODEL, D_FF, LAYERS, VOCAB = 32, 64, 2, 100
CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}


def tiny_config(family: str, **overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              pad_token_id=0, eos_token_id=2, bos_token_id=1, tie_word_embeddings=False)
    return CONFIGS[family](**{**kw, **overrides})


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", bos_token="w1", eos_token="w2",
                                   unk_token="w3")


def build(tmp_path, family: str = "llama", seed: int = 0, **overrides):
    """Base folder (with tokenizer) and two PEFT adapters with random non-zero B (else ΔW = 0)."""
    torch.manual_seed(seed)
    base_dir = tmp_path / f"{family}-base"
    AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).save_pretrained(str(base_dir))
    tiny_tokenizer().save_pretrained(str(base_dir))
    adapters = {}
    for i, name in enumerate(("safety", "helpfulness")):
        torch.manual_seed(seed + 10 + i)
        peft_model = get_peft_model(load_base(base_dir), lora_config(r=4, alpha=8))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.5)
        adapters[name] = tmp_path / f"{family}-{name}"
        peft_model.save_pretrained(str(adapters[name]))
    return base_dir, adapters


def load_base(base_dir):
    return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()


def routed(base_dir, adapters, settings: RouterSettings | None = None, **kw):
    return wrap(load_base(base_dir), read_adapter(adapters["safety"]), read_adapter(adapters["helpfulness"]),
                settings, **kw).eval()


def randomise_router(model, scale: float = 0.5, seed: int = 1) -> None:
    """Non-trivial routers so that gates vary by token (the zero init gives 0.5 everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    model.load_router_state_dict({k: torch.randn(v.shape, generator=gen) * scale
                                  for k, v in model.router_state_dict().items()})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build(tmp_path_factory.mktemp("llama"))


def ids_batch(seed: int = 0, batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_fixed_gates_reproduce_base_and_each_expert(tmp_path, family):
    base_dir, adapters = build(tmp_path, family)
    ids = ids_batch()
    with torch.no_grad():
        base = load_base(base_dir)(ids).logits
        safety = PeftModel.from_pretrained(load_base(base_dir), str(adapters["safety"])).eval()(ids).logits
        helpful = PeftModel.from_pretrained(load_base(base_dir), str(adapters["helpfulness"])).eval()(ids).logits
        assert (safety - base).abs().max() > 1e-2 and (helpful - safety).abs().max() > 1e-2  # test can fail

        model = routed(base_dir, adapters)
        randomise_router(model)
        exact = {"rtol": 0.0, "atol": 1e-5}
        with model.fixed_gates(0.0, 0.0):
            torch.testing.assert_close(model(ids).logits, base, **exact)
        with model.fixed_gates(1.0, 0.0):
            torch.testing.assert_close(model(ids).logits, safety, **exact)
        with model.fixed_gates(0.0, 1.0):
            torch.testing.assert_close(model(ids).logits, helpful, **exact)
        with model.routing_disabled():  # the DPO reference: the same weights, routing off
            torch.testing.assert_close(model(ids).logits, base, **exact)
        assert (model(ids).logits - base).abs().max() > 1e-3  # the learned routers do route

    constructed = routed(base_dir, adapters, fixed_gates=(1.0, 0.0))
    with torch.no_grad():
        torch.testing.assert_close(constructed(ids).logits, safety, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("hidden", [None, 3])
def test_routed_linear_equals_hand_mix_in_float64(hidden):
    """y = W h + b + s_s·g_s·B_s A_s h + s_h·g_h·B_h A_h h, with g = sigmoid(router(h)) written out."""
    torch.manual_seed(0)
    d_in, d_out, r = 6, 5, 2
    base = torch.nn.Linear(d_in, d_out, dtype=torch.float64)
    branches = [LoraBranch(A=torch.randn(r, d_in, dtype=torch.float64), B=torch.randn(d_out, r, dtype=torch.float64),
                           scaling=s) for s in (2.0, 0.5)]
    router = Router(d_in, RouterSettings(hidden=hidden), dtype=torch.float64)
    with torch.no_grad():
        for p in router.parameters():
            p.normal_()
    layer = RoutedLinear(base, *branches, router, RoutingState())
    h = torch.randn(2, 3, d_in, dtype=torch.float64)

    W, b = base.weight.detach(), base.bias.detach()
    if hidden is None:
        logits = h @ router.net.weight.T + router.net.bias
    else:
        first, last = router.net[0], router.net[2]
        z = h @ first.weight.T + first.bias
        logits = (z * torch.sigmoid(z)) @ last.weight.T + last.bias
    g = 1 / (1 + torch.exp(-logits.detach()))
    (bs, bh) = branches
    expected = (h @ W.T + b + 2.0 * g[..., :1] * (h @ bs.A.T @ bs.B.T)
                + 0.5 * g[..., 1:] * (h @ bh.A.T @ bh.B.T))
    torch.testing.assert_close(layer(h).detach(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.last_gates.detach(), g, rtol=0, atol=1e-12)

    # granularity "prompt": one gate pair per row, from the mean h over the prompt tokens only
    state = RoutingState(granularity="prompt", prompt_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    layer.state = state
    mean = torch.stack([h[0, :2].mean(0), h[1, :1].mean(0)])[:, None]  # (B, 1, d)
    expected_g = router(mean).detach().expand(2, 3, 2)
    layer(h)
    torch.testing.assert_close(layer.last_gates.detach(), expected_g, rtol=0, atol=1e-12)


def test_prompt_conditioned_token_router_in_float64():
    """input token+prompt: g = sigmoid(W [h_t ; mean of h over the prompt tokens] + b), per token."""
    torch.manual_seed(1)
    d_in, d_out, r = 6, 5, 2
    base = torch.nn.Linear(d_in, d_out, dtype=torch.float64)
    branches = [LoraBranch(A=torch.randn(r, d_in, dtype=torch.float64), B=torch.randn(d_out, r, dtype=torch.float64),
                           scaling=1.0) for _ in range(2)]
    router = Router(2 * d_in, RouterSettings(input="token+prompt"), dtype=torch.float64)
    with torch.no_grad():
        for p in router.parameters():
            p.normal_()
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    layer = RoutedLinear(base, *branches, router, RoutingState(router_input="token+prompt", prompt_mask=mask))
    h = torch.randn(2, 4, d_in, dtype=torch.float64)
    mean = torch.stack([h[0, :2].mean(0), h[1, :1].mean(0)])[:, None].expand(2, 4, d_in)
    logits = torch.cat([h, mean], -1) @ router.net.weight.T + router.net.bias
    layer(h)
    torch.testing.assert_close(layer.last_gates.detach(), torch.sigmoid(logits).detach(), rtol=0, atol=1e-12)
    assert not torch.allclose(layer.last_gates[0, 0], layer.last_gates[0, 1])  # still per token


def test_default_router_init_gives_equal_mix(llama):
    base_dir, adapters = llama
    model = routed(base_dir, adapters)
    ids = ids_batch()
    with torch.no_grad():
        out = model(ids).logits
        gates = model.gates()
        with model.fixed_gates(0.5, 0.5):
            mixed = model(ids).logits
    torch.testing.assert_close(out, mixed, rtol=0, atol=1e-6)
    assert len(gates) == LAYERS and all(g.shape == (*ids.shape, 2) and torch.all(g == 0.5) for g in gates)


def test_training_step_changes_router_parameters_only(llama):
    base_dir, adapters = llama
    model = routed(base_dir, adapters).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    router_names = {n for n, p in model.named_parameters() if ".router." in n}
    assert trainable == router_names and len(router_names) == 2 * LAYERS  # weight + bias per layer
    assert not model.model.lm_head.weight.requires_grad
    assert not model.model.get_input_embeddings().weight.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    ids = ids_batch()
    opt = torch.optim.AdamW(model.router_parameters(), lr=1e-2)
    logits = model(ids).logits
    g_s, g_h = model.gate_tensors()
    assert len(g_s) == LAYERS and g_s[0].shape == ids.shape and g_s[0].requires_grad
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss = loss + torch.stack([g.mean() for g in g_s]).mean() + torch.stack([(1 - g).mean() for g in g_h]).mean()
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in router_names:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n
            assert p.grad is None, n


def test_router_parameter_count_is_linear_in_layers_and_width(llama):
    base_dir, adapters = llama
    assert count_router_parameters(routed(base_dir, adapters)) == LAYERS * (2 * D_FF + 2)
    hidden = 5
    mlp = routed(base_dir, adapters, RouterSettings(hidden=hidden))
    assert count_router_parameters(mlp) == LAYERS * (D_FF * hidden + hidden + hidden * 2 + 2)


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = ids_batch(seed=3, batch=2, length=6)
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    return ids, mask


ROUTER_SHAPES = [("token", "token"), ("prompt", "token"), ("token", "token+prompt")]


@pytest.mark.parametrize(("granularity", "router_input"), ROUTER_SHAPES)
def test_cached_and_uncached_greedy_generation_agree_with_teacher_forcing(llama, granularity, router_input):
    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity=granularity, input=router_input))
    randomise_router(model, scale=1.0)
    ids, mask = left_padded_prompts()
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    new = cached[:, ids.shape[1]:]
    assert new.shape == (2, 6)

    # a training-style forward over prompt + answer predicts the same greedy tokens
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    prompt_mask = torch.cat([mask, torch.zeros_like(new)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(cached, attention_mask=full_mask, position_ids=positions, prompt_mask=prompt_mask).logits
    assert torch.equal(logits[:, ids.shape[1] - 1:-1].argmax(-1), new)
    if granularity == "prompt":  # held: one gate pair per row and layer over the whole sequence
        assert all(torch.equal(g, g[:, :1].expand_as(g)) for g in model.gates())
    # and the routing changes what is generated, so agreement above is not trivial
    with torch.no_grad(), model.routing_disabled():
        assert not torch.equal(model.generate(ids, use_cache=True, **kw), cached)


def test_prompt_granularity_needs_the_prompt_mask(llama):
    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity="prompt"))
    with pytest.raises(ValueError, match="prompt_mask"):
        model(ids_batch())


@pytest.mark.parametrize(("granularity", "router_input"), ROUTER_SHAPES)
def test_gates_at_real_tokens_ignore_padding(llama, granularity, router_input):
    """Right padding must not move the gates of real tokens, so a masked penalty sees only real ones."""
    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity=granularity, input=router_input))
    randomise_router(model)
    ids = ids_batch(seed=5, batch=2, length=8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    prompt = torch.zeros_like(ids)
    prompt[:, :3] = 1
    with torch.no_grad():
        model(ids, attention_mask=mask, prompt_mask=prompt)
        padded = model.gates()
        model(ids[1:, :5], prompt_mask=prompt[1:, :5])
        alone = model.gates()
    for g_pad, g_alone in zip(padded, alone, strict=True):
        torch.testing.assert_close(g_pad[1, :5], g_alone[0], rtol=0, atol=1e-6)


def test_save_and_load_roundtrip_gives_identical_logits(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    base_dir, adapters = build(run)
    model = routed(base_dir, adapters, RouterSettings(granularity="token", hidden=4))
    randomise_router(model)
    folder = save_midpo(model, tiny_tokenizer(), run / "router" / "midpo", base_model=str(base_dir))
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    assert cfg["adapters"] == {"safety": "adapters/safety", "helpfulness": "adapters/helpfulness"}
    assert cfg["scaling"] == {"safety": [2.0], "helpfulness": [2.0]}
    assert cfg["router"]["hidden"] == 4 and cfg["base_model_relative"]
    assert cfg["target_modules"] == [f"model.layers.{i}.mlp.down_proj" for i in range(LAYERS)]
    for name in ("safety", "helpfulness"):
        assert (folder / "adapters" / name / "adapter_model.safetensors").is_file()
    assert (folder / ROUTER_FILE).is_file() and (folder / "tokenizer_config.json").is_file()

    shutil.move(str(run), str(tmp_path / "moved"))  # the run dir moves as a whole
    loaded, tokenizer = load_midpo(tmp_path / "moved" / "router" / "midpo")
    ids = ids_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert tokenizer("w5 w7")["input_ids"][-2:] == [5, 7]
    assert not loaded.training and loaded.settings == model.settings


def test_load_refuses_changed_adapter_scaling(tmp_path):
    base_dir, adapters = build(tmp_path)
    folder = save_midpo(routed(base_dir, adapters), None, tmp_path / "midpo", base_model=str(base_dir))
    cfg_path = folder / "adapters" / "safety" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "lora_alpha": 16}))
    with pytest.raises(InputError, match="scaling"):
        load_midpo(folder)


def test_unsupported_layer_type_is_named():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    branch = LoraBranch(A=torch.zeros(2, 32), B=torch.zeros(32, 2), scaling=1.0)
    fake = AdapterWeights(modules={"transformer.h.0.attn.c_proj": branch}, r=2, alpha=2.0, scaling=1.0)
    with pytest.raises(InputError, match=r"transformer\.h\.0\.attn\.c_proj: unsupported layer type .*Conv1D"):
        wrap(gpt2, fake, fake, target_modules=("c_proj",))


def test_adapters_from_another_base_are_refused(tmp_path):
    base_dir, adapters = build(tmp_path / "a")
    other_dir, other = build(tmp_path / "b", intermediate_size=48)
    with pytest.raises(InputError, match="do not fit the base layer"):
        wrap(load_base(base_dir), read_adapter(adapters["safety"]), read_adapter(other["helpfulness"]))
    with pytest.raises(InputError, match="no module of the base model matches"):
        wrap(load_base(base_dir), read_adapter(adapters["safety"]), read_adapter(adapters["helpfulness"]),
             target_modules=("gate_projection",))


def test_fixed_gates_are_validated(llama):
    base_dir, adapters = llama
    with pytest.raises(InputError, match="fixed_gates"):
        routed(base_dir, adapters, fixed_gates=(1.5, 0.0))
