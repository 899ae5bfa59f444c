"""`midpo chat`: talk to any model midpo loads, and watch what a MidPO router does, token by token.

Why a hand-written decoding loop instead of `generate` + a streamer: the loop runs one forward per
token with the KV cache, so after each step the gates that produced that token (`model.gates()`, the
last position, averaged over routed layers — the same quantity `midpo generate` records) are at hand,
and a Ctrl-C can end the answer between two steps, leaving a consistent partial answer and the
session alive. Routers that read the prompt (granularity `prompt`, input `token+prompt`) get what
`MidpoModel.generate` gives them: the prompt's mean hidden state is computed at the first forward and
held for every later step. Greedy decoding (the default) gives the answer `midpo generate` gives.

Conversation: each message is answered on its own by default — the experts and routers were trained
and evaluated on single-turn prompts. `--history` keeps earlier turns in the prompt: the tokenizer's
chat template with every message, or safe-rlhf's multi-turn layout
`BEGINNING OF CONVERSATION: USER: p1 ASSISTANT:a1 USER: p2 ASSISTANT:`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.template import SAFE_RLHF, adds_special_tokens, format_prompt
from midpo_cli.errors import InputError
from midpo_cli.evaluation.labels import parse_gates
from midpo_cli.io import write_jsonl

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
        steps = self.token_gates + ([self.eos_gates] if self.eos_gates is not None else [])
        if not steps:
            return None
        return {"safety": round(sum(g[0] for g in steps) / len(steps), 6),
                "helpfulness": round(sum(g[1] for g in steps) / len(steps), 6)}

    def to_json(self) -> dict[str, Any]:
        gates = None
        if self.token_gates is not None:
            gates = [{"token": p, "id": i, "safety": round(g[0], 6), "helpfulness": round(g[1], 6)}
                     for p, i, g in zip(self.pieces, self.token_ids, self.token_gates, strict=True)]
        return {"prompt": self.prompt, "answer": self.text, "answer_tokens": len(self.token_ids),
                "prompt_tokens": self.prompt_tokens, "finished": self.finished, "interrupted": self.interrupted,
                "gates": self.mean_gates(), "token_gates": gates, **self.settings}


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The generation config's EOS ids and the tokenizer's: an answer ends at any of them."""
    found: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [tokenizer.eos_token_id]:
        if value is not None:
            found.add(int(value))
    return found


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling from `generator`."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        ordered, index = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < top_p  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@contextlib.contextmanager
def held_prompt(model: Any, routed: bool) -> Iterator[bool]:
    """For routers that read the prompt: hold its mean h from the first forward on (as MidpoModel.generate)."""
    needs = routed and model.state.needs_prompt
    with model.holding_prompt() if needs else contextlib.nullcontext():
        yield needs


class ChatSession:
    """A loaded model plus the chat state: template, decoding settings, dial, fixed gates, history."""

    def __init__(self, policy: Any, spec: str, *, template: str, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, history: bool = False) -> None:
        if max_new_tokens <= 0:
            raise InputError(f"--max-new-tokens must be > 0, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise InputError(f"need --temperature >= 0 and 0 < --top-p <= 1, got {temperature}, {top_p}")
        self.model, self.tokenizer, self.kind, self.spec = policy.model, policy.tokenizer, policy.kind, spec
        self.template, self.history = template, history
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.routed = self.kind == "midpo"
        self.eos = eos_ids(self.model, self.tokenizer)
        if not self.eos:
            raise InputError(f"{spec}: the tokenizer has no EOS token, so an answer could never end")
        self._check_room()
        self.generator = torch.Generator().manual_seed(seed)
        self.turns: list[tuple[str, str]] = []
        self.transcript: list[dict[str, Any]] = []
        self.start = (self.safety_bias, self.fixed_gates) if self.routed else (None, None)

    def _check_room(self) -> None:
        """Refuse --max-new-tokens that leaves no room for a prompt now, not after the first message."""
        from midpo_cli.modeling.generation import context_limit

        limit = context_limit(self.model)
        if limit is not None and limit - self.max_new_tokens < 2:
            raise InputError(f"--max-new-tokens {self.max_new_tokens} leaves no room for a prompt: {self.spec} "
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
    def prompt_text(self, prompt: str) -> str:
        if not self.history or not self.turns:
            return format_prompt(prompt, self.template, self.tokenizer)
        if self.template == "chat":
            messages = [m for p, a in self.turns for m in ({"role": "user", "content": p},
                                                            {"role": "assistant", "content": a})]
            return self.tokenizer.apply_chat_template([*messages, {"role": "user", "content": prompt.strip()}],
                                                      tokenize=False, add_generation_prompt=True)
        earlier = "".join(f"USER: {p} ASSISTANT:{a} " for p, a in self.turns)
        return SAFE_RLHF.format(prompt=prompt.strip()).replace("USER: ", earlier + "USER: ", 1)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Encoded prompt that leaves room for the answer: oldest turns dropped first, then the left cut."""
        from midpo_cli.modeling.generation import context_limit

        limit = context_limit(self.model)
        special = adds_special_tokens(self.template)
        while True:
            ids = list(self.tokenizer(self.prompt_text(prompt), add_special_tokens=special)["input_ids"])
            if ids and ids[-1] in self.eos and special:
                ids = ids[:-1]  # some tokenizers append EOS; a prompt never ends with one
            if limit is None or len(ids) + self.max_new_tokens <= limit or not (self.history and self.turns):
                break
            self.turns.pop(0)
        if limit is not None and len(ids) + self.max_new_tokens > limit:
            keep = limit - self.max_new_tokens
            if keep < 2:
                raise InputError(f"--max-new-tokens {self.max_new_tokens} leaves no room for a prompt "
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
                           "safety_bias": self.safety_bias,
                           "fixed_gates": list(self.fixed_gates) if self.fixed_gates is not None else None,
                           "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                           "top_p": self.top_p, "seed": self.seed}
        if self.history:
            self.turns.append((prompt.strip(), answer.text))
        self.transcript.append({"turn": len(self.transcript) + 1, **answer.to_json()})
        return answer

    def _step_gates(self) -> tuple[float, float] | None:
        if not self.routed:
            return None
        mean = torch.stack([g[0, -1, :].float() for g in self.model.gates()]).mean(0)
        return float(mean[0]), float(mean[1])

    def _decode(self, prompt_ids: list[int], stop: Callable[[], bool], on_token: TokenCallback | None) -> Answer:
        model, device = self.model, self.model.device
        step_input = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        out_ids: list[int] = []
        pieces: list[str] = []
        gates: list[tuple[float, float]] = []
        eos_gate, finished, interrupted, past, shown = None, False, False, None, ""
        with torch.no_grad(), held_prompt(model, self.routed) as needs_prompt:
            for step in range(self.max_new_tokens):
                if stop():
                    interrupted = True
                    break
                extra = {"prompt_mask": torch.ones_like(step_input)} if needs_prompt and step == 0 else {}
                out = model(input_ids=step_input, past_key_values=past, use_cache=True, **extra)
                past = out.past_key_values
                gate = self._step_gates()
                token = pick_token(out.logits[0, -1], self.temperature, self.top_p, self.generator)
                if token in self.eos:
                    eos_gate, finished = gate, True
                    break
                out_ids.append(token)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True).lstrip()
                piece = text[len(shown):] if text.startswith(shown) and not text.endswith("\ufffd") else ""
                shown += piece
                pieces.append(piece)
                if gate is not None:
                    gates.append(gate)
                if on_token is not None and piece:
                    on_token(piece, gate)
                step_input = torch.tensor([[token]], dtype=torch.long, device=device)
        text = self.tokenizer.decode(out_ids, skip_special_tokens=True).strip()
        return Answer(prompt="", text=text, token_ids=out_ids, pieces=pieces,
                      token_gates=gates if self.routed else None, eos_gates=eos_gate, finished=finished,
                      interrupted=interrupted, prompt_tokens=len(prompt_ids))

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


@contextlib.contextmanager
def sigint_flag() -> Iterator[Callable[[], bool]]:
    """While active, Ctrl-C sets a flag (the answer stops at the next token) instead of raising."""
    hit = [False]

    def handler(signum: int, frame: Any) -> None:
        hit[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: KeyboardInterrupt is caught by the caller instead
        yield lambda: hit[0]
        return
    try:
        yield lambda: hit[0]
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the terminal ------------------------------------------------------------------------------------

HELPFUL_RGB, SAFE_RGB = (64, 150, 255), (255, 72, 72)  # g_safety 0 → blue, 1 → red
HELP_TEXT = """commands:
  /dial B          safety dial: add B to every safety-gate logit, subtract it from the helpfulness one
  /gates G_S,G_H   fixed gates in [0, 1] at every token and layer; /gates off: the routers again
  /reset           forget the conversation, restore the starting dial and gates
  /save FILE       write the transcript (JSONL, with gates); /save! FILE replaces an existing file
  /help, /quit     this text; leave (also Ctrl-D; Ctrl-C stops an answer, twice at the prompt leaves)"""


def gate_style(g_safety: float) -> Any:
    """A colour between helpfulness-blue (g_s = 0) and safety-red (g_s = 1)."""
    from rich.color import Color
    from rich.style import Style

    t = min(max(float(g_safety), 0.0), 1.0)
    rgb = [round(a + (b - a) * t) for a, b in zip(HELPFUL_RGB, SAFE_RGB, strict=True)]
    return Style(color=Color.from_rgb(*rgb))


def legend() -> Any:
    from rich.style import Style
    from rich.text import Text

    text = Text("safety gate g_s (mean over layers):  helpful ")
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        text.append(f" {value:g} ", style=gate_style(value) + Style(reverse=True))
    return text.append(" safe")


def settings_line(session: ChatSession) -> str:
    if not session.routed:
        return f"{session.kind} model, template {session.template}"
    gates = session.fixed_gates
    mode = f"fixed gates {gates[0]:g},{gates[1]:g}" if gates is not None else "learned routers"
    return f"MidPO model, {mode}, safety dial {session.safety_bias:+g}, template {session.template}"


def handle_command(session: ChatSession, line: str, out: Any) -> bool:
    """Run one /command; True means leave. Bad arguments are reported and the session goes on."""
    from rich.markup import escape

    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit", "/q"):
            return True
        if name == "/help":
            out.print(HELP_TEXT, markup=False, highlight=False)
        elif name == "/dial":
            try:
                session.set_dial(float(arg))
            except ValueError:
                raise InputError(f"/dial {arg!r}: expected a number, e.g. /dial 1.5") from None
            extra = " (fixed gates are on: /gates off to let the routers use it)" if session.fixed_gates else ""
            out.print(f"[dim]{escape(settings_line(session) + extra)}[/dim]")
        elif name == "/gates":
            session.set_gates(None if arg in ("off", "router", "routers") else parse_gates(arg, "/gates"))
            out.print(f"[dim]{escape(settings_line(session))}[/dim]")
        elif name == "/reset":
            session.reset()
            out.print(f"[dim]conversation cleared; {escape(settings_line(session))}[/dim]")
        elif name in ("/save", "/save!"):
            if not arg:
                raise InputError(f"{name} needs a file name, e.g. {name} chat.jsonl")
            path = session.save(arg, overwrite=name == "/save!")
            out.print(f"[dim]saved {len(session.transcript)} answer(s) → {escape(str(path))}[/dim]")
        else:
            raise InputError(f"unknown command {name!r}; /help lists them")
    except (InputError, OSError) as exc:
        out.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
    return False


def stream_answer(session: ChatSession, prompt: str, out: Any) -> Answer:
    """Print the answer as it is generated, each piece coloured by its safety gate; Ctrl-C stops it."""
    from rich.text import Text

    def show(piece: str, gate: tuple[float, float] | None) -> None:
        out.print(Text(piece, style=gate_style(gate[0]) if gate is not None else ""), end="", soft_wrap=True)

    out.print(Text("model> ", style="bold"), end="")
    with sigint_flag() as stopped:
        try:
            answer = session.answer(prompt, stop=stopped, on_token=show)
        except KeyboardInterrupt:  # signal handler unavailable (not the main thread)
            out.print()
            out.print("[yellow]answer interrupted[/yellow]")
            raise _Stopped() from None
    out.print()
    notes = ["interrupted"] if answer.interrupted else [] if answer.finished else ["max tokens reached"]
    mean = answer.mean_gates()
    if mean is not None:
        notes.insert(0, f"mean gates: safety {mean['safety']:.2f} · helpfulness {mean['helpfulness']:.2f}")
    notes.append(f"{len(answer.token_ids)} tokens")
    out.print(Text(" · ".join(notes), style="dim"))
    return answer


class _Stopped(Exception):
    """An answer ended by KeyboardInterrupt rather than by the flag."""


def run_chat(session: ChatSession, *, read: Callable[[str], str], out: Any) -> int:
    """The interactive loop; returns the exit code (0 after /quit or EOF, 130 after Ctrl-C twice)."""
    from rich.markup import escape

    out.print(f"[bold]midpo chat[/bold] · {escape(session.spec)} · {escape(settings_line(session))}")
    if session.routed:
        out.print(legend())
    out.print("[dim]/help for commands, /quit to leave[/dim]")
    armed = False  # a Ctrl-C at the prompt arms; a second one leaves
    while True:
        try:
            line = read("you> ")
        except EOFError:
            out.print()
            return 0
        except KeyboardInterrupt:
            if armed:
                out.print()
                return 130
            armed = True
            out.print("\n[dim](Ctrl-C again or /quit to leave)[/dim]")
            continue
        armed = False
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if handle_command(session, line, out):
                return 0
            continue
        with contextlib.suppress(_Stopped):
            stream_answer(session, line, out)
