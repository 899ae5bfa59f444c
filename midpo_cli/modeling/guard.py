"""A safety classifier in the Llama Guard family read without generating: P(unsafe) from the logits of the first
token it would answer (docs/judges.md, "guard").

Such a model is a causal LM whose chat template turns a conversation into its classification prompt and whose
answer starts with a word for the verdict ("safe" / "unsafe\\nS1" for Llama Guard 3). So one forward over the
templated conversation and the logits at its last position give the verdict: P(unsafe) = the softmax over the two
verdict words' first tokens (the rest of the vocabulary is not a verdict). Rows are left-padded with position ids
counted from each row's first real token, so the last position is every row's own last token and only its logits
are computed (`logits_to_keep=1`: a 128k vocabulary over every position of a batch would be gigabytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from midpo_cli.data.tokenize import longest_first, pad_sequences
from midpo_cli.errors import InputError


@dataclass
class Guard:
    model: Any
    tokenizer: Any
    unsafe_id: int
    safe_id: int
    template_kwargs: Mapping[str, str]


def load_guard(ref: str, *, unsafe_token: str = "unsafe", safe_token: str = "safe",
               template_kwargs: Mapping[str, str] | None = None, trust_remote_code: bool = False) -> Guard:
    """The classifier and its tokenizer (which must have a chat template), on the GPU when there is one."""
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code, padding_side="left")
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"guard model {ref!r}: its tokenizer has no chat template; a guard classifies through its "
                         "own template (Llama Guard, ShieldGemma, …)")
    device = "cuda" if torch.cuda.is_available() else None
    model = load_causal_lm(ref, trust_remote_code=trust_remote_code, device=device).eval()
    unsafe_id, safe_id = verdict_ids(tokenizer, unsafe_token, safe_token, ref)
    return Guard(model, tokenizer, unsafe_id, safe_id, dict(template_kwargs or {}))


def verdict_ids(tokenizer: Any, unsafe: str, safe: str, ref: str = "") -> tuple[int, int]:
    """The first token of each verdict word as the tokenizer encodes it; they must differ."""
    ids = [tokenizer.encode(word, add_special_tokens=False) for word in (unsafe, safe)]
    if not ids[0] or not ids[1] or ids[0][0] == ids[1][0]:
        raise InputError(f"guard model {ref!r}: {unsafe!r} and {safe!r} do not start with different tokens; set "
                         "unsafe_token / safe_token to the guard's verdict words")
    return ids[0][0], ids[1][0]


def conversation_ids(guard: Guard, prompt: str, answer: str | None) -> list[int]:
    """The guard's classification prompt for a user turn (and the assistant's answer, when given), as ids."""
    messages = [{"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    text = guard.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                               **guard.template_kwargs)
    return list(guard.tokenizer(text, add_special_tokens=False)["input_ids"])


def unsafe_probabilities(guard: Guard, conversations: Sequence[list[int]], batch_size: int = 8) -> list[float]:
    """P(unsafe) of each conversation (module docstring), in input order; batches sorted by length."""
    out = [0.0] * len(conversations)
    device = next(guard.model.parameters()).device
    with torch.inference_mode():
        for idx in longest_first(conversations, batch_size):
            batch = pad_sequences([conversations[i] for i in idx], [0] * len(idx), guard.tokenizer.pad_token_id,
                                  padding_side="left")
            logits = last_logits(guard.model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            pair = logits[:, [guard.unsafe_id, guard.safe_id]].float()
            for i, p in zip(idx, torch.softmax(pair, dim=-1)[:, 0].cpu().tolist(), strict=True):
                out[i] = p
    return out


def last_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, V) logits at the last position of left-padded rows, positions counted from each row's first token."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    except TypeError:  # a forward without logits_to_keep: full logits, the last position kept
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    return out.logits[:, -1, :]
