"""Answer-only, chunked log-probs (docs/design.md §2.1) against the full-logits oracle `sequence_logps`.

The maths (`midpo_cli.losses.logprobs`) is checked in float64 to 1e-8 — values and gradients for hidden states,
the output embedding and its bias — over ragged answers, both padding sides, chunk sizes that do and do
not divide the answer positions, and soft-capping. The model-level helper (`answer_logps`) is checked on a
tiny random LLaMA / Gemma 3 (soft-capped, tied embeddings), a PEFT LoRA expert and the routed MidPO model,
including the gradients of what each stage trains; then the fallbacks, and that no (B, T, V) tensor exists.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from midpo_cli.engine import answer_logps as answer_logps_module
from midpo_cli.engine.answer_logps import answer_logps, full_logits_reason
from midpo_cli.losses.logprobs import chunked_answer_logps, default_chunk_size
from midpo_cli.losses.preference import answer_nll, sequence_logps, sft_loss
from midpo_cli.modeling.lora import AdapterWeights, LoraBranch, lora_config
from midpo_cli.modeling.midpo import RouterSettings, wrap

F64 = {"rtol": 0.0, "atol": 1e-8}
F32 = {"rtol": 0.0, "atol": 1e-5}


def ragged_batch(vocab: int, side: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """4 rows of 11 tokens: prompts of 2–4 tokens, answers of 1–7, padded on `side`; 15 answer positions."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [(3, 7), (4, 1), (2, 5), (3, 2)]  # (prompt, answer)
    width = 11
    ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    attention, response = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(lengths):
        start = 0 if side == "right" else width - prompt - answer
        attention[row, start:start + prompt + answer] = 1
        response[row, start + prompt:start + prompt + answer] = 1
        ids[row, attention[row] == 0] = 0
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def full_logits(hidden, weight, bias, softcap):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, None, 1000])
def test_chunked_logps_and_gradients_equal_full_logits_in_float64(side, softcap, with_bias, chunk_size):
    vocab, dim = 23, 6
    batch = ragged_batch(vocab, side)
    assert int(batch["response_mask"][:, 1:].sum()) % 4 != 0  # chunk 4 leaves a partial last chunk
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 11, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(vocab, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    upstream = torch.randn(4, dtype=torch.float64, generator=gen)  # unequal weights per row, as DPO gives
    leaves = [t for t in (hidden, weight, bias) if t is not None]

    got = chunked_answer_logps(hidden, weight, bias, batch["input_ids"], batch["response_mask"],
                               softcap=softcap, chunk_size=chunk_size)
    want = sequence_logps(full_logits(hidden, weight, bias, softcap), batch["input_ids"], batch["response_mask"])
    torch.testing.assert_close(got, want, **F64)
    for g, w in zip(torch.autograd.grad(got @ upstream, leaves), torch.autograd.grad(want @ upstream, leaves),
                    strict=True):
        torch.testing.assert_close(g, w, **F64)


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    batch = ragged_batch(17, "right")
    hidden = torch.randn(4, 11, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(17, 5, dtype=torch.float64)  # frozen, as lm_head is for LoRA and the router
    got = chunked_answer_logps(hidden, weight, None, batch["input_ids"], batch["response_mask"], chunk_size=2)
    (grad,) = torch.autograd.grad(got.sum(), hidden)
    want = sequence_logps(hidden @ weight.T, batch["input_ids"], batch["response_mask"])
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), hidden)[0], **F64)
    assert grad[batch["response_mask"].roll(-1, 1) == 0].abs().max() == 0  # only scoring positions get a gradient


def test_bf16_inputs_are_computed_in_float32():
    batch = ragged_batch(300, "right")
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 11, 16, generator=gen).bfloat16().requires_grad_()
    weight = torch.randn(300, 16, generator=gen).bfloat16().requires_grad_()
    got = chunked_answer_logps(hidden, weight, None, batch["input_ids"], batch["response_mask"], softcap=5.0)
    want = sequence_logps(full_logits(hidden.float(), weight.float(), None, 5.0), batch["input_ids"],
                          batch["response_mask"])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-4)  # bf16 logits would be off by ~1e-1
    got.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16


def test_default_chunk_size_keeps_one_chunk_of_logits_near_64_mib():
    assert default_chunk_size(262_144) == 64
    assert default_chunk_size(262_144, torch.bfloat16) == 64  # computed in float32 either way
    assert default_chunk_size(262_144, torch.float64) == 32
    assert default_chunk_size(10**9) == 1


# -- the model-level helper --------------------------------------------------------------------------------

VOCAB = 320
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=2, bos_token_id=1)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, tie_word_embeddings=False),
    "gemma3": lambda: Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=4, final_logit_softcapping=3.0,
                                       layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True),
}


def tiny_lm(arch: str, dtype: torch.dtype):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[arch]()).to(dtype).eval()


def oracle(model, batch, **kw) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw).logits
    return sequence_logps(logits.to(torch.promote_types(logits.dtype, torch.float32)), batch["input_ids"],
                          batch["response_mask"])


def assert_same_values_and_grads(model, batch, tol, **kw):
    """answer_logps = the full-logits oracle, and so are the gradients of every trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    assert params
    upstream = torch.linspace(-1.0, 2.0, batch["input_ids"].shape[0], dtype=torch.float64)
    got, want = answer_logps(model, batch, chunk_size=3, **kw), oracle(model, batch, **kw)
    torch.testing.assert_close(got, want, **tol)
    got_grads = torch.autograd.grad(got @ upstream.to(got.dtype), params)
    want_grads = torch.autograd.grad(want @ upstream.to(want.dtype), params)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)], ids=["f64", "f32"])
@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_full_fine_tune_equals_full_logits(arch, dtype, tol, side):
    """SFT trains every weight, lm_head (tied to the embeddings on Gemma) included."""
    model = tiny_lm(arch, dtype)
    assert full_logits_reason(model) is None
    assert_same_values_and_grads(model, ragged_batch(VOCAB, side), tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)], ids=["f64", "f32"])
def test_lora_expert_and_its_reference_equal_full_logits(dtype, tol):
    model = get_peft_model(tiny_lm("llama", dtype), lora_config(r=4, alpha=8))
    with torch.no_grad():  # a LoRA that changes the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    batch = ragged_batch(VOCAB, "right")
    assert_same_values_and_grads(model, batch, tol)  # the LoRA parameters' gradients
    with torch.no_grad():
        base = oracle(tiny_lm("llama", dtype), batch)  # the same weights without the adapter: π_ref
        with model.disable_adapter():
            torch.testing.assert_close(answer_logps(model, batch), base, **tol)
        assert (answer_logps(model, batch) - base).abs().max() > 1e-3  # the adapter is on again, and matters


def routed(dtype, settings: RouterSettings):
    """The MidPO model on a tiny LLaMA with two random experts and random (not zero-initialised) routers."""
    base = tiny_lm("llama", dtype)
    gen = torch.Generator().manual_seed(3)
    adapters = []
    for _ in range(2):
        modules = {f"model.layers.{i}.mlp.down_proj": LoraBranch(torch.randn(4, 48, generator=gen, dtype=dtype),
                                                                 torch.randn(32, 4, generator=gen, dtype=dtype), 2.0)
                   for i in range(2)}
        adapters.append(AdapterWeights(modules=modules, r=4, alpha=8, scaling=2.0))
    model = wrap(base, *adapters, settings)
    with torch.no_grad():
        for p in model.router_parameters():
            p.normal_(std=0.3, generator=gen)
    return model


@pytest.mark.parametrize("settings", [RouterSettings(), RouterSettings(granularity="prompt"),
                                      RouterSettings(input="token+prompt", hidden=8)], ids=["token", "prompt", "both"])
def test_routed_midpo_model_equals_full_logits_with_router_gradients(settings):
    model = routed(torch.float64, settings)
    batch = ragged_batch(VOCAB, "right")
    kw = {"prompt_mask": batch["attention_mask"].bool() & ~batch["response_mask"].bool()}
    assert_same_values_and_grads(model, batch, F64, **kw)
    assert_same_values_and_grads(model.train(), batch, F64, **kw)  # dropout is 0: train mode changes nothing


def test_sft_loss_from_answer_logps_equals_sft_loss_of_the_logits():
    model = tiny_lm("gemma3", torch.float64)
    batch = ragged_batch(VOCAB, "left")
    got = answer_nll(answer_logps(model, batch), batch["response_mask"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, sft_loss(logits, batch["input_ids"], batch["response_mask"]), **F64)


# -- fallbacks ----------------------------------------------------------------------------------------------

class ScaledLlama(LlamaForCausalLM):
    """A custom head the config does not announce: the forward doubles the logits."""

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
        out = super().forward(input_ids, attention_mask, logits_to_keep=logits_to_keep, **kwargs)
        out.logits = out.logits * 2
        return out


def scaled_llama():
    torch.manual_seed(0)
    return ScaledLlama(CONFIGS["llama"]()).double().eval()


def with_logit_scale():
    model = tiny_lm("llama", torch.float64)
    model.config.logit_scale = 0.0625  # Cohere's attribute; LLaMA's forward ignores it, the check cannot know
    return model


def with_zero3_weight():
    model = tiny_lm("llama", torch.float64)
    model.lm_head.weight.ds_id = 0  # what DeepSpeed ZeRO-3 sets on every partitioned parameter
    return model


@pytest.mark.parametrize("make,reason", [(scaled_llama, "differ from lm_head"), (with_logit_scale, "logit_scale"),
                                         (with_zero3_weight, "ZeRO-3")], ids=["custom-head", "config", "zero3"])
def test_what_the_chunks_cannot_express_falls_back_to_full_logits_once(make, reason, monkeypatch):
    warnings = []
    monkeypatch.setattr(answer_logps_module.console, "warn", warnings.append)
    monkeypatch.setattr(answer_logps_module, "_WARNED", set())
    model = make()
    batch = ragged_batch(VOCAB, "right")
    for _ in range(2):
        torch.testing.assert_close(answer_logps(model, batch), oracle(model, batch), **F64)
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert reason in full_logits_reason(model)


# -- memory: no (B, T, V) tensor ----------------------------------------------------------------------------

class LargestVocabTensor(TorchDispatchMode):
    """Records the largest tensor any op produces with a `vocab`-sized dimension, weight-shaped ones aside."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab, self.weight_shapes, self.largest = vocab, {(vocab, hidden), (hidden, vocab)}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and self.vocab in t.shape and tuple(t.shape) not in self.weight_shapes:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_larger_than_one_chunk_of_logits_in_forward_or_backward():
    vocab, chunk = 5_000, 3
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**COMMON, "vocab_size": vocab})).train()
    batch = ragged_batch(vocab, "right")
    rows = batch["input_ids"].shape[0]
    for compute, allowed in ((lambda: answer_logps(model, batch, chunk_size=chunk), max(chunk, rows) * vocab),
                             (lambda: oracle(model, batch), None)):
        with LargestVocabTensor(vocab, COMMON["hidden_size"]) as seen:
            compute().sum().backward()
        if allowed is None:  # the oracle does form (B, T, V): the probe sees what it is meant to catch
            assert seen.largest >= batch["input_ids"].numel() * vocab
        else:  # one chunk's logits, or the model's own last-position logits (B, 1, V)
            assert seen.largest <= allowed
