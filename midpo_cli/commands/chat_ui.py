"""`midpo chat`'s terminal: answers streamed with each token coloured by its safety gate, /commands, Ctrl-C.

The model side (the session, the decoding loop, the transcript) is `modeling/chat_session.py`; this module
only reads lines, prints, and maps Ctrl-C onto the session's stop request: during an answer it sets a flag
the decoding loop polls between tokens (the answer ends, the session lives), at the prompt it arms and a
second one leaves. No torch here: rich is imported where it is used, and the session type only for checking.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from midpo_cli.errors import InputError
from midpo_cli.evaluation.labels import parse_gates

if TYPE_CHECKING:
    from midpo_cli.modeling.chat_session import Answer, ChatSession


HELPFUL_RGB, SAFE_RGB = (64, 150, 255), (255, 72, 72)  # g_safety 0 → blue, 1 → red
HELP_TEXT = """commands:
  /dial B          safety dial: add B to every safety-gate logit, subtract it from the helpfulness one
  /gates G_S,G_H   fixed gates in [0, 1] at every token and layer; /gates off: the router (or switch) again
  /reset           forget the conversation, restore the starting dial and gates
  /save FILE       write the transcript (JSONL, with gates); /save! FILE replaces an existing file
  /help, /quit     this text; leave (also Ctrl-D; Ctrl-C stops an answer, twice at the prompt leaves)"""


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
    return (f"MidPO model, {session.model.router_kind}, safety dial {session.safety_bias:+g}, "
            f"template {session.template}")


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
