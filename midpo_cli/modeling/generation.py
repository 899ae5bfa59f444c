"""Batched generation for evaluation: left padding, KV cache, prompts sorted by length.

Why these choices:
- **Left padding**, so every row's last prompt token sits at the same position and the new tokens
  are appended after it; right padding would make a causal LM continue from pad tokens.
- **Sorted by prompt length** (longest first), so a batch holds prompts of similar length (little
  padding) and an out-of-memory error shows up in the first batch, not after an hour.
- **Truncation from the left** to `max_prompt_length` (default: the model's context minus
  `max_new_tokens`): the end of a prompt — the question and the template's "ASSISTANT:" — is what
  the answer depends on. Truncated prompts are flagged per row.
- **Greedy when temperature == 0**, else sampling with temperature/top-p; the global torch seed is
  set once from `seed`, so a run is reproducible for the same prompts and batch size.
- **One decoding pass** per batch, the one `midpo chat` and `midpo serve` run too
  (midpo_cli.modeling.decoding): an answer and its gates — the mean, over the steps that produced it, of
  the gates at the last position averaged over routed layers — do not depend on the command.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from midpo_cli.data.template import recorded_template, resolve_template, warn_mismatch
from midpo_cli.data.tokenize import encode_prompts, longest_first
from midpo_cli.errors import InputError
from midpo_cli.modeling.decoding import Rows, decode, eos_ids, pad_id_of
from midpo_cli.recipe import GenerationSettings


def context_limit(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    *,
    template: str = "safe-rlhf",
    **changes: Any,
) -> Iterator[list[dict[str, Any]]]:
    """Yield one list per batch of {index, answer, prompt_tokens, answer_tokens, truncated, finished, gates,
    prompt_ids, produced_ids}. `settings` (default: GenerationSettings()) with any of them changed by name
    (`max_new_tokens=8`).

    `index` is the prompt's position in `prompts`; batches come longest prompt first. `gates` is
    {"safety", "helpfulness"} (mean over answer tokens) for a MidPO model, else None. `produced_ids`
    are the generated ids up to and including EOS (the steps whose gates `gates` averages).
    """
    s = (settings or GenerationSettings()).but(**changes)
    template = resolve_template(template, tokenizer)  # `auto`: this model's tokenizer decides
    config = getattr(model, "config", None)
    warn_mismatch(f"model {getattr(config, '_name_or_path', None) or 'policy'}", recorded_template(config), template)
    limit = s.max_prompt_length
    if limit is None and (ctx := context_limit(model)) is not None:
        limit = ctx - s.max_new_tokens
    if limit is not None and limit < 2:
        raise InputError(f"max_prompt_length {limit} leaves no room for a prompt; lower max_new_tokens")
    full, _ = encode_prompts(list(prompts), tokenizer, template, None)
    ids = full
    if limit is not None and any(len(p) > limit for p in full):
        ids, _ = encode_prompts(list(prompts), tokenizer, template, limit)
    pad_id = pad_id_of(tokenizer)
    eos = eos_ids(model, tokenizer)
    torch.manual_seed(s.seed)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for batch in longest_first(ids, s.batch_size):
            seqs = [ids[i] for i in batch]
            rows = decode(model, seqs, pad_id=pad_id, eos=eos, max_new_tokens=s.max_new_tokens,
                          temperature=s.temperature, top_p=s.top_p)
            yield [_row(i, b, rows, seqs[b], full[i], tokenizer) for b, i in enumerate(batch)]
    finally:
        if was_training:
            model.train()


def _row(index: int, b: int, rows: Rows, prompt_ids: list[int], full_ids: list[int], tokenizer: Any) -> dict[str, Any]:
    return {
        "index": index,
        "answer": tokenizer.decode(rows.ids[b], skip_special_tokens=True).strip(),
        "prompt_tokens": len(prompt_ids),
        "answer_tokens": len(rows.ids[b]),
        "truncated": len(full_ids) > len(prompt_ids),
        "finished": rows.finished[b],
        "gates": rows.mean_gates(b),
        "prompt_ids": list(prompt_ids),  # what the model saw (after truncation): for teacher-forced gate maps
        "produced_ids": rows.produced_ids(b),  # the answer's ids and its EOS when produced (gates' steps)
    }
