"""One decoding pass for every command that answers: `midpo generate`, `midpo chat` and `midpo serve`.

Why one: an answer must not depend on which command produced it. Each caller encodes its prompts, and this
module runs Hugging Face `generate` on them — left padding, KV cache, `MidpoModel.generate` for a MidPO model (its
prompt-reading routers hold the prompt's mean, its probe switch decides once per prompt and holds the decision) —
then follows every row step by step (`Rows`). Chat used to run a decoding loop of its own, and a probe switch,
called one token at a time, decided again at every token (docs/design.md §2.7).

- **Steps.** A stopping criterion that HF calls once per step, after the new tokens are chosen, hands them with
  that step's gates (a forward hook: the gates at each row's last position, averaged over routed layers) to the
  caller's `on_step`, which streams text (chat, serve) and may stop rows: a client gone, Ctrl-C, a row's own
  token limit or stop string. A stopped row gets pad tokens from then on; the others decode on unchanged, so
  each row's answer is the one it gets alone (greedy).
- **A row's answer** is its ids up to its first EOS (excluded) or its stop; its gates are the mean over the steps
  that produced them, the EOS step included, the padding after it excluded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from midpo_cli.data.tokenize import pad_sequences
from midpo_cli.errors import InputError

# on_step(rows so far, which rows took a token at this step) → rows to stop now (or None)
OnStep = Callable[["Rows", list[bool]], "Sequence[bool] | None"]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The generation config's EOS ids and the tokenizer's: an answer ends at any of them."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token, so an answer "
                         "could never end")
    return ids


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def is_routed(model: Any) -> bool:
    return bool(getattr(model, "routed", None)) and callable(getattr(model, "gates", None))


class GateRecorder:
    """Per forward (one per decoding step), the (B, 2) gates at the last position, averaged over routed layers."""

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

    def close(self) -> None:
        self.handle.remove()


@dataclass
class Rows:
    """What each row of one decoding pass produced, step by step (module docstring)."""

    eos: Sequence[int]
    limits: list[int]  # each row's own max_new_tokens
    ids: list[list[int]] = field(default_factory=list)  # the answer's ids (EOS excluded)
    gates: list[list[tuple[float, float]]] = field(default_factory=list)  # one pair per step that produced it
    finished: list[bool] = field(default_factory=list)  # ended by an EOS
    eos_token: list[int | None] = field(default_factory=list)  # which EOS
    stopped: list[bool] = field(default_factory=list)  # ended by the caller (on_step)

    def __post_init__(self) -> None:
        n = len(self.limits)
        self.ids, self.gates = [[] for _ in range(n)], [[] for _ in range(n)]
        self.finished, self.stopped, self.eos_token = [False] * n, [False] * n, [None] * n

    def done(self, b: int) -> bool:
        return self.finished[b] or self.stopped[b] or len(self.ids[b]) >= self.limits[b]

    def step(self, tokens: list[int], gates: torch.Tensor | None) -> list[bool]:
        """Take one step's tokens (and gates) for the rows still going; which rows are new (took a token)."""
        took = [False] * len(tokens)
        for b, token in enumerate(tokens):
            if self.done(b):
                continue
            took[b] = True
            if gates is not None:
                self.gates[b].append((float(gates[b, 0]), float(gates[b, 1])))
            if token in self.eos:
                self.finished[b], self.eos_token[b] = True, int(token)
            else:
                self.ids[b].append(int(token))
        return took

    def produced_ids(self, b: int) -> list[int]:
        """The answer's ids and its EOS when produced: the steps its gates average."""
        return self.ids[b] + ([self.eos_token[b]] if self.finished[b] else [])

    def mean_gates(self, b: int) -> dict[str, float] | None:
        return mean_pairs(self.gates[b])


def mean_pairs(steps: Sequence[tuple[float, float]]) -> dict[str, float] | None:
    """{"safety", "helpfulness"}: the mean gate pair over an answer's steps (None without steps)."""
    if not steps:
        return None
    return {"safety": round(sum(g[0] for g in steps) / len(steps), 6),
            "helpfulness": round(sum(g[1] for g in steps) / len(steps), 6)}


class TextStream:
    """An answer's text as it grows, piece by piece: the decoded ids so far (no special tokens, no leading space),
    less what was shown. Held back while the text ends inside a multi-byte character, in white space (the final
    text is stripped) or in what could still become a stop string; cut before the first stop string."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer, self.stops, self.shown, self.stopped = tokenizer, [s for s in stops if s], "", False
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def push(self, ids: list[int], final: bool = False) -> str:
        """The new piece after `ids` (all of the answer's ids so far); `final`: the answer ended, show the rest."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            text, self.stopped, final = text[:min(cuts)], True, True
        ready = text.rstrip()
        if not final:
            held = "" if text.endswith("\ufffd") else ready[:len(ready) - self.hold].rstrip()
            ready = held if len(held) > len(self.shown) else self.shown
        if not ready.startswith(self.shown):  # the decoded text changed under what was shown: wait
            return ""
        piece, self.shown = ready[len(self.shown):], ready
        return piece


class _EachStep(StoppingCriteria):
    """A stopping criterion HF calls once per step with the sequences so far: the new tokens go to `Rows` and
    `on_step`; the rows that are done stop (HF pads them from then on)."""

    def __init__(self, rows: Rows, recorder: GateRecorder | None, on_step: OnStep | None) -> None:
        self.rows, self.recorder, self.on_step = rows, recorder, on_step

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        tokens = input_ids[:, -1].tolist()
        gates = self.recorder.steps[-1] if self.recorder is not None and self.recorder.steps else None
        took = self.rows.step(tokens, gates)
        stop = self.on_step(self.rows, took) if self.on_step is not None else None
        for b, yes in enumerate(stop or ()):
            if yes and not self.rows.done(b):
                self.rows.stopped[b] = True
        return torch.tensor([self.rows.done(b) for b in range(len(tokens))], device=input_ids.device)


def decode(model: Any, seqs: Sequence[Sequence[int]], *, pad_id: int, eos: Sequence[int], max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, limits: Sequence[int] | None = None,
           on_step: OnStep | None = None) -> Rows:
    """Answer the encoded prompts `seqs` in one batch (module docstring). `limits`: each row's max_new_tokens
    (default: `max_new_tokens` for all; the batch runs to the largest). Sampling draws from torch's global RNG:
    the caller seeds it."""
    limits = list(limits) if limits is not None else [max_new_tokens] * len(seqs)
    rows = Rows(eos=list(eos), limits=limits)
    padded = pad_sequences(seqs, [len(s) for s in seqs], pad_id, padding_side="left")
    recorder = GateRecorder(model) if is_routed(model) else None
    each = _EachStep(rows, recorder, on_step)
    sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)} \
        if temperature > 0 else {"do_sample": False}
    device = getattr(model, "device", torch.device("cpu"))
    try:
        with torch.no_grad():
            model.generate(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device),
                           max_new_tokens=max(limits), pad_token_id=pad_id, eos_token_id=list(eos), use_cache=True,
                           stopping_criteria=StoppingCriteriaList([each]), **sampling)
    finally:
        if recorder is not None:
            recorder.close()
    return rows
