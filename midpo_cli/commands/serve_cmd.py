"""`midpo serve`: an OpenAI-compatible HTTP server for any model midpo loads (docs/serve.md)."""

from __future__ import annotations

import typer

from midpo_cli.recipe import GenerationSettings

_D = GenerationSettings()  # the request defaults and the batch size: `midpo generate`'s
API_KEY_ENV = "MIDPO_API_KEY"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: str = typer.Argument(..., help="Base model (embedded:, hub name, folder), PEFT adapter folder, or MidPO "
                                "model folder (a learned router or a probe switch)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; give "
                             "the server an API key then)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: a free one, named in the log)."),
    name: str = typer.Option(None, "--name", help="The model id clients send (default: the folder's name)."),
    api_key_env: str = typer.Option(API_KEY_ENV, "--api-key-env", help="Environment variable holding the API key; "
                                    "when it is set, every /v1 request needs `Authorization: Bearer KEY`."),
    template: str = typer.Option(None, "--template", help="auto, safe-rlhf or chat (default: the template the model "
                                 "recorded, else auto)."),
    safety_bias: float = typer.Option(None, "--safety-bias", help="Default safety dial of a MidPO model (a request's "
                                      "`safety_bias` replaces it)."),
    gates: str = typer.Option(None, "--gates", help="Default fixed G_SAFETY,G_HELPFULNESS of a MidPO model."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", min=1, help="Requests answered together at most."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests waiting at most; more get 429."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="The largest max_tokens a request may ask."),
    max_prompt_tokens: int = typer.Option(None, "--max-prompt-tokens", min=1, help="Longest prompt, in tokens "
                                          "(default: the model's context less one)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a CUDA GPU that has it, else fp32), fp32, bf16 "
                              "or fp16."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions (both streaming),
    /v1/models, /health. Extra body fields `safety_bias` and `gates` set a MidPO model's dial and fixed gates per
    request, and each answer reports the gates it used. Concurrent requests are answered in batches. SIGINT or
    SIGTERM answers what is already in, then exits 0."""
    import os
    from pathlib import Path

    from midpo_cli.errors import InputError
    from midpo_cli.evaluation.labels import parse_gates

    fixed = parse_gates(gates) if gates is not None else None
    if fixed is not None and safety_bias is not None:
        raise InputError("--safety-bias with --gates: fixed gates replace the routers whose logits the dial shifts; "
                         "give one of them")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InputError("midpo serve needs the serve extra: pip install 'midpo-cli[serve]'") from None
    key = os.environ.get(api_key_env) or None
    if host not in ("127.0.0.1", "localhost", "::1") and key is None:
        from midpo_cli import console

        console.warn(f"--host {host}: the server is reachable from other machines and has no API key "
                     f"(set {api_key_env})")
    from midpo_cli.modeling.loading import resolve_precision
    from midpo_cli.modeling.policy import open_policy
    from midpo_cli.serve.app import run
    from midpo_cli.serve.engine import Engine, Limits

    policy, used = open_policy(model, template=template, safety_bias=safety_bias, gates=fixed,
                               dtype=resolve_precision(dtype), device=device, trust_remote_code=trust_remote_code)
    limits = Limits(batch_size=batch_size, max_queue=max_queue, max_tokens=max_tokens,
                    max_prompt_tokens=max_prompt_tokens, default_max_tokens=min(_D.max_new_tokens, max_tokens))
    engine = Engine(policy, name=name or Path(model.rstrip("/")).name or model, template=used, limits=limits)
    run(engine, host=host, port=port, api_key=key)
