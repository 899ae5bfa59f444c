"""`midpo serve`: started on a free port in a subprocess and called with the official `openai` client.

The model is a probe switch on the embedded tiny model, fit on toy prompts it separates, so answers come from both
experts. The reference for answers and gates is `midpo generate` (greedy) on the same folder and prompts; the
reference for the chat template is training's encoding of the prompt (the completions endpoint with the prompt
formatted by hand must answer as the chat endpoint does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from test_export import build_tiny_switch, toy_prompts

from midpo_cli.cli import main
from midpo_cli.data.template import format_prompt
from midpo_cli.data.tokenize import encode_prompts
from midpo_cli.modeling.loading import load_tokenizer

KEY = "test-key-not-logged"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, process, model folder, stderr lines so far) of `midpo serve FOLDER --port 0` with an API key."""
    root = tmp_path_factory.mktemp("serve")
    folder = build_tiny_switch(root)
    env = {**os.environ, "MIDPO_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "midpo_cli.cli", "serve", str(folder), "--port", "0",
                             "--max-tokens", "64", "--max-queue", "32"], env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"midpo serve exited {proc.wait()}: {''.join(lines)}")
        lines.append(line)
        if "http://" in line:
            break
    url = line[line.index("http://"):].split()[0].rstrip(",")
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # keep the pipe drained
    yield url, proc, folder, lines
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)


def generated(folder, prompts, tmp_path, max_new_tokens: int) -> list[dict]:
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["--quiet", "generate", "-m", str(folder), "-p", str(tmp_path / "prompts.txt"), "-o", str(out),
                 "--max-new-tokens", str(max_new_tokens)]) == 0
    return sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["index"])


def ask(api: openai.OpenAI, prompt: str, **kw):
    return api.chat.completions.create(model="switch", messages=[{"role": "user", "content": prompt}],
                                       max_tokens=kw.pop("max_tokens", 8), temperature=0, **kw)


def test_chat_streaming_and_completions_through_the_openai_client(server, tmp_path):
    url, _, folder, _ = server
    api = client(url)
    assert [m.id for m in api.models.list()] == ["switch", "safety", "helpfulness"]
    harmful, benign = toy_prompts(1)[0]
    [want] = generated(folder, [harmful], tmp_path, 8)
    whole = ask(api, harmful)
    assert whole.choices[0].message.content == want["answer"]
    midpo = whole.model_extra["midpo"]
    assert midpo["gates"] == want["gates"] == {"safety": 1.0, "helpfulness": 0.0}
    assert midpo["expert"] == "safety" and midpo["router"].startswith("probe switch (hard")
    assert whole.usage.completion_tokens == want["answer_tokens"]
    pieces, last = [], None
    for event in ask(api, harmful, stream=True):
        pieces += [event.choices[0].delta.content or ""]
        last = event
    assert len(pieces) > 2 and "".join(pieces) == want["answer"]
    assert last.choices[0].finish_reason in ("stop", "length") and last.model_extra["midpo"]["expert"] == "safety"
    # the chat template gives training's ids: the prompt formatted by hand, sent as text or as ids, answers alike
    text = api.completions.create(model="switch", prompt=format_prompt(harmful), max_tokens=8, temperature=0)
    assert text.choices[0].text == want["answer"]
    [ids], _ = encode_prompts([harmful], load_tokenizer(str(folder)), "safe-rlhf")  # training's encoding
    streamed = "".join(e.choices[0].text for e in api.completions.create(model="switch", prompt=ids, max_tokens=8,
                                                                         temperature=0, stream=True))
    assert streamed == want["answer"]
    # the dial and fixed gates per request; each expert as a model id
    bent = ask(api, benign, extra_body={"safety_bias": 50.0}).model_extra["midpo"]
    assert bent["gates"] == {"safety": 1.0, "helpfulness": 0.0} and bent["safety_bias"] == 50.0
    assert ask(api, benign).model_extra["midpo"]["expert"] == "helpfulness"
    fixed = ask(api, harmful, extra_body={"gates": [0.25, 0.75]}).model_extra["midpo"]
    assert fixed["gates"] == {"safety": 0.25, "helpfulness": 0.75} and fixed["router"] == "fixed blend (0.25, 0.75)"
    alone = api.chat.completions.create(model="helpfulness", messages=[{"role": "user", "content": harmful}],
                                        max_tokens=8, temperature=0)
    assert alone.model_extra["midpo"]["fixed_gates"] == [0.0, 1.0]


def test_16_concurrent_requests_are_batched_and_answer_as_midpo_generate(server, tmp_path):
    url, _, folder, _ = server
    prompts = toy_prompts(8)[0]
    want = generated(folder, prompts, tmp_path, 12)
    api = client(url)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda p: ask(api, p, max_tokens=12), prompts))
    assert [r.choices[0].message.content for r in got] == [w["answer"] for w in want]
    assert [r.model_extra["midpo"]["gates"] for r in got] == [w["gates"] for w in want]
    assert {r.model_extra["midpo"]["expert"] for r in got} == {"safety", "helpfulness"}
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=60) as health:
        status = json.loads(health.read())
    assert status["largest_batch"] > 1 and status["queued"] == 0


def post(url: str, body: bytes, key: str = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/chat/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("change", "status", "param"), [
    ({"model": "gpt-4"}, 404, "model"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 65}, 400, "max_tokens"),  # above the server's --max-tokens
    ({"messages": [{"role": "user", "content": "word " * 300}]}, 400, "messages"),  # longer than the context
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}, 400, "messages"),
    ({"n": 2}, 400, "n"),
    ({"gates": [1.5, 0]}, 400, "gates"),
    ({"safety_bias": 1.0, "gates": [1, 0]}, 400, "safety_bias"),
])
def test_bad_requests_are_4xx_json_and_the_server_keeps_serving(server, change, status, param):
    url, proc, _, _ = server
    good = {"model": "switch", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    code, answer = post(url, json.dumps({**good, **change}).encode())
    assert (code, answer["error"]["param"]) == (status, param), answer
    assert proc.poll() is None and post(url, json.dumps(good).encode())[0] == 200


def test_malformed_json_and_a_wrong_key_are_refused(server):
    url, proc, _, lines = server
    code, answer = post(url, b'{"model": "switch", "messages": [')
    assert code == 400 and "not valid JSON" in answer["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="token ids must be in"):
        client(url).completions.create(model="switch", prompt=[1, 10**6], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    good = json.dumps({"model": "switch", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode()
    request = urllib.request.Request(url + "/chat/completions", data=good, method="POST")  # no key at all
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=600)
    assert refused.value.code == 401
    assert proc.poll() is None and [m.id for m in client(url).models.list()][0] == "switch"
    assert not any(KEY in line for line in lines)  # the key is never logged


def test_streamed_text_is_cut_before_a_stop_string_and_never_shows_its_start():
    """The pieces a stream sends add up to the final text; the start of a possible stop string is held back."""
    from midpo_cli.modeling.decoding import TextStream

    tokenizer = load_tokenizer("embedded:tiny-llama")
    ids = tokenizer("bake the bread. Then STOP here", add_special_tokens=False)["input_ids"]
    stream, pieces = TextStream(tokenizer, ["STOP"]), []
    for end in range(1, len(ids) + 1):
        pieces.append(stream.push(ids[:end]))
        assert "S" not in "".join(pieces)
        if stream.stopped:
            break
    assert stream.stopped and "".join(pieces) == stream.shown == "bake the bread. Then"
    plain, shown = TextStream(tokenizer), ""
    for end in range(1, len(ids) + 1):
        shown += plain.push(ids[:end])
    assert shown + plain.push(ids, final=True) == "bake the bread. Then STOP here" and not plain.stopped


def test_a_full_queue_is_429():
    """The queue's bound, on the engine itself (over HTTP a full queue needs a race to fill it)."""
    from midpo_cli.modeling.policy import load_policy
    from midpo_cli.serve.engine import Engine, Job, Limits
    from midpo_cli.serve.protocol import ApiError

    engine = Engine(load_policy("embedded:tiny-llama"), name="tiny", template="safe-rlhf", limits=Limits(max_queue=2))
    job = Job(ids=[5, 6], max_tokens=2, temperature=0, top_p=1, seed=0, safety_bias=None, gates=None, stops=[],
              emit=lambda kind, value: None)
    engine.submit(job)
    engine.submit(job)
    with pytest.raises(ApiError) as caught:
        engine.submit(job)
    assert caught.value.status == 429 and caught.value.code == "queue_full"


def test_sigterm_answers_what_is_in_and_exits_0(server):
    """Last in this module: it ends the server."""
    url, proc, _, lines = server
    api = client(url)
    with ThreadPoolExecutor(2) as pool:
        inflight = pool.submit(ask, api, "Tell me a long story about bread.", max_tokens=48)
        for _ in range(600):  # until the server holds the request
            with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=60) as health:
                status = json.loads(health.read())
            if status["queued"] or status["running"]:
                break
            time.sleep(0.05)
        assert status["queued"] or status["running"]
        proc.send_signal(signal.SIGTERM)
        answer = inflight.result(timeout=600)
    assert answer.usage.completion_tokens > 0
    assert proc.wait(timeout=600) == 0
    assert any("stopped after" in line for line in lines)
