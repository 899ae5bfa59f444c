"""Tokenise prompt/answer text and collate batches with response masks (docs/design.md §2: log π sums answer tokens).

The prompt/answer boundary. A sequence is `ids(prompt) + ids(answer) + [EOS]`, where `ids(prompt)` is the
formatted prompt encoded alone — exactly what generation feeds the model — so the response mask starts
where the prompt's tokens end. `ids(answer)` is taken from encoding prompt + answer together and cutting
off the prompt's ids, which keeps the answer's natural tokenisation (a leading space joins the first
word, as in generation). When a tokenizer merges characters across the boundary, so that the joint
encoding does not start with the prompt's ids, the answer is encoded on its own instead and the
sequence counted under `retokenized_boundary`; the prompt tokens never change.

Truncation to `max_length` (prompt + answer + EOS): a prompt longer than `max_length - min_answer_tokens`
keeps its end (and its BOS), counted `truncated:prompt`; then each answer is cut on the right, losing its
EOS (a cut answer must not teach the model to stop mid-sentence), counted `truncated:answer`. Pairs
whose chosen and rejected ids are equal — after truncation, or already because the tokenizer maps both
texts to the same ids — are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from midpo_cli.data.packing import pack_pairs
from midpo_cli.data.schema import Malformed, parse_field
from midpo_cli.data.template import adds_special_tokens, answer_text, format_prompt, resolve_template
from midpo_cli.errors import InputError

MIN_ANSWER_TOKENS = 8
PADDING_SIDES = ("right", "left")


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token")
    return int(eos)


def _encode(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=special)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    # some tokenizers append EOS themselves; an EOS is never part of a prompt or of the answer text
    return [list(x[:-1]) if special and x and eos is not None and x[-1] == eos else list(x) for x in ids]


def prompt_answer_ids(tokenizer: Any, prompt_texts: Sequence[str], answers: Sequence[str],
                          template: str) -> tuple[list[list[int]], list[list[int]], int]:
    """(prompt ids, answer ids without EOS, sequences re-tokenised at the boundary); see the module docstring.

    `prompt_texts` are already formatted (format_prompt); `answers` are raw answers.
    """
    template = resolve_template(template, tokenizer)
    special = adds_special_tokens(template)
    texts = [answer_text(a, template) for a in answers]
    prompt_ids = _encode(tokenizer, list(prompt_texts), special)
    full_ids = _encode(tokenizer, [p + a for p, a in zip(prompt_texts, texts, strict=True)], special)
    answer_ids: list[list[int] | None] = []
    redo = []
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if len(f) > len(p) and f[: len(p)] == p:
            answer_ids.append(f[len(p):])
        else:
            answer_ids.append(None)
            redo.append(i)
    for i, ids in zip(redo, _encode(tokenizer, [texts[i] for i in redo], False), strict=True):
        answer_ids[i] = ids
    return prompt_ids, [a or [] for a in answer_ids], len(redo)


def _fit(prompt: list[int], answer: list[int], eos: int, max_length: int, min_answer: int,
         bos: int | None) -> tuple[list[int], int, bool, bool]:
    """Truncate one sequence (module docstring); returns (ids, prompt length, prompt cut, answer cut)."""
    budget = max_length - min_answer
    prompt_cut = len(prompt) > budget
    if prompt_cut:
        keep_bos = bos is not None and prompt[0] == bos
        prompt = ([bos] + prompt[len(prompt) - budget + 1:]) if keep_bos else prompt[len(prompt) - budget:]
    answer = [*answer, eos]
    room = max_length - len(prompt)
    answer_cut = len(answer) > room
    return prompt + answer[:room], len(prompt), prompt_cut, answer_cut


def _check_lengths(max_length: int, min_answer: int) -> None:
    if max_length <= min_answer:
        raise InputError(f"max_length {max_length} leaves no room for an answer (needs > {min_answer})")


def encode_pairs(pairs: Sequence[Any], tokenizer: Any, template: str, max_length: int, *,
                 min_answer_tokens: int = MIN_ANSWER_TOKENS) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs (filters.Pair) → features `pair_index, chosen_input_ids, rejected_input_ids, chosen_prompt_len,
    rejected_prompt_len` (lists of ints) and counts (pairs_in, truncations, drops by reason, kept)."""
    template = resolve_template(template, tokenizer)  # `auto` → the tokenizer's
    _check_lengths(max_length, min_answer_tokens)
    eos, bos = _eos_id(tokenizer), getattr(tokenizer, "bos_token_id", None)
    counts = {"pairs_in": len(pairs), "truncated:prompt": 0, "truncated:answer": 0, "retokenized_boundary": 0,
              "dropped:identical_tokens": 0, "dropped:identical_after_truncation": 0, "kept": 0}
    prompts = [format_prompt(p.prompt, template, tokenizer) for p in pairs]
    p_ids, c_ids, redo_c = prompt_answer_ids(tokenizer, prompts, [p.chosen for p in pairs], template)
    _, r_ids, redo_r = prompt_answer_ids(tokenizer, prompts, [p.rejected for p in pairs], template)
    counts["retokenized_boundary"] = redo_c + redo_r
    features = []
    for i, (prompt, chosen, rejected) in enumerate(zip(p_ids, c_ids, r_ids, strict=True)):
        if chosen == rejected:
            counts["dropped:identical_tokens"] += 1
            continue
        fit = (eos, max_length, min_answer_tokens, bos)
        c_seq, c_len, prompt_cut, c_cut = _fit(prompt, chosen, *fit)
        r_seq, r_len, _, r_cut = _fit(prompt, rejected, *fit)
        if c_seq == r_seq:
            counts["dropped:identical_after_truncation"] += 1
            continue
        counts["truncated:prompt"] += prompt_cut
        counts["truncated:answer"] += c_cut + r_cut
        features.append({"pair_index": i, "chosen_input_ids": c_seq, "rejected_input_ids": r_seq,
                         "chosen_prompt_len": c_len, "rejected_prompt_len": r_len})
    counts["kept"] = len(features)
    if pairs and not features:
        raise InputError(f"no pairs left after tokenisation at max_length {max_length} ({counts})")
    return features, counts


def encode_sft(rows: Sequence[dict[str, Any]], tokenizer: Any, template: str, max_length: int, *,
               min_answer_tokens: int = MIN_ANSWER_TOKENS) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Prompt/answer rows → features `row_index, input_ids, prompt_len`; malformed/empty rows are counted."""
    template = resolve_template(template, tokenizer)  # `auto` → the tokenizer's
    _check_lengths(max_length, min_answer_tokens)
    eos, bos = _eos_id(tokenizer), getattr(tokenizer, "bos_token_id", None)
    counts = {"rows_in": len(rows), "dropped:malformed": 0, "dropped:empty_prompt": 0,
              "dropped:empty_answer": 0, "truncated:prompt": 0, "truncated:answer": 0,
              "retokenized_boundary": 0, "kept": 0}
    good: list[tuple[int, str, str]] = []
    for i, row in enumerate(rows):
        try:
            prompt, answer = parse_field(row, "prompt"), parse_field(row, "answer")
        except Malformed:
            counts["dropped:malformed"] += 1
            continue
        if not prompt.strip() or not answer.strip():
            counts["dropped:empty_prompt" if not prompt.strip() else "dropped:empty_answer"] += 1
            continue
        good.append((i, prompt, answer))
    prompts = [format_prompt(p, template, tokenizer) for _, p, _ in good]
    p_ids, a_ids, counts["retokenized_boundary"] = prompt_answer_ids(
        tokenizer, prompts, [a for _, _, a in good], template)
    features = []
    for (i, _, _), prompt, answer in zip(good, p_ids, a_ids, strict=True):
        ids, plen, prompt_cut, answer_cut = _fit(prompt, answer, eos, max_length, min_answer_tokens, bos)
        counts["truncated:prompt"] += prompt_cut
        counts["truncated:answer"] += answer_cut
        features.append({"row_index": i, "input_ids": ids, "prompt_len": plen})
    counts["kept"] = len(features)
    if rows and not features:
        raise InputError(f"no SFT rows left ({counts})")
    return features, counts


def encode_text(rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]],
                                                                                         dict[str, int]]:
    """Plain-text rows (a `text` column) → SFT features scored on every token: `row_index, input_ids, prompt_len`.

    No prompt template: the text is language, not a conversation (a pretraining corpus). Encoded as the
    tokenizer encodes a document (with its BOS, if it adds one) followed by EOS; cut on the right at
    `max_length`. `prompt_len` is 1: the first token has no context to be predicted from, every later
    one is a target, so `collate_sft` and the SFT loss need nothing new.
    """
    eos = _eos_id(tokenizer)
    counts = {"rows_in": len(rows), "dropped:malformed": 0, "dropped:empty_text": 0, "dropped:too_short": 0,
              "truncated:text": 0, "kept": 0}
    good: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        try:
            text = parse_field(row, "text")
        except Malformed:
            counts["dropped:malformed"] += 1
            continue
        if not text.strip():
            counts["dropped:empty_text"] += 1
            continue
        good.append((i, text))
    features = []
    for (i, _), ids in zip(good, _encode(tokenizer, [t for _, t in good], True), strict=True):
        ids = [*ids, eos]
        if len(ids) < 3:  # at least one target besides EOS
            counts["dropped:too_short"] += 1
            continue
        counts["truncated:text"] += len(ids) > max_length
        features.append({"row_index": i, "input_ids": ids[:max_length], "prompt_len": 1})
    counts["kept"] = len(features)
    if rows and not features:
        raise InputError(f"no text rows left ({counts})")
    return features, counts


def encode_prompts(prompts: Sequence[str], tokenizer: Any, template: str,
                   max_prompt_length: int | None = None) -> tuple[list[list[int]], dict[str, int]]:
    """Formatted, encoded prompts for generation; longer than max_prompt_length keeps the end (and BOS)."""
    template = resolve_template(template, tokenizer)  # `auto` → the tokenizer's
    texts = [format_prompt(p, template, tokenizer) for p in prompts]
    ids = _encode(tokenizer, texts, adds_special_tokens(template))
    counts = {"prompts_in": len(ids), "truncated:prompt": 0}
    if max_prompt_length is None:
        return ids, counts
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for p in ids:
        if len(p) > max_prompt_length:
            counts["truncated:prompt"] += 1
            keep_bos = bos is not None and p[0] == bos and max_prompt_length > 1
            p = [bos, *p[len(p) - max_prompt_length + 1:]] if keep_bos else p[len(p) - max_prompt_length:]
        out.append(p)
    return out, counts


def longest_first(seqs: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Index batches of `seqs`, longest first: each batch pads to similar lengths, so little compute is spent on
    padding (generation, scoring and the guard judge batch this way)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad_sequences(seqs: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int,
                  padding_side: str = "right") -> dict[str, torch.Tensor]:
    """(N, T) input_ids, attention_mask and response_mask (long 0/1), padded to the longest sequence.

    response_mask is 1 exactly on positions prompt_len .. len-1 of each sequence (the answer and its EOS).
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    if pad_id is None:
        raise ValueError("pad_id is None: give the tokenizer a pad token (load_tokenizer uses EOS)")
    width = max(len(s) for s in seqs)
    n = len(seqs)
    input_ids = torch.full((n, width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.long)
    for i, (seq, plen) in enumerate(zip(seqs, prompt_lens, strict=True)):
        start = 0 if padding_side == "right" else width - len(seq)
        input_ids[i, start:start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, start:start + len(seq)] = 1
        response[i, start + plen:start + len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}


def collate_pairs(features: Sequence[dict[str, Any]], pad_id: int, padding_side: str = "right",
                  extras: Sequence[str] = (), share_prompt: bool = False) -> dict[str, torch.Tensor]:
    """2B rows, chosen rows first then rejected; `extras` are per-pair float (B,) tensors; pair_index (B,).

    share_prompt (recipe `train.share_prompt`): also the one-row-per-pair layout (`data.packing.pack_pairs`),
    where every pair's rows share their prompt tokens; the forward then encodes each prompt once.
    """
    seqs = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
    lens = [f["chosen_prompt_len"] for f in features] + [f["rejected_prompt_len"] for f in features]
    batch = pad_sequences(seqs, lens, pad_id, padding_side)
    packed = pack_pairs(features, pad_id, padding_side) if share_prompt else None
    if packed is not None:
        batch.update(packed)
    batch["pair_index"] = torch.tensor([f["pair_index"] for f in features], dtype=torch.long)
    for key in extras:
        missing = [f["pair_index"] for f in features if key not in f]
        if missing:
            raise KeyError(f"collate_pairs: extra {key!r} missing on pairs {missing[:5]}")
        batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
    return batch


def collate_sft(features: Sequence[dict[str, Any]], pad_id: int,
                padding_side: str = "right") -> dict[str, torch.Tensor]:
    """B rows: input_ids, attention_mask, response_mask (answer tokens incl. EOS)."""
    return pad_sequences([f["input_ids"] for f in features], [f["prompt_len"] for f in features], pad_id,
                         padding_side)


def with_columns(features: list[dict[str, Any]], **columns: Sequence[Any]) -> list[dict[str, Any]]:
    """New feature dicts: each feature plus its value of every column (per-pair extras such as `margin`)."""
    for name, values in columns.items():
        if len(values) != len(features):
            raise ValueError(f"with_columns: {len(values)} values of {name!r} for {len(features)} features")
    return [{**f, **{name: values[i] for name, values in columns.items()}} for i, f in enumerate(features)]
