"""The LLM judge behind any OpenAI-compatible endpoint (a hosted API as the paper's GPT-4 judge, a local vLLM, an
OpenAI-compatible server of one's own): one chat completion per distinct (prompt, answer), read by the rubric
(midpo_cli.judges.rubric), over plain HTTP (urllib: no client library to pin).

- Bounded concurrency (`concurrency` requests in flight), a `timeout_s` per request, `retries` with exponential
  backoff (`backoff_s`, doubled each time; a 429's Retry-After when it names a wait) on a timeout, a refused or
  dropped connection, a 429, a 408 or 5xx, a response that is not a chat completion, and a reply the rubric
  cannot read. Other HTTP errors (400, 401, 404: a setting, not luck) are not retried.
- Every failure is counted by its reason and shown: on stderr, in the summary and in the report. A failed item has
  no labels (outcome NaN: left out of every rate, counted as unjudged); nothing is dropped silently.
- Replies are cached on disk per (endpoint, model, rubric, prompt, answer) (midpo_cli.judges.answer_cache): a
  re-score or a resumed score asks only what it has no reply for.
- The key is read from the environment variable `api_key_env` when the judge runs and goes only into the request's
  Authorization header: never into a file, a log line, an error message or the report.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.judges.answer_cache import AnswerCache, item_key
from midpo_cli.judges.base import JudgeEnv
from midpo_cli.judges.rubric import RUBRIC, RUBRIC_NAME, parse_reply, user_message
from midpo_cli.recipe import OpenAIJudgeSpec

MAX_RETRY_AFTER_S = 30.0  # a server's Retry-After beyond this is capped: the score must finish


class RequestFailed(Exception):
    """One failed request: why (the counted reason), whether to retry, and a wait the server asked for."""

    def __init__(self, reason: str, retry: bool, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.wait = reason, retry, wait


class OpenAIJudge:
    kind = "openai"
    tells_refusal = True

    def __init__(self, name: str, spec: OpenAIJudgeSpec, env: JudgeEnv) -> None:
        self.name, self.spec = name, spec
        self.rubric = read_rubric(spec.rubric)
        self.cache = AnswerCache(env.cache_dir / f"{name}.jsonl" if env.cache_dir else None)
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.retried: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def cannot_judge(self, prompts: Sequence[Mapping[str, Any]]) -> str | None:
        return None

    def key(self, prompt: str, answer: str) -> str:
        return item_key(self.url, self.spec.model, self.rubric, prompt, answer)

    def label(self, rows: Sequence[Mapping[str, Any]], *, dev_set: str | None
              ) -> tuple[list[dict[str, Any] | None], dict[str, Any]]:
        del dev_set  # the rubric decides; nothing is chosen on dev
        api_key = read_api_key(self.name, self.spec.api_key_env)
        items = {self.key(str(r["prompt"]), str(r["answer"])): (str(r["prompt"]), str(r["answer"])) for r in rows}
        todo = [k for k in items if self.cache.get(k) is None]
        console.log(f"judge {self.name}: {self.spec.model} at {self.spec.base_url}: {len(items)} distinct answers, "
                    f"{len(items) - len(todo)} cached, {len(todo)} to ask ({self.spec.concurrency} at a time)")
        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            list(pool.map(lambda k: self.ask(k, *items[k], api_key), todo))
        labels = [self.cache.get(self.key(str(r["prompt"]), str(r["answer"]))) for r in rows]
        failed = sum(self.failed.values())
        if failed:
            console.warn(f"judge {self.name}: {failed} of {len(todo)} requests failed "
                         f"({', '.join(f'{k}: {v}' for k, v in sorted(self.failed.items()))}); those answers are "
                         "unjudged (left out of every rate) and will be asked again on the next score")
        info = {"model": self.spec.model, "base_url": self.spec.base_url,
                "rubric": self.spec.rubric or f"built-in ({RUBRIC_NAME})", "distinct_answers": len(items),
                "cached": len(items) - len(todo), "asked": len(todo), "failed": failed,
                "failures": dict(sorted(self.failed.items())), "retried": dict(sorted(self.retried.items())),
                "unjudged_answers": sum(label is None for label in labels)}
        return [None if v is None else {k: v.get(k) for k in ("safe", "refused", "helpful", "raw")}
                for v in labels], info

    def ask(self, key: str, prompt: str, answer: str, api_key: str | None) -> None:
        """One item, retried with backoff (module docstring); a parsed reply goes into the cache."""
        body = {"model": self.spec.model, "temperature": 0, "max_tokens": self.spec.max_tokens,
                "messages": [{"role": "system", "content": self.rubric},
                             {"role": "user", "content": user_message(prompt, answer)}]}
        last = RequestFailed("no attempt", retry=False)
        for attempt in range(self.spec.retries + 1):
            try:
                reply = post_chat(self.url, body, api_key, self.spec.timeout_s)
                try:
                    labels = parse_reply(reply)
                except ValueError:
                    raise RequestFailed("malformed reply", retry=True) from None
                self.cache.put(key, {**labels, "raw": reply})
                return
            except RequestFailed as failure:
                last = failure
                if not failure.retry or attempt == self.spec.retries:
                    break
                with self._lock:
                    self.retried[failure.reason] += 1
                time.sleep(failure.wait if failure.wait is not None else self.spec.backoff_s * 2 ** attempt)
        with self._lock:
            self.failed[last.reason] += 1


def post_chat(url: str, body: Mapping[str, Any], api_key: str | None, timeout: float) -> str:
    """The reply text of one chat completion; RequestFailed with a reason that names no secret."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the recipe's endpoint)
            raw = response.read()
    except urllib.error.HTTPError as exc:
        code = exc.code
        wait = retry_after(exc.headers.get("Retry-After") if exc.headers else None) if code == 429 else None
        raise RequestFailed(f"http {code}", retry=code in (408, 429) or code >= 500, wait=wait) from None
    except (TimeoutError, OSError) as exc:  # socket timeouts, refused or reset connections, URLError
        reason = getattr(exc, "reason", exc)
        timed_out = isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(reason)
        raise RequestFailed("timeout" if timed_out else "connection", retry=True) from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RequestFailed("malformed response", retry=True) from None
    if not isinstance(content, str):
        raise RequestFailed("malformed response", retry=True)
    return content


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds only; an HTTP date is ignored), capped."""
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:
        return None


def read_api_key(judge: str, env_var: str | None) -> str | None:
    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise InputError(f"judge {judge}: api_key_env {env_var} is not set in the environment; export it (the key is "
                         "read from there only, never from a file)")
    return value


def read_rubric(path: str | None) -> str:
    if path is None:
        return RUBRIC
    file = Path(path)
    if not file.is_file():
        raise InputError(f"rubric {path}: no such file")
    text = file.read_text(encoding="utf-8").strip()
    if not text:
        raise InputError(f"rubric {path}: the file is empty")
    return text
