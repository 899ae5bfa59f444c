"""`midpo chat`: an interactive terminal chat with any model midpo loads, MidPO gates shown live."""

from __future__ import annotations

import json
import sys

import typer

from midpo_cli.commands.options import JsonOpt
from midpo_cli.recipe import GenerationSettings

_D = GenerationSettings()  # the option defaults: `midpo generate`'s, one definition of the decoding settings


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def chat(
    model: str = typer.Argument(..., help="Base model (embedded:, hub name, folder), PEFT adapter folder, "
                                "or MidPO model folder."),
    template: str = typer.Option(None, "--template", help="auto, safe-rlhf or chat (default: the template the "
                                 "model recorded, else auto)."),
    max_new_tokens: int = typer.Option(_D.max_new_tokens, "--max-new-tokens", min=1,
                                       help="Tokens per answer at most."),
    temperature: float = typer.Option(_D.temperature, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(_D.top_p, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(_D.seed, "--seed", help="Sampling seed."),
    safety_bias: float = typer.Option(None, "--safety-bias", help="Starting safety dial B for MidPO models "
                                      "(change it with /dial B)."),
    gates: str = typer.Option(None, "--gates", help="Fixed G_SAFETY,G_HELPFULNESS for MidPO models."),
    history: bool = typer.Option(False, "--history", help="Keep earlier turns in the prompt (default: each "
                                 "message is answered on its own, as the experts were trained)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
    as_json: bool = JsonOpt,
) -> None:
    """Chat with a model; for MidPO models each answer token is coloured by its safety gate.

    With --json, each non-empty stdin line is one prompt, answered in order: one JSON object per line on
    stdout (JSON Lines) with the answer, its mean gates and one gate pair per answer token
    (printf "Hi\\nHow do I bake bread?\\n" | midpo chat MODEL --json).
    """
    from midpo_cli.errors import InputError
    from midpo_cli.evaluation.labels import parse_gates
    from midpo_cli.modeling.chat_session import open_session

    fixed = parse_gates(gates) if gates is not None else None
    if fixed is not None and safety_bias is not None:
        raise InputError("--safety-bias with --gates: fixed gates replace the routers whose logits the dial shifts, "
                         "so the dial would be ignored; give one of them")
    settings = _D.but(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    prompts = stdin_prompts() if as_json else None
    quiet_library_notices()
    session = open_session(model, template=template, settings=settings, safety_bias=safety_bias, gates=fixed,
                           history=history, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if prompts is not None:
        for prompt in prompts:
            sys.stdout.write(json.dumps(session.answer(prompt).to_json(), default=str) + "\n")
            sys.stdout.flush()
        return
    from rich.console import Console

    from midpo_cli.commands.chat_ui import run_chat

    out = Console(highlight=False)
    code = run_chat(session, read=lambda text: out.input(text), out=out)
    if code:
        raise typer.Exit(code)


def stdin_prompts() -> list[str]:
    """--json's prompts: each non-empty stdin line is one."""
    from midpo_cli.errors import InputError

    prompts = [line.strip() for line in read_stdin_prompt().splitlines() if line.strip()]
    if not prompts:
        raise InputError("--json: stdin is empty; pipe prompts in, one a line: echo \"Hello\" | midpo chat "
                         "MODEL --json")
    return prompts


def quiet_library_notices() -> None:
    """Deprecation notices (transformers' FutureWarnings and logger lines) are for library authors; printed
    inside the first answer they garble the chat."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.simplefilter("ignore", FutureWarning)
    hf_logging.set_verbosity_error()


def read_stdin_prompt() -> str:
    """stdin as UTF-8 text; binary input is one InputError (it was a UnicodeDecodeError, exit 1)."""
    from midpo_cli.errors import InputError

    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--json: stdin is not UTF-8 text (byte {exc.start}); pipe a text prompt in") from None
    if "\x00" in text:
        raise InputError(f"--json: stdin holds binary data (a NUL byte at {text.index(chr(0))}); pipe a text prompt in")
    return text.strip()
