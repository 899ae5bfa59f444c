"""log π(answer | prompt) of a causal LM without its full logits (docs/design.md §2.1, "Large vocabularies").

The model's own forward runs with `logits_to_keep=1` (lm_head projects only the last position) while
a forward hook on the decoder backbone keeps its final hidden states; `chunked_answer_logps` then
projects just the answer positions. Because the forward is the caller's `model` itself — a plain HF
causal LM, a PeftModel, the routed MidpoModel (which sets its prompt mask around the call) or the
DeepSpeed engine around any of them — adapters, routers, activation checkpointing and DeepSpeed's
bookkeeping see exactly the call they saw before.

Full logits (`sequence_logps`, the oracle) remain the path, named once in a warning, for what the
chunked maths cannot reproduce: an output layer that is not a plain `nn.Linear`, unknown logit
scaling in the config (`logit_scale`, `logits_scaling`, ...), a forward without `logits_to_keep`,
ZeRO-3 (lm_head's weight is partitioned outside lm_head's own forward, so the chunks could not read
it), and any model whose returned last-position logits differ from softcap(lm_head(h)).
"""

from __future__ import annotations

import inspect
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from midpo_cli import console
from midpo_cli.losses.logprobs import chunked_answer_logps, compute_dtype
from midpo_cli.losses.preference import sequence_logps

# config attributes named like logits that the chunks reproduce (the final soft-cap) or that never touch the
# output logits (attention soft-cap, MoE router logits); any other one, unless 1, means full logits
HANDLED_CONFIG = {"final_logit_softcapping", "attn_logit_softcapping", "output_router_logits"}
# `_head_mismatch` per causal LM, from its first chunked call: the check is about the head's structure (a
# custom head, an unannounced logit scale), which training does not change, so it need not run every step
_HEAD_CHECKED: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()
_WARNED: set[tuple[str, str]] = set()  # (model class, reason): each fallback is named once per process


def answer_logps(model, batch: dict[str, torch.Tensor], *, chunk_size: int | None = None,
                 **forward_kwargs) -> torch.Tensor:
    """`sequence_logps(model(...).logits)` for batch's input_ids / attention_mask / response_mask, (B,) float32
    (float64 for a float64 model).

    forward_kwargs go to the model's forward unchanged (e.g. MidpoModel's `prompt_mask`). chunk_size:
    answer positions per lm_head chunk (default `logprobs.default_chunk_size`).
    """
    lm = causal_lm(model)
    reason = full_logits_reason(lm)
    if reason is None:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **forward_kwargs}
        hidden = checked_hidden_states(model, lm, inputs)
        if hidden is not None:
            return head_answer_logps(lm, hidden, batch, chunk_size)
        reason = _HEAD_CHECKED[lm]
    key = (type(model if lm is None else lm).__name__, reason)
    if key not in _WARNED:
        _WARNED.add(key)
        console.warn(f"{key[0]}: answer log-probs from the full (B, T, V) logits: {reason}")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **forward_kwargs).logits
    return sequence_logps(logits.to(compute_dtype(logits.dtype)), batch["input_ids"], batch["response_mask"])


def causal_lm(model: nn.Module) -> nn.Module | None:
    """The Hugging Face causal LM inside a DeepSpeed engine, PeftModel or MidpoModel (the first one found)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.get_output_embeddings() is not None:
            return module
    return None


def full_logits_reason(lm: nn.Module | None) -> str | None:
    """Why the chunked path cannot reproduce this model's logits, or None when it can."""
    if lm is None:
        return "not a Hugging Face causal LM with an output embedding"
    if _HEAD_CHECKED.get(lm):
        return _HEAD_CHECKED[lm]
    head = lm.get_output_embeddings()
    if type(head) is not nn.Linear:
        return f"its output layer is {type(head).__name__}, not a plain torch.nn.Linear"
    if hasattr(head.weight, "ds_id"):
        return "DeepSpeed ZeRO-3 partitions lm_head's weight outside lm_head's own forward"
    if not takes_logits_to_keep(lm):
        return "its forward takes no logits_to_keep"
    for key, value in vars(lm.config).items():
        if "logit" in key and key not in HANDLED_CONFIG and value not in (None, False, 1, 1.0):
            return f"config.{key} = {value!r} changes the logits in a way midpo does not reproduce"
    return None


def takes_logits_to_keep(lm: nn.Module) -> bool:
    """Whether a causal LM's forward can project only its last positions (most Hugging Face LMs can)."""
    return "logits_to_keep" in inspect.signature(lm.forward).parameters


def _softcap(lm: nn.Module) -> float | None:
    return getattr(lm.config, "final_logit_softcapping", None) or None


def checked_hidden_states(model, lm: nn.Module, inputs: dict) -> torch.Tensor | None:
    """The backbone's final hidden states (B, T, H) of `model(**inputs)`, lm_head run on the last position only;
    None when that position's logits show the head is not what the chunks compute (checked on the first call)."""
    captured: list[torch.Tensor] = []
    handle = lm.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        logits = model(**inputs, logits_to_keep=1).logits
    finally:
        handle.remove()
    hidden = captured[-1]
    if lm not in _HEAD_CHECKED:
        _HEAD_CHECKED[lm] = _head_mismatch(lm, hidden[:, -1], logits[:, -1])
    return hidden if _HEAD_CHECKED[lm] is None else None


def head_answer_logps(lm: nn.Module, hidden: torch.Tensor, batch: dict, chunk_size: int | None) -> torch.Tensor:
    """(B,) log π(answer | prompt) from hidden states aligned with batch's input_ids / response_mask."""
    head = lm.get_output_embeddings()
    return chunked_answer_logps(hidden, head.weight, head.bias, batch["input_ids"], batch["response_mask"],
                                softcap=_softcap(lm), chunk_size=chunk_size)


@torch.no_grad()
def _head_mismatch(lm: nn.Module, hidden_last: torch.Tensor, logits_last: torch.Tensor) -> str | None:
    """Check the chunked recipe softcap(h Wᵀ + b) against the logits the forward returned, at no extra pass.

    The tolerance allows 16-bit rounding (the model's logits may be bf16); a missed logit scale or cap
    is far outside it.
    """
    head = lm.get_output_embeddings()
    dtype = compute_dtype(logits_last.dtype)
    ours = F.linear(hidden_last.to(head.weight.dtype), head.weight, head.bias).to(dtype)
    cap = _softcap(lm)
    if cap is not None:
        ours = cap * torch.tanh(ours / cap)
    theirs = logits_last.to(dtype)
    tol = 3e-2 if logits_last.element_size() < 4 else 1e-4
    err = (ours - theirs).abs().max()
    if bool(err <= tol * (1 + theirs.abs().max())):  # one device sync per call
        return None
    return f"its logits differ from lm_head(hidden states) by up to {float(err):.3g} (a custom head or logit scaling)"
