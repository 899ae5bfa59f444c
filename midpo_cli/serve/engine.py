"""The model side of `midpo serve`: one loaded model, a bounded queue, and a worker thread that answers in batches.

Why a thread and batches: the model computes one batch at a time, so the HTTP event loop must never wait on it, and
concurrent requests are far cheaper answered together — one forward per step for the whole batch. The worker takes
the oldest request and every queued one that can share its batch (the same dial, gates and sampling settings: they
are the model's state for the pass), up to `batch_size`, and runs `midpo generate`'s decoding pass on them
(midpo_cli.modeling.decoding). Each row stops on its own — EOS, its `max_tokens`, a stop string, its client gone —
while the others decode on, so a greedy answer in a batch is the answer the request gets alone, and the one
`midpo generate` gives.

Limits are checked before a request is queued and answered as 4xx errors (midpo_cli.serve.protocol.ApiError): a
prompt longer than `max_prompt_tokens`, a prompt plus `max_tokens` beyond the model's context, `max_tokens` above the
server's cap, a full queue (429).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.template import conversation_ids
from midpo_cli.modeling.decoding import Rows, TextStream, decode, eos_ids, pad_id_of
from midpo_cli.modeling.generation import context_limit
from midpo_cli.serve.protocol import ApiError

EXPERTS = {"safety": (1.0, 0.0), "helpfulness": (0.0, 1.0)}  # served as model ids: each expert alone


@dataclass
class Limits:
    batch_size: int = 16
    max_queue: int = 64
    max_tokens: int = 1024  # the most a request may ask for
    max_prompt_tokens: int | None = None  # None: the model's context less one
    default_max_tokens: int = 64  # a request without max_tokens


@dataclass
class Job:
    """One request: its prompt ids and settings; `emit` hands events to its HTTP handler (any thread)."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    safety_bias: float | None
    gates: tuple[float, float] | None
    stops: list[str]
    emit: Callable[[str, Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple:
        """What a batch shares: the model's routing state and the sampling settings."""
        sampled = self.temperature > 0
        return (self.safety_bias, self.gates, self.temperature if sampled else 0.0, self.top_p if sampled else 1.0,
                self.seed if sampled else 0)


class Engine:
    """The served model (a `modeling.policy.Policy`), its prompt template, the queue and the worker."""

    def __init__(self, policy: Any, *, name: str, template: str, limits: Limits) -> None:
        self.model, self.tokenizer, self.kind = policy.model, policy.tokenizer, policy.kind
        self.name, self.template, self.limits = name, template, limits
        self.eos, self.pad_id = eos_ids(self.model, self.tokenizer), pad_id_of(self.tokenizer)
        self.context = context_limit(self.model)
        self.routed = self.kind == "midpo"
        self.start_state = (self.model.state.safety_bias, self.model.state.fixed) if self.routed else None
        self.pending: deque[Job] = deque()
        self.lock = threading.Condition()
        self.running = 0
        self.closing = False
        self.served, self.batches, self.largest_batch = 0, 0, 0
        self.worker = threading.Thread(target=self._loop, name="midpo-serve-worker", daemon=True)

    # -- what a request may ask ------------------------------------------------------------------------
    @property
    def model_ids(self) -> list[str]:
        """The served model, and for a MidPO model each expert alone (fixed gates (1, 0) / (0, 1)), so a client that
        picks the expert itself (a router in front, `route.py` of an exported switch) can name it."""
        return [self.name, *(EXPERTS if self.routed else ())]

    @property
    def router_kind(self) -> str | None:
        return self.model.router_kind if self.routed else None

    def routing(self, model: str, safety_bias: float | None, gates: tuple[float, float] | None) -> tuple:
        """(safety_bias, gates) of a request for `model`; ApiError for an unknown model or a setting it lacks."""
        if model not in self.model_ids:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {self.model_ids}",
                           param="model", code="model_not_found")
        if not self.routed and (safety_bias is not None or gates is not None):
            raise ApiError(400, f"safety_bias and gates apply to MidPO models; {self.name} is a {self.kind} model",
                           param="safety_bias" if safety_bias is not None else "gates")
        if model in EXPERTS:
            if gates is not None:
                raise ApiError(400, f"model {model!r} is one expert at fixed gates {EXPERTS[model]}; give gates "
                               f"with model {self.name!r}", param="gates")
            gates = EXPERTS[model]
        if safety_bias is not None and (gates or self.start_state[1]) is not None:
            raise ApiError(400, "safety_bias with fixed gates: fixed gates replace the router whose logits the dial "
                           "shifts, so the dial would be ignored; give one of them", param="safety_bias")
        return safety_bias, gates

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation as the model reads it: its serving chat template (midpo_cli.data.template)."""
        return conversation_ids(messages, self.tokenizer, self.template)

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A completion prompt: token ids as given, or raw text encoded as a completions API encodes it, the
        tokenizer's special tokens in front (the safe-rlhf format sent as text gets the ids training saw)."""
        if isinstance(prompt, list):
            vocab = getattr(self.model.config, "vocab_size", None) or len(self.tokenizer)
            if any(not 0 <= int(t) < vocab for t in prompt):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
            return [int(t) for t in prompt]
        ids = list(self.tokenizer(prompt)["input_ids"])
        return ids[:-1] if ids and ids[-1] in self.eos else ids

    def token_limit(self, asked: int | None, prompt_tokens: int) -> int:
        """The request's max_tokens, checked against the server's cap and the model's context."""
        limits = self.limits
        wanted = asked if asked is not None else limits.default_max_tokens
        if wanted > limits.max_tokens:
            raise ApiError(400, f"max_tokens {wanted} is above this server's limit {limits.max_tokens}",
                           param="max_tokens")
        most = limits.max_prompt_tokens or ((self.context - 1) if self.context else None)
        if prompt_tokens == 0:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if most is not None and prompt_tokens > most:
            raise ApiError(400, f"the prompt has {prompt_tokens} tokens; this server takes at most {most}",
                           param="messages", code="context_length_exceeded")
        if self.context is not None and prompt_tokens + wanted > self.context:
            if asked is not None:
                raise ApiError(400, f"the prompt ({prompt_tokens} tokens) and max_tokens {wanted} exceed the model's "
                               f"context of {self.context} tokens", param="max_tokens", code="context_length_exceeded")
            wanted = self.context - prompt_tokens  # the default shrinks to fit, as OpenAI's does
        return wanted

    # -- the queue -------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.lock:
            if self.closing:
                raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
            if len(self.pending) >= self.limits.max_queue:
                raise ApiError(429, f"the queue is full ({self.limits.max_queue} requests wait); retry shortly",
                               kind="rate_limit_error", code="queue_full")
            self.pending.append(job)
            self.lock.notify()

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        """Let the worker finish what is queued and running, then end it."""
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        if self.worker.is_alive():
            self.worker.join()

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"queued": len(self.pending), "running": self.running, "answered": self.served,
                    "batches": self.batches, "largest_batch": self.largest_batch}

    def _take(self) -> list[Job] | None:
        with self.lock:
            while not self.pending and not self.closing:
                self.lock.wait()
            if not self.pending:
                return None
            first = self.pending.popleft()
            batch = [first]
            for job in list(self.pending):
                if len(batch) >= self.limits.batch_size:
                    break
                if job.key == first.key:
                    self.pending.remove(job)
                    batch.append(job)
            self.running, self.batches = len(batch), self.batches + 1
            self.largest_batch = max(self.largest_batch, len(batch))
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [job for job in batch if not job.cancelled.is_set()]
            try:
                if live:
                    self._answer(live)
            except Exception as exc:  # a failed batch answers its requests with a 500; the server stays up
                console.warn(f"serve: a batch of {len(live)} failed: {type(exc).__name__}: {exc}")
                for job in live:
                    job.emit("error", ApiError(500, f"{type(exc).__name__}: {exc}", kind="server_error"))
            finally:
                with self.lock:
                    self.running = 0
                    self.served += len(live)

    # -- one batch -------------------------------------------------------------------------------------
    def _answer(self, jobs: list[Job]) -> None:
        first = jobs[0]
        streams = [TextStream(self.tokenizer, job.stops) for job in jobs]

        def each_step(rows: Rows, took: list[bool]) -> list[bool]:
            for b, job in enumerate(jobs):
                if took[b] and not rows.finished[b] and (piece := streams[b].push(rows.ids[b])):
                    job.emit("piece", piece)
            return [job.cancelled.is_set() or stream.stopped for job, stream in zip(jobs, streams, strict=True)]

        if first.temperature > 0:
            torch.manual_seed(first.seed)
        with self._routed_as(first):
            rows = decode(self.model, [job.ids for job in jobs], pad_id=self.pad_id, eos=self.eos,
                          max_new_tokens=max(job.max_tokens for job in jobs), temperature=first.temperature,
                          top_p=first.top_p, limits=[job.max_tokens for job in jobs], on_step=each_step)
        for b, job in enumerate(jobs):
            if tail := streams[b].push(rows.ids[b], final=True):
                job.emit("piece", tail)
            ended = rows.finished[b] or streams[b].stopped
            job.emit("done", {"text": streams[b].shown, "finish_reason": "stop" if ended else "length",
                              "prompt_tokens": len(job.ids), "completion_tokens": len(rows.ids[b]),
                              "midpo": self._routing_report(rows, b, job)})

    @contextlib.contextmanager
    def _routed_as(self, job: Job) -> Iterator[None]:
        """The model's dial and fixed gates for this batch, put back afterwards."""
        if not self.routed:
            yield
            return
        bias, fixed = self.start_state
        self.model.set_safety_bias(job.safety_bias if job.safety_bias is not None else bias)
        self.model.set_fixed_gates(job.gates if job.gates is not None else fixed)
        try:
            yield
        finally:
            self.model.set_safety_bias(bias)
            self.model.set_fixed_gates(fixed)

    def _routing_report(self, rows: Rows, b: int, job: Job) -> dict[str, Any] | None:
        """What routed this answer: the router kind, the mean gates over its steps, and the expert a hard switch
        chose."""
        if not self.routed:
            return None
        gates = rows.mean_gates(b)
        fixed = job.gates if job.gates is not None else self.start_state[1]
        kind = self.model.router_kind if fixed is None else f"fixed blend ({fixed[0]:g}, {fixed[1]:g})"
        expert = None
        one_expert = self.model.decides_per_prompt and (self.model.switch is None or self.model.switch.mode == "hard")
        if fixed is None and one_expert and gates:  # a hard switch or the routers' vote: one expert per answer
            expert = "safety" if gates["safety"] >= 0.5 else "helpfulness"
        bias = job.safety_bias if job.safety_bias is not None else self.start_state[0]
        return {"router": kind, "gates": gates, "expert": expert, "safety_bias": bias,
                "fixed_gates": list(fixed) if fixed is not None else None}
