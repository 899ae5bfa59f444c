"""One packed row per pair, prompt encoded once (`train.share_prompt`, docs/design.md §2.1 "Shared prompt").

The oracle is independent of every batch layout: each sequence alone, unpadded, through the full logits, in
float64. Packed log-probs and the gradients of what each stage trains (LoRA weights; the router's weights
through the DPO loss and the gate penalty) must equal it to 1e-8 on ragged pairs, both padding sides, every
tested architecture, sdpa and eager attention. Then the fallbacks: what the block mask cannot express runs as
two rows, and the first-call check does catch a mask that is wrong.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from test_chunked_logps import routed
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

from midpo_cli.data.packing import SEGMENT_CHOSEN, SEGMENT_PAD, SEGMENT_PROMPT, SEGMENT_REJECTED, pack_pairs
from midpo_cli.data.tokenize import collate_pairs
from midpo_cli.engine import shared_prompt
from midpo_cli.engine.answer_logps import causal_lm
from midpo_cli.engine.preference import concatenated_logps
from midpo_cli.engine.shared_prompt import block_causal_mask, packing_reason, to_rows
from midpo_cli.losses.preference import sequence_logps
from midpo_cli.modeling.lora import lora_config
from midpo_cli.modeling.midpo import RouterSettings
from midpo_cli.stages.router import make_router_loss

F64 = {"rtol": 0.0, "atol": 1e-8}
# Where the chosen and the rejected answer's gradients meet — the shared prompt's positions — they are summed
# before Hugging Face's norms, which compute in float32 even for a float64 model (LlamaRMSNorm and kin), and so
# rounded once instead of each on its own: equal to float32's rounding, not float64's. Each answer's gradient
# alone (nothing summed) is checked to 1e-8.
MET_AT_THE_PROMPT = 1e-6  # of the gradient's largest entry (float32's epsilon is 1.2e-7)


def assert_close(got: torch.Tensor, want: torch.Tensor, tol) -> None:
    """Within `F64`, or (a float) within tol × the largest |want| (`MET_AT_THE_PROMPT`)."""
    if isinstance(tol, dict):
        torch.testing.assert_close(got, want, **tol)
    else:
        err, scale = float((got - want).abs().max()), float(want.abs().max())
        assert err <= tol * scale, f"max |difference| {err:.3g} > {tol:g} × {scale:.3g}"
VOCAB = 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, pad_token_id=0, eos_token_id=2, bos_token_id=1)
CONFIGS = {  # windows longer than any row here, so the block mask is exact (shorter ones: the fallback test)
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=32),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    "gemma3": lambda: Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=32,
                                       layer_types=["sliding_attention", "full_attention"],
                                       final_logit_softcapping=3.0, tie_word_embeddings=True),
    "phi3": lambda: Phi3Config(**COMMON, num_key_value_heads=2),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON),
}


def features(seed: int = 0) -> list[dict]:
    """5 pairs: prompts of 1–5 tokens, answers of 1–7, so rows and packed rows are ragged."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [(3, 7, 2), (5, 1, 4), (1, 3, 3), (4, 6, 1), (2, 2, 7)]  # (prompt, chosen, rejected)
    out = []
    for i, (p, c, r) in enumerate(lengths):
        prompt, chosen, rejected = (torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in (p, c, r))
        out.append({"pair_index": i, "chosen_input_ids": prompt + chosen, "rejected_input_ids": prompt + rejected,
                    "chosen_prompt_len": p, "rejected_prompt_len": p,
                    "ref_chosen_logps": -10.0 - i, "ref_rejected_logps": -11.0 + i})
    return out


def alone(model, feats: list[dict], **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: every sequence in its own batch of one, no padding, full logits."""
    sides = []
    for side in ("chosen", "rejected"):
        values = []
        for f in feats:
            ids = torch.tensor([f[f"{side}_input_ids"]])
            response = torch.zeros_like(ids)
            response[0, f[f"{side}_prompt_len"]:] = 1
            extra = {"prompt_mask": ~response.bool()} if kw else {}
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
            values.append(sequence_logps(logits.double(), ids, response)[0])
        sides.append(torch.stack(values))
    return sides[0], sides[1]


def forward_rows(model) -> list[int]:
    """The batch size of every forward the model's embeddings see from now on (5 packed rows, or 10 rows)."""
    seen: list[int] = []
    causal_lm(model).get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    return seen


def tiny(arch: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation=attn).double().eval()


def test_pack_pairs_layout_by_hand():
    f = {"pair_index": 0, "chosen_input_ids": [5, 6, 7, 8, 9], "rejected_input_ids": [5, 6, 10],
         "chosen_prompt_len": 2, "rejected_prompt_len": 2}
    packed = pack_pairs([f], pad_id=0, padding_side="left")
    assert packed["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed["packed_segments"].tolist() == [[SEGMENT_PROMPT] * 2 + [SEGMENT_CHOSEN] * 3 + [SEGMENT_REJECTED]]
    assert packed["packed_position_ids"].tolist() == [[0, 1, 2, 3, 4, 2]]
    assert packed["packed_index"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 5]]  # rejected row left-padded by 2
    mask = block_causal_mask(packed["packed_segments"], "bool", torch.float32)[0, 0]
    assert mask[5].tolist() == [True, True, False, False, False, True]  # rejected sees the prompt and itself
    assert mask[4].tolist() == [True] * 5 + [False]


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_rows_hold_every_token_of_the_two_row_view(side):
    feats = features()
    batch = collate_pairs(feats, pad_id=0, padding_side=side, share_prompt=True)
    real = batch["attention_mask"].bool()
    assert torch.equal(to_rows(batch["packed_input_ids"], batch)[real], batch["input_ids"][real])
    own_position = real.long().cumsum(1) - 1  # each row's position ids counted over its real tokens
    assert torch.equal(to_rows(batch["packed_position_ids"], batch)[real], own_position[real])
    assert int((batch["packed_segments"] != SEGMENT_PAD).sum()) < int(real.sum())  # fewer tokens than 2B rows


def test_pairs_whose_prompts_differ_stay_two_rows():
    feats = features()
    feats[2] = {**feats[2], "rejected_input_ids": [63, *feats[2]["rejected_input_ids"][1:]]}
    assert pack_pairs(feats, 0) is None
    assert "packed_input_ids" not in collate_pairs(feats, 0, share_prompt=True)
    assert "packed_input_ids" not in collate_pairs(features(), 0)  # off unless asked


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_logps_and_lora_gradients_equal_each_sequence_alone(arch, side):
    model = get_peft_model(tiny(arch), lora_config(r=4, alpha=8, target_modules=("down_proj", "dense_4h_to_h")))
    with torch.no_grad():  # a LoRA that changes the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    feats = features()
    batch = collate_pairs(feats, pad_id=0, padding_side=side, share_prompt=True)
    assert packing_reason(causal_lm(model), batch) is None
    params = [p for p in model.parameters() if p.requires_grad]
    seen = forward_rows(model)
    got = concatenated_logps(model, batch)
    assert seen[-1] == 5  # the packed rows ran (after the first call's check: 4 packed, then 8 rows)
    want = alone(model, feats)
    upstream = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)  # unequal weights per pair, as DPO gives
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **F64)
    grads = []
    for logps in (got, want):
        chosen = torch.autograd.grad(logps[0] @ upstream, params, retain_graph=True)
        rejected = torch.autograd.grad(logps[1] @ upstream.flip(0), params, retain_graph=True)
        both = torch.autograd.grad(logps[0] @ upstream - logps[1] @ upstream.flip(0), params)
        grads.append((chosen, rejected, both))
    for (got_grads, want_grads, tol) in zip(*grads, (F64, F64, MET_AT_THE_PROMPT), strict=True):
        for g, w in zip(got_grads, want_grads, strict=True):
            assert_close(g, w, tol)


def test_eager_attention_takes_the_additive_mask():
    """Eager attention's softmax runs in float32 (Hugging Face's choice), so the layouts agree to its rounding."""
    model = tiny("llama", attn="eager")
    feats = features(seed=1)
    seen = forward_rows(model)
    got = concatenated_logps(model, collate_pairs(feats, 0, share_prompt=True))
    assert seen == [4, 8, 5]
    for g, w in zip(got, alone(model, feats), strict=True):
        assert_close(g, w, MET_AT_THE_PROMPT)


@pytest.mark.parametrize("scope", ["answer", "all"])
@pytest.mark.parametrize("settings", [RouterSettings(), RouterSettings(granularity="prompt"),
                                      RouterSettings(input="token+prompt", hidden=8)], ids=["token", "prompt", "both"])
def test_router_loss_and_gradients_equal_two_rows_per_pair(settings, scope):
    """DPO + gate penalty (over answers, or every real token: the prompt counted in both rows, as before).

    The routers run in float32 in any model dtype, and a float32 matmul's rounding depends on the batch's
    shape, so the two layouts agree to float32's rounding here."""
    model = routed(torch.float64, settings)  # random experts and routers on a tiny LLaMA
    feats = features()
    loss_fn = make_router_loss(0.1, 0.3, 0.2, scope)
    extras = ("ref_chosen_logps", "ref_rejected_logps")
    runs = []
    for share in (True, False):
        batch = collate_pairs(feats, 0, extras=extras, share_prompt=share)
        seen = forward_rows(model)
        loss, metrics = loss_fn(model, batch)
        assert seen[-1] == (5 if share else 10)
        runs.append((loss, metrics, torch.autograd.grad(loss, model.router_parameters())))
    (loss_p, met_p, grad_p), (loss_r, met_r, grad_r) = runs
    assert_close(loss_p, loss_r, MET_AT_THE_PROMPT)
    for key in met_r:
        assert_close(met_p[key].double(), met_r[key].double(), MET_AT_THE_PROMPT)
    for g, w in zip(grad_p, grad_r, strict=True):
        assert_close(g, w, MET_AT_THE_PROMPT)
    two_rows = collate_pairs(feats, 0)
    prompt_mask = two_rows["attention_mask"].bool() & ~two_rows["response_mask"].bool()
    got = concatenated_logps(model, collate_pairs(feats, 0, share_prompt=True), prompt_mask=prompt_mask)
    for g, w in zip(got, alone(model, feats, prompt_mask=True), strict=True):
        assert_close(g, w, MET_AT_THE_PROMPT)


@pytest.fixture
def warnings(monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(shared_prompt.console, "warn", said.append)
    monkeypatch.setattr(shared_prompt, "_WARNED", set())
    monkeypatch.setattr(shared_prompt, "_CHECKED", type(shared_prompt._CHECKED)())
    return said


def test_rows_longer_than_a_sliding_window_run_as_two_rows(warnings):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=4))
    model = model.double().eval()
    feats = features()
    batch = collate_pairs(feats, 0, share_prompt=True)
    assert "sliding_window = 4" in packing_reason(model, batch)
    assert packing_reason(model, collate_pairs(feats[2:3], 0, share_prompt=True)) is None  # 4 tokens: fits
    got = concatenated_logps(model, batch)
    for g, w in zip(got, alone(model, feats), strict=True):
        torch.testing.assert_close(g, w, **F64)
    assert len(warnings) == 1 and "separate rows" in warnings[0]


def test_a_kernel_without_custom_masks_runs_as_two_rows(warnings):
    model = tiny("llama")
    model.config._attn_implementation = "flash_attention_2"  # never run: the reason is found first
    assert "flash_attention_2" in packing_reason(model, collate_pairs(features(), 0, share_prompt=True))


def test_the_first_call_check_catches_a_wrong_mask_and_falls_back(warnings, monkeypatch):
    """A mask that lets the rejected answer see the chosen one (plain causal over the packed row) is wrong; the
    first call's comparison with two rows finds it, and every call then runs two rows."""
    monkeypatch.setattr(shared_prompt, "block_causal_mask",
                        lambda segments, kind, dtype: block_causal_mask(segments.clamp(max=SEGMENT_PROMPT), kind,
                                                                        dtype))
    model = tiny("llama")
    feats = features()
    seen = forward_rows(model)
    for _ in range(2):
        got = concatenated_logps(model, collate_pairs(feats, 0, share_prompt=True))
        for g, w in zip(got, alone(model, feats), strict=True):
            torch.testing.assert_close(g, w, **F64)
    assert seen[:3] == [4, 8, 10] and seen[13] == 10  # check (4 packed, 8 rows), then 10 rows each time
    assert len(warnings) == 1 and "differ from two rows'" in warnings[0]
