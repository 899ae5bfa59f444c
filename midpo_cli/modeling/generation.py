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
- **Gates** (MidPO models): a forward hook records, at every decoding step, the gates at the last
  position — the position whose output is the next answer token — averaged over routed layers.
  The answer's gates are the mean over the steps that produced its tokens (EOS included, padding
  after EOS excluded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from midpo_cli.data.template import recorded_template, resolve_template, warn_mismatch
from midpo_cli.data.tokenize import encode_prompts, pad_sequences
from midpo_cli.errors import InputError
from midpo_cli.recipe import GenerationSettings


def context_limit(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token")
    return ids


class _GateRecorder:
    """Per decoding step, the (B, 2) gates at the last position, averaged over routed layers."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.steps: list[torch.Tensor] = []
        self.handle = model.model.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        try:
            layers = self.model.gates()  # list of (B, T, 2)
        except RuntimeError:  # routing disabled: no gates to report
            return
        self.steps.append(torch.stack([g[:, -1, :].float() for g in layers]).mean(0).cpu())

    def close(self) -> torch.Tensor | None:
        self.handle.remove()
        return torch.stack(self.steps) if self.steps else None  # (S, B, 2)


def is_routed(model: Any) -> bool:
    return bool(getattr(model, "routed", None)) and callable(getattr(model, "gates", None))


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
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    sampling = {"do_sample": True, "temperature": float(s.temperature), "top_p": float(s.top_p)} \
        if s.temperature > 0 else {"do_sample": False}
    device = getattr(model, "device", torch.device("cpu"))
    torch.manual_seed(s.seed)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for start in range(0, len(order), s.batch_size):
            batch = order[start:start + s.batch_size]
            seqs = [ids[i] for i in batch]
            padded = pad_sequences(seqs, [len(s) for s in seqs], pad_id, padding_side="left")
            recorder = _GateRecorder(model) if is_routed(model) else None
            try:
                with torch.no_grad():
                    out = model.generate(
                        input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device),
                        max_new_tokens=s.max_new_tokens, pad_token_id=pad_id, eos_token_id=eos, use_cache=True,
                        **sampling,
                    )
            finally:
                steps = recorder.close() if recorder is not None else None
            new = out[:, padded["input_ids"].shape[1]:].cpu()
            yield [_row(i, b, new[b], seqs[b], full[i], eos, tokenizer, steps) for b, i in enumerate(batch)]
    finally:
        if was_training:
            model.train()


def _row(index: int, b: int, new: torch.Tensor, prompt_ids: list[int], full_ids: list[int], eos: list[int],
         tokenizer: Any, steps: torch.Tensor | None) -> dict[str, Any]:
    tokens = new.tolist()
    stop = next((k for k, t in enumerate(tokens) if t in eos), None)
    answer_ids = tokens if stop is None else tokens[:stop]
    produced = len(tokens) if stop is None else stop + 1  # the steps that produced this answer's tokens
    gates = None
    if steps is not None:
        mean = steps[: min(produced, steps.shape[0]), b].mean(0)
        gates = {"safety": round(float(mean[0]), 6), "helpfulness": round(float(mean[1]), 6)}
    return {
        "index": index,
        "answer": tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
        "prompt_tokens": len(prompt_ids),
        "answer_tokens": len(answer_ids),
        "truncated": len(full_ids) > len(prompt_ids),
        "finished": stop is not None,
        "gates": gates,
        "prompt_ids": list(prompt_ids),  # what the model saw (after truncation): for teacher-forced gate maps
        "produced_ids": tokens[:produced],  # the answer's ids and its EOS when produced (gates' steps)
    }
