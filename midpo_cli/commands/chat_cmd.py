"""`midpo chat`: an interactive terminal chat with any model midpo loads, MidPO gates shown live."""

from __future__ import annotations

import json
import sys

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def chat(
    model: str = typer.Argument(..., help="Base model (embedded:, hub name, folder), PEFT adapter folder, "
                                "or MidPO model folder."),
    template: str = typer.Option(None, "--template", help="auto, safe-rlhf or chat (default: the template the "
                                 "model recorded, else auto)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Tokens per answer at most."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
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

    fixed = parse_gates(gates) if gates is not None else None
    if fixed is not None and safety_bias is not None:
        raise InputError("--safety-bias with --gates: fixed gates replace the routers whose logits the dial shifts, "
                         "so the dial would be ignored; give one of them")
    prompts = stdin_prompts() if as_json else None
    quiet_library_notices()
    session = open_session(model, template=template, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, seed=seed, safety_bias=safety_bias, gates=fixed, history=history,
                           dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if prompts is not None:
        for prompt in prompts:
            sys.stdout.write(json.dumps(session.answer(prompt).to_json(), default=str) + "\n")
            sys.stdout.flush()
        return
    from rich.console import Console

    from midpo_cli.chat import run_chat

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


def open_session(spec: str, *, template: str | None, safety_bias: float | None, gates, dtype: str,
                 trust_remote_code: bool, device: str | None = None, **settings):
    """Load the model (load_policy), resolve its template, apply the starting dial and gates."""
    from pathlib import Path

    import torch

    from midpo_cli.chat import ChatSession
    from midpo_cli.data.template import check_template, resolve_template, warn_mismatch
    from midpo_cli.errors import InputError
    from midpo_cli.modeling.policy import load_policy

    if template is not None:
        check_template(template)
    is_midpo = (Path(spec).expanduser() / "midpo_config.json").is_file()
    for flag, value in (("--safety-bias", safety_bias), ("--gates", gates)):
        if value is not None and not is_midpo:
            raise InputError(f"{flag} applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise InputError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here")
    policy = load_policy(spec, gates=gates, dtype=dtype, trust_remote_code=trust_remote_code)
    if safety_bias is not None:
        policy.model.set_safety_bias(safety_bias)
    policy.model.to(device)
    trained = recorded_template_of(spec, policy)
    used = resolve_template(template or trained or "auto", policy.tokenizer)
    warn_mismatch(f"model {spec}", trained, used)
    console.log(f"chat: {spec} ({policy.kind}), template {used}")
    return ChatSession(policy, spec, template=used, **settings)


def recorded_template_of(spec: str, policy) -> str | None:
    """The template a midpo-trained model recorded: midpo_config.json, else the HF config."""
    from pathlib import Path

    from midpo_cli.data.template import recorded_template

    if policy.kind == "midpo":
        from midpo_cli.modeling.export import trained_template
        from midpo_cli.modeling.midpo import read_midpo_config

        return trained_template(read_midpo_config(Path(spec).expanduser()), policy.model)
    return recorded_template(getattr(policy.model, "config", None))
