"""Chosen and rejected log-probs from one packed row per pair, prompt encoded once (docs/design.md §2.1,
"Shared prompt"; the layout is `midpo_cli.data.packing`).

One forward of the B packed rows with a block-causal 4-D attention mask and restarted position ids, the
backbone's hidden states gathered back into the 2B-row view (`packed_index`), then the same answer-only
chunked log-probs as two rows per pair. Transformers passes a ready 4-D mask through unchanged, so adapters,
routers, activation checkpointing and DeepSpeed's bookkeeping see one ordinary forward.

`packing_reason` names what the layout cannot reproduce — then the caller falls back to 2B rows, named once
in a warning: the full-logits path (its reasons, ZeRO-3 among them), an attention kernel that takes no custom
mask (flash attention), a forward without position ids, and rows longer than a sliding attention window
(the block mask carries no window). A model's first packed call is also checked against two rows per pair on
its first CHECK_PAIRS pairs, in eval mode without gradients, which catches anything else (a model that ignores
position ids, ALiBi, ...).
"""

from __future__ import annotations

import inspect
import weakref

import torch
from torch import nn

from midpo_cli import console
from midpo_cli.data.packing import SEGMENT_PAD, SEGMENT_PROMPT
from midpo_cli.engine.answer_logps import (
    answer_logps,
    causal_lm,
    checked_hidden_states,
    full_logits_reason,
    head_answer_logps,
)

MASK_KERNELS = {"sdpa": "bool", "eager": "additive"}  # attention kernels that take a custom 4-D mask, and its kind
WINDOW_KEYS = ("sliding_window", "attention_chunk_size")  # config keys that bound how far a token attends
CHECK_PAIRS = 4
ROWS = ("input_ids", "attention_mask", "response_mask", "packed_index")  # per row of the 2B view; packed_*: per pair
_CHECKED: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()
_WARNED: set[tuple[str, str]] = set()


def shared_prompt_logps(model, batch: dict[str, torch.Tensor], *, chunk_size: int | None = None,
                        **forward_kwargs) -> torch.Tensor | None:
    """(2B,) answer log-probs of the 2B-row view, computed from batch's packed rows; None if they cannot be.

    forward_kwargs as for `answer_logps`; a `prompt_mask` of the 2B rows is replaced by the packed rows' own.
    """
    lm = causal_lm(model)
    reason = packing_reason(lm, batch)
    if reason is None and lm not in _CHECKED:
        _CHECKED[lm] = _packing_mismatch(model, lm, batch, forward_kwargs, chunk_size)
    reason = reason or _CHECKED.get(lm)
    if reason is not None:
        key = (type(model if lm is None else lm).__name__, reason)
        if key not in _WARNED:
            _WARNED.add(key)
            console.warn(f"{key[0]}: chosen and rejected in separate rows (the prompt encoded twice): {reason}")
        return None
    return _packed_logps(model, lm, batch, forward_kwargs, chunk_size)


def packing_reason(lm: nn.Module | None, batch: dict[str, torch.Tensor]) -> str | None:
    """Why this model cannot run batch's packed rows exactly, or None when it can."""
    reason = full_logits_reason(lm)
    if reason is not None:
        return f"answer log-probs need the full logits ({reason})"
    kernel = getattr(lm.config, "_attn_implementation", None) or "eager"
    if kernel not in MASK_KERNELS:
        return f"attention kernel {kernel!r} takes no custom 4-D mask (packing needs sdpa or eager)"
    if "position_ids" not in inspect.signature(lm.forward).parameters:
        return "its forward takes no position_ids"
    longest = int(batch["attention_mask"].sum(1).max())
    for key in WINDOW_KEYS:
        window = getattr(lm.config, key, None)
        if isinstance(window, int) and longest > window:
            return f"rows longer than config.{key} = {window} tokens"  # one warning, whatever the length
    return None


def block_causal_mask(segments: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) mask of packed rows: causal, and an answer token sees the prompt and its own answer only.

    kind "bool": True = attend (sdpa); "additive": 0 or the dtype's minimum (eager). Padding attends to itself,
    so no softmax row is empty.
    """
    width = segments.shape[1]
    query, key = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (key != SEGMENT_PAD) & ((key == SEGMENT_PROMPT) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)
    if kind == "bool":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[:, None]


def to_rows(packed: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A (B, L, ...) tensor of the packed rows as the 2B-row view's (2B, T, ...); padding positions get column 0.

    A tensor that already has the 2B view's rows (the forward fell back to two rows) is returned as it is, so a
    loss can map what the model recorded (MidpoModel's gates) without knowing which forward ran.
    """
    index = batch.get("packed_index")
    if index is None or packed.shape[0] == batch["input_ids"].shape[0]:
        return packed
    pairs = torch.arange(index.shape[0], device=index.device) % packed.shape[0]
    return packed[pairs[:, None], index]


def _packed_logps(model, lm: nn.Module, batch: dict, forward_kwargs: dict, chunk_size: int | None) -> torch.Tensor:
    kind = MASK_KERNELS[getattr(lm.config, "_attn_implementation", None) or "eager"]
    dtype = next(lm.parameters()).dtype
    kwargs = dict(forward_kwargs)
    if "prompt_mask" in kwargs:
        kwargs["prompt_mask"] = batch["packed_segments"] == SEGMENT_PROMPT
    inputs = {"input_ids": batch["packed_input_ids"], "position_ids": batch["packed_position_ids"],
              "attention_mask": block_causal_mask(batch["packed_segments"], kind, dtype), **kwargs}
    hidden = checked_hidden_states(model, lm, inputs)
    if hidden is None:  # the head check failed: the full-logits path, in two rows
        return answer_logps(model, batch, chunk_size=chunk_size, **forward_kwargs)
    return head_answer_logps(lm, to_rows(hidden, batch), batch, chunk_size)


@torch.no_grad()
def _packing_mismatch(model, lm: nn.Module, batch: dict, forward_kwargs: dict, chunk_size: int | None) -> str | None:
    """Packed vs two rows on the batch's first CHECK_PAIRS pairs, in eval mode (no dropout), without gradients.

    The tolerance is a hundred times what the two layouts' different rounding gives in fp32 (≈1e-7 of a
    log-prob), and a mask that let the rejected answer see the chosen one moved a random tiny model's
    log-probs by 2e-4 of their size (tests/test_shared_prompt.py)."""
    pairs = batch["packed_input_ids"].shape[0]
    take = min(pairs, CHECK_PAIRS)
    rows = torch.cat([torch.arange(take), pairs + torch.arange(take)]).to(batch["input_ids"].device)
    first = {k: v[rows] if k in ROWS else v[:take] for k, v in batch.items()
             if k in ROWS or k.startswith("packed_")}
    kwargs = {k: v[rows] if torch.is_tensor(v) and v.shape[:1] == (2 * pairs,) else v
              for k, v in forward_kwargs.items()}
    was_training = model.training
    model.eval()
    try:
        packed = _packed_logps(model, lm, first, kwargs, chunk_size)
        separate = answer_logps(model, first, chunk_size=chunk_size, **kwargs)
    finally:
        model.train(was_training)
    tol = 5e-2 if next(lm.parameters()).element_size() < 4 else 1e-5  # 16-bit weights round more
    err = (packed - separate).abs()
    if bool((err <= tol * (1 + separate.abs())).all()):
        return None
    return f"its packed rows' log-probs differ from two rows' by up to {float(err.max()):.3g} (first {take} pairs)"
