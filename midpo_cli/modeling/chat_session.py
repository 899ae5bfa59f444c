"""The model side of `midpo chat`: a loaded model, its conversation, and an answer streamed token by token.

Decoding is `midpo generate`'s own pass (midpo_cli.modeling.decoding): Hugging Face `generate` with the KV cache,
`MidpoModel.generate` for a MidPO model — so a probe switch decides once per prompt and holds it, and routers that
read the prompt hold its mean hidden state — with a per-step hook that streams each token's text and gates (the
gates at the last position, averaged over routed layers, as `midpo generate` records them) and polls the stop
request (Ctrl-C in the terminal), which ends the answer between two steps and leaves the session alive. Greedy
decoding (the default) gives the answer and the gates `midpo generate` gives; the decoding settings are
`midpo generate`'s (`recipe.GenerationSettings`), and sampling is seeded with `seed` for every answer, as
`midpo generate` seeds one prompt.

Conversation: each message is answered on its own by default — the experts and routers were trained
and evaluated on single-turn prompts. `history` keeps earlier turns in the prompt, laid out by the model's
serving chat template (midpo_cli.data.template.conversation_prompt: the tokenizer's chat template, or safe-rlhf's
multi-turn layout `BEGINNING OF CONVERSATION: USER: p1 ASSISTANT:a1</s>USER: p2 ASSISTANT:`), the one an export
writes and `midpo serve` reads.

The terminal around it (colours, /commands, Ctrl-C) is `commands/chat_ui.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.template import conversation_ids
from midpo_cli.data.tokenize import encode_prompts
from midpo_cli.errors import InputError
from midpo_cli.io import write_jsonl
from midpo_cli.modeling.decoding import Rows, TextStream, decode, eos_ids, mean_pairs, pad_id_of
from midpo_cli.modeling.generation import context_limit
from midpo_cli.modeling.policy import open_policy
from midpo_cli.recipe import GenerationSettings

TokenCallback = Callable[[str, "tuple[float, float] | None"], None]


@dataclass
class Answer:
    """One answer with its per-token gates (None for models without routers)."""

    prompt: str
    text: str
    token_ids: list[int]
    pieces: list[str]  # the text each answer token added (EOS excluded)
    token_gates: list[tuple[float, float]] | None  # one (g_s, g_h) per answer token
    eos_gates: tuple[float, float] | None  # the step that produced EOS, if any
    finished: bool
    interrupted: bool
    prompt_tokens: int
    settings: dict[str, Any] = field(default_factory=dict)

    def mean_gates(self) -> dict[str, float] | None:
        """Mean over the steps that produced the answer, EOS included: the `gates` of `midpo generate`."""
        if self.token_gates is None:
            return None
        return mean_pairs(self.token_gates + ([self.eos_gates] if self.eos_gates is not None else []))

    def to_json(self) -> dict[str, Any]:
        gates = None
        if self.token_gates is not None:
            gates = [{"token": p, "id": i, "safety": round(g[0], 6), "helpfulness": round(g[1], 6)}
                     for p, i, g in zip(self.pieces, self.token_ids, self.token_gates, strict=True)]
        return {"prompt": self.prompt, "answer": self.text, "answer_tokens": len(self.token_ids),
                "prompt_tokens": self.prompt_tokens, "finished": self.finished, "interrupted": self.interrupted,
                "gates": self.mean_gates(), "token_gates": gates, **self.settings}


class ChatSession:
    """A loaded model plus the chat state: template, decoding settings, dial, fixed gates, history."""

    def __init__(self, policy: Any, spec: str, *, template: str, settings: GenerationSettings | None = None,
                 history: bool = False) -> None:
        """`settings`: `midpo generate`'s decoding settings, checked where they were made. Chat reads
        max_new_tokens, temperature, top_p and seed; it answers one prompt at a time and keeps as much of it as
        the context leaves room for, so batch_size and max_prompt_length do not apply."""
        self.model, self.tokenizer, self.kind, self.spec = policy.model, policy.tokenizer, policy.kind, spec
        self.template, self.history = template, history
        self.settings = settings if settings is not None else GenerationSettings()
        self.routed = self.kind == "midpo"
        self.eos = eos_ids(self.model, self.tokenizer)
        self._check_room()
        self.turns: list[tuple[str, str]] = []
        self.transcript: list[dict[str, Any]] = []
        self.start = (self.safety_bias, self.fixed_gates) if self.routed else (None, None)

    def _check_room(self) -> None:
        """Refuse --max-new-tokens that leaves no room for a prompt now, not after the first message."""
        limit = context_limit(self.model)
        new = self.settings.max_new_tokens
        if limit is not None and limit - new < 2:
            raise InputError(f"--max-new-tokens {new} leaves no room for a prompt: {self.spec} "
                             f"reads {limit} tokens at most; use --max-new-tokens {max(1, limit // 2)} or less")

    # -- routing controls (MidPO models only) ---------------------------------------------------
    def _need_router(self, what: str) -> None:
        if not self.routed:
            raise InputError(f"{what}: {self.spec} is a {self.kind} model; only MidPO models have gates")

    @property
    def safety_bias(self) -> float | None:
        return float(self.model.state.safety_bias) if self.routed else None

    @property
    def fixed_gates(self) -> tuple[float, float] | None:
        return self.model.state.fixed if self.routed else None

    def set_dial(self, bias: float) -> None:
        self._need_router("the safety dial")
        self.model.set_safety_bias(bias)

    def set_gates(self, gates: tuple[float, float] | None) -> None:
        self._need_router("fixed gates")
        self.model.set_fixed_gates(gates)

    def reset(self) -> None:
        """Forget the conversation and return to the starting dial and gates (the transcript stays)."""
        self.turns.clear()
        if self.routed:
            self.model.set_safety_bias(self.start[0])
            self.model.set_fixed_gates(self.start[1])

    # -- prompts ------------------------------------------------------------------------------------
    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The conversation to answer: the earlier turns (with `history`) and this prompt."""
        earlier = [m for p, a in (self.turns if self.history else ()) for m in
                   ({"role": "user", "content": p}, {"role": "assistant", "content": a})]
        return [*earlier, {"role": "user", "content": prompt.strip()}]

    def prompt_text(self, prompt: str) -> str:
        """What the model reads (for a person: the ids are `prompt_ids`)."""
        return self.tokenizer.decode(self._encode(prompt))

    def _encode(self, prompt: str) -> list[int]:
        """One message: encoded as `midpo generate` encodes a prompt; a conversation: by the serving chat template,
        whose first turn encodes the same ids (midpo_cli.data.template.conversation_ids)."""
        if self.history and self.turns:
            return conversation_ids(self.messages(prompt), self.tokenizer, self.template)
        return encode_prompts([prompt], self.tokenizer, self.template)[0][0]

    def prompt_ids(self, prompt: str) -> list[int]:
        """Encoded prompt that leaves room for the answer: oldest turns dropped first, then the left cut."""
        limit = context_limit(self.model)
        while True:
            ids = self._encode(prompt)
            if limit is None or len(ids) + self.settings.max_new_tokens <= limit or not (self.history and self.turns):
                break
            self.turns.pop(0)
        if limit is not None and len(ids) + self.settings.max_new_tokens > limit:
            keep = limit - self.settings.max_new_tokens
            if keep < 2:
                raise InputError(f"--max-new-tokens {self.settings.max_new_tokens} leaves no room for a prompt "
                                 f"(context {limit})")
            console.warn(f"prompt of {len(ids)} tokens cut from the left to {keep} (context {limit})")
            ids = ids[len(ids) - keep:]
        return ids

    # -- answering ---------------------------------------------------------------------------------
    def answer(self, prompt: str, *, stop: Callable[[], bool] = lambda: False,
               on_token: TokenCallback | None = None) -> Answer:
        """Generate one answer; `stop()` is polled between tokens, `on_token(text, gates)` streams them."""
        ids = self.prompt_ids(prompt)
        answer = self._decode(ids, stop, on_token)
        answer.prompt = prompt
        answer.settings = {"model": self.spec, "kind": self.kind, "template": self.template,
                           "router": self.model.router_kind if self.routed else None,
                           "safety_bias": self.safety_bias,
                           "fixed_gates": list(self.fixed_gates) if self.fixed_gates is not None else None,
                           "max_new_tokens": self.settings.max_new_tokens, "temperature": self.settings.temperature,
                           "top_p": self.settings.top_p, "seed": self.settings.seed}
        if self.history:
            self.turns.append((prompt.strip(), answer.text))
        self.transcript.append({"turn": len(self.transcript) + 1, **answer.to_json()})
        return answer

    def _decode(self, prompt_ids: list[int], stop: Callable[[], bool], on_token: TokenCallback | None) -> Answer:
        """`midpo generate`'s decoding pass on one prompt (midpo_cli.modeling.decoding), streamed."""
        stream, pieces = TextStream(self.tokenizer), []

        def each_step(rows: Rows, took: list[bool]) -> list[bool]:
            if took[0] and not rows.finished[0]:
                pieces.append(stream.push(rows.ids[0]))
                gate = rows.gates[0][-1] if rows.gates[0] else None
                if on_token is not None and pieces[-1]:
                    on_token(pieces[-1], gate)
            return [stop()]

        torch.manual_seed(self.settings.seed)  # sampling: each answer as `midpo generate` answers this prompt
        rows = decode(self.model, [prompt_ids], pad_id=pad_id_of(self.tokenizer), eos=self.eos,
                      max_new_tokens=self.settings.max_new_tokens, temperature=self.settings.temperature,
                      top_p=self.settings.top_p, on_step=each_step)
        out_ids, gates = rows.ids[0], rows.gates[0]
        return Answer(prompt="", text=self.tokenizer.decode(out_ids, skip_special_tokens=True).strip(),
                      token_ids=out_ids, pieces=pieces, token_gates=gates[:len(out_ids)] if self.routed else None,
                      eos_gates=gates[len(out_ids)] if self.routed and rows.finished[0] else None,
                      finished=rows.finished[0], interrupted=rows.stopped[0], prompt_tokens=len(prompt_ids))

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """The transcript so far as JSONL (one answer a line, with its gates), written atomically.

        An existing file is kept unless `overwrite` (`/save! FILE`): `/save` used to replace it silently.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            raise InputError(f"/save {path}: is a folder; give a file name")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise InputError(f"/save {path}: the file exists; /save! {path} replaces it")
        return write_jsonl(path, self.transcript)


def open_session(spec: str, *, template: str | None, safety_bias: float | None, gates: tuple[float, float] | None,
                 dtype: str, trust_remote_code: bool, device: str | None = None,
                 settings: GenerationSettings | None = None, history: bool = False) -> ChatSession:
    """Load the model on `device` with its template, dial and gates (midpo_cli.modeling.policy.open_policy)."""
    policy, used = open_policy(spec, template=template, safety_bias=safety_bias, gates=gates, dtype=dtype,
                               trust_remote_code=trust_remote_code, device=device)
    console.log(f"chat: {spec} ({policy.kind}), template {used}")
    return ChatSession(policy, spec, template=used, settings=settings, history=history)
