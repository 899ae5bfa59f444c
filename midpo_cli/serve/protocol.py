"""The OpenAI-compatible wire format of `midpo serve`: requests, responses, stream chunks and errors.

Requests are parsed here from the raw body (not by FastAPI's own validation), so every bad request — malformed
JSON, a negative `max_tokens`, an unknown model — gets OpenAI's error shape with a 4xx status, `{"error": {"message",
"type", "param", "code"}}`, never FastAPI's 422 layout. Fields OpenAI defines that midpo does not use (`user`,
`logit_bias`, …) are ignored; those whose meaning midpo cannot honour (`n` > 1, `logprobs`, tools) are refused, not
silently dropped. midpo's own fields ride in the body, as vLLM's extra parameters do: `safety_bias` (the dial) and
`gates` ([g_safety, g_helpfulness], fixed); every response says what routed it under `midpo`.

Defaults are `midpo generate`'s (recipe.GenerationSettings), so an unadorned request is answered as `midpo generate`
answers: greedy (temperature 0, where OpenAI's default is 1) and `max_tokens` 64.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from midpo_cli.recipe import GenerationSettings

_D = GenerationSettings()


class ApiError(Exception):
    """An error answered as OpenAI answers it: `status` and `{"error": {...}}`; the server stays up."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(_D.temperature, ge=0, le=2)
    top_p: float = Field(_D.top_p, gt=0, le=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    safety_bias: float | None = Field(None, allow_inf_nan=False)
    gates: tuple[float, float] | None = None

    @field_validator("gates")
    @classmethod
    def _gates_in_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(0.0 <= g <= 1.0 for g in value):
            raise ValueError("both gates must be in [0, 1]")
        return value

    def stops(self) -> list[str]:
        found = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in found if s]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        """The message's text; OpenAI's list-of-parts form is joined (text parts only)."""
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise ApiError(400, "only text message parts are supported", param="messages")
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[Any] | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False

    def token_limit(self) -> int | None:
        return self.max_tokens

    def single(self) -> str | list[int]:
        """One prompt, text or token ids: midpo answers one per request (send concurrent requests to batch)."""
        p = self.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            if len(p) != 1:
                raise ApiError(400, f"one prompt per request, got {len(p)}; send them as concurrent requests "
                               "(the server batches them)", param="prompt")
            p = p[0]
        if isinstance(p, list) and not p:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return p


def parse(raw: bytes, kind: type[_Request]) -> Any:
    """The request body as `kind`, or ApiError(400) naming the bad field."""
    try:
        data = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        request = kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or None
        raise ApiError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where) from None
    if getattr(request, "logprobs", None) or getattr(request, "tools", None) or getattr(request, "echo", False):
        raise ApiError(400, "logprobs, echo and tools are not supported by midpo serve")
    return request


# -- responses --------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, text: str, finish: str, use: dict[str, int], midpo: dict[str, Any]) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}], "usage": use, "midpo": midpo}


def completion_response(rid: str, model: str, text: str, finish: str, use: dict[str, int],
                        midpo: dict[str, Any]) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], "usage": use,
            "midpo": midpo}


def chunk(rid: str, model: str, chat: bool, piece: str | None, finish: str | None = None, *,
          first: bool = False, extra: dict[str, Any] | None = None) -> str:
    """One server-sent event of a stream: a piece of text, or (with `finish`) the end, usage and routing."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if piece is not None:
            delta["content"] = piece
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [choice]}
    else:
        body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps({**body, **(extra or {})})}\n\n"


DONE = "data: [DONE]\n\n"
