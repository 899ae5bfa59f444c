"""The HTTP side of `midpo serve`: FastAPI routes over the engine, server-sent events, the API key, and uvicorn
with a drain on SIGINT/SIGTERM.

- `POST /v1/chat/completions` (the model's serving chat template: midpo_cli.data.template.conversation_ids) and
  `POST /v1/completions` (raw text, or token ids), each with `stream: true` as server-sent events ending in
  `data: [DONE]`; `GET /v1/models`; `GET /health` (no key needed: a load balancer's probe).
- The API key, when the server has one, is compared in constant time and never logged or echoed.
- The handlers never compute: they queue a job for the engine's worker thread (midpo_cli.serve.engine) and await
  its events, which the worker hands over with `call_soon_threadsafe`. A streaming client that goes away cancels
  its row at the next step.
- SIGINT / SIGTERM: uvicorn stops accepting, every request already in (queued, running, streaming) is answered,
  the worker ends, and the process exits 0. uvicorn's own handler re-raises the signal after its shutdown, which
  ends the process by the signal (exit 130 / 143) even after a clean drain; `DrainingServer` does not. A second
  SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.serve.engine import Engine, Job
from midpo_cli.serve.protocol import (
    DONE,
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_response,
    chunk,
    completion_response,
    new_id,
    parse,
    usage,
)


def create_app(engine: Engine, *, api_key: str | None = None, url: str = "") -> FastAPI:
    """The app over a loaded `engine`; its lifespan starts and drains the engine's worker."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        console.log(f"serve: {engine.name} ({engine.router_kind or engine.kind}) at {url}/v1"
                    + (", API key required" if api_key else ""))
        try:
            yield
        finally:
            engine.stop()
            console.log(f"serve: stopped after {engine.served} answers")

    app = FastAPI(title="midpo serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "kind": engine.kind, "router": engine.router_kind,
                "template": engine.template, **engine.status()}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": int(time.time()),
                                            "owned_by": "midpo"} for m in engine.model_ids]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        authorize(request)
        return await answer(engine, parse(await request.body(), ChatRequest), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        authorize(request)
        return await answer(engine, parse(await request.body(), CompletionRequest), chat=False)

    return app


def prompt_of(engine: Engine, req: Any, chat: bool) -> list[int]:
    try:
        if chat:
            return engine.chat_ids([{"role": m.role, "content": m.text()} for m in req.messages])
        return engine.prompt_ids(req.single())
    except InputError as exc:  # a role the template refuses, a malformed message
        raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None


async def answer(engine: Engine, req: Any, *, chat: bool) -> Any:
    """Queue the request, then answer it whole or as a stream of events."""
    bias, gates = engine.routing(req.model, req.safety_bias, req.gates)
    ids = prompt_of(engine, req, chat)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def emit(kind: str, value: Any) -> None:  # called from the worker thread
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    job = Job(ids=ids, max_tokens=engine.token_limit(req.token_limit(), len(ids)), temperature=req.temperature,
              top_p=req.top_p, seed=req.seed or 0, safety_bias=bias, gates=gates, stops=req.stops(), emit=emit)
    engine.submit(job)
    rid = new_id("chatcmpl" if chat else "cmpl")
    if req.stream:
        return StreamingResponse(stream(job, events, rid, req.model, chat), media_type="text/event-stream")
    try:
        while (event := await events.get())[0] == "piece":
            continue
    finally:
        job.cancelled.set()  # the client went away, or the answer is done: nothing more to compute
    kind, done = event
    if kind == "error":
        raise done
    build = chat_response if chat else completion_response
    return build(rid, req.model, done["text"], done["finish_reason"],
                 usage(done["prompt_tokens"], done["completion_tokens"]), done["midpo"])


async def stream(job: Job, events: asyncio.Queue, rid: str, model: str, chat: bool) -> AsyncIterator[str]:
    """Server-sent events: (chat) the role, each piece as it is decoded, the end with usage and routing, [DONE]."""
    try:
        if chat:
            yield chunk(rid, model, chat, "", first=True)
        while True:
            kind, value = await events.get()
            if kind == "piece":
                yield chunk(rid, model, chat, value)
                continue
            if kind == "error":
                yield f"data: {json.dumps(value.body())}\n\n"
            else:
                extra = {"usage": usage(value["prompt_tokens"], value["completion_tokens"]), "midpo": value["midpo"]}
                yield chunk(rid, model, chat, None, value["finish_reason"], extra=extra)
            break
        yield DONE
    finally:
        job.cancelled.set()  # a client gone mid-answer stops its row at the next step


class DrainingServer(uvicorn.Server):
    """uvicorn, but a SIGINT or SIGTERM drains and returns (exit 0) instead of re-raising the signal after the
    shutdown (module docstring)."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts (port 0: a free port; the log line names it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def run(engine: Engine, *, host: str, port: int, api_key: str | None) -> None:
    """Serve until SIGINT / SIGTERM, then drain (module docstring)."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(engine, api_key=api_key, url=f"http://{shown}:{bound}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    DrainingServer(config).run(sockets=[sock])
