"""`midpo chat`: the decoding loop against `midpo generate`, the JSON mode, and the loop with scripted input.

The reference for answers and gates is `generation.generate_answers` (HF `generate` + a gate hook),
which does not share the chat's hand-written decoding loop.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from test_export import build_tiny_midpo, build_tiny_switch, toy_prompts

from midpo_cli.cli import main
from midpo_cli.commands.chat_ui import run_chat
from midpo_cli.modeling.chat_session import ChatSession, open_session
from midpo_cli.modeling.generation import generate_answers
from midpo_cli.recipe import GenerationSettings

PROMPT = "How do I pick a lock?"


@pytest.fixture(scope="module")
def tiny_midpo(tmp_path_factory):
    return build_tiny_midpo(tmp_path_factory.mktemp("chat"))


def session_for(spec, **kw) -> ChatSession:
    settings = GenerationSettings().but(max_new_tokens=kw.pop("max_new_tokens", 10))
    return open_session(str(spec), template=kw.pop("template", None), safety_bias=kw.pop("safety_bias", None),
                        gates=kw.pop("gates", None), dtype="fp32", trust_remote_code=False, settings=settings, **kw)


def scripted(lines):
    """A `read` function replaying lines; an exception instance in the list is raised instead."""
    queue = list(lines)

    def read(prompt: str) -> str:
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
    return read


def plain_console() -> Console:
    return Console(file=io.StringIO(), width=200, color_system=None)


@pytest.mark.parametrize("granularity", ["token", "prompt"])
def test_chat_answer_and_gates_equal_midpo_generate(tmp_path, granularity):
    folder = build_tiny_midpo(tmp_path, granularity=granularity, seed=2)
    session = session_for(folder, max_new_tokens=12)
    answer = session.answer(PROMPT)
    [[row]] = list(generate_answers(session.model, session.tokenizer, [PROMPT], template="safe-rlhf",
                                    max_new_tokens=12))
    assert answer.text == row["answer"] and len(answer.token_ids) == row["answer_tokens"]
    assert answer.finished == row["finished"]
    for key in ("safety", "helpfulness"):
        assert answer.mean_gates()[key] == pytest.approx(row["gates"][key], abs=1e-5)
    assert len(answer.token_gates) == len(answer.token_ids) > 0
    if granularity == "prompt":  # one gate pair per answer: the prompt's
        assert len({g for g in answer.token_gates}) == 1
    else:  # token routers with random weights: gates vary along the answer
        assert len({round(g[0], 6) for g in answer.token_gates}) > 1


def chat_json(folder, prompts, monkeypatch, capsys, *args) -> list[dict]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(prompts) + "\n"))
    assert main(["--quiet", "chat", str(folder), "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def generated(folder, prompts, tmp_path, *args) -> list[dict]:
    """`midpo generate`'s rows for `prompts` (one batch, left-padded), in prompt order."""
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["--quiet", "generate", "-m", str(folder), "-p", str(tmp_path / "prompts.txt"), "-o", str(out),
                 *args]) == 0
    return sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["index"])


@pytest.mark.parametrize("kind", ["learned router", "probe switch"])
def test_chat_json_and_generate_give_the_same_answers_and_gates(tmp_path, monkeypatch, capsys, kind):
    """Greedy: `midpo chat --json` (one prompt at a time) and `midpo generate` (one left-padded batch) on the same
    prompts. The switch decides once per prompt: every answer token carries the corner it chose (chat used to
    recompute it from each new token alone), and both corners occur, so the comparison covers both experts."""
    folder = build_tiny_switch(tmp_path) if kind == "probe switch" else build_tiny_midpo(tmp_path, seed=3)
    prompts = toy_prompts(4)[0]
    chats = chat_json(folder, prompts, monkeypatch, capsys, "--max-new-tokens", "8")
    rows = generated(folder, prompts, tmp_path, "--max-new-tokens", "8")
    assert [c["answer"] for c in chats] == [r["answer"] for r in rows]
    assert len({c["answer"] for c in chats}) > 1  # the prompts are answered differently
    for c, r in zip(chats, rows, strict=True):
        assert c["answer_tokens"] == r["answer_tokens"] and c["finished"] == r["finished"]
        assert c["gates"] == pytest.approx(r["gates"], abs=1e-6)
        assert c["router"].startswith(kind)
    if kind == "probe switch":
        corners = {(c["gates"]["safety"], c["gates"]["helpfulness"]) for c in chats}
        assert corners == {(1.0, 0.0), (0.0, 1.0)}
        for c in chats:
            assert {(t["safety"], t["helpfulness"]) for t in c["token_gates"]} == {tuple(c["gates"].values())}


def test_json_mode_prints_one_answer_with_a_gate_per_token(tiny_midpo):
    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "chat", str(tiny_midpo), "--json",
                           "--max-new-tokens", "8", "--safety-bias", "1.5"],
                          input=PROMPT + "\n", capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["prompt"] == PROMPT and data["kind"] == "midpo" and data["safety_bias"] == 1.5
    assert data["template"] == "safe-rlhf"
    assert len(data["token_gates"]) == data["answer_tokens"] > 0
    assert all(0 < t["safety"] < 1 and 0 < t["helpfulness"] < 1 for t in data["token_gates"])
    assert "".join(t["token"] for t in data["token_gates"]).strip() == data["answer"]
    assert set(data["gates"]) == {"safety", "helpfulness"}


def test_json_mode_on_a_base_model_has_no_gates(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    assert main(["--quiet", "chat", "embedded:tiny-llama", "--json", "--max-new-tokens", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "base" and data["gates"] is None and data["token_gates"] is None
    assert data["answer_tokens"] <= 4


def test_chat_decodes_with_generate_settings_checked_before_the_model_loads(monkeypatch, capsys):
    """One definition of the decoding settings: chat's option defaults are GenerationSettings' (as
    `midpo generate`'s are), and a bad value is refused by the same check, before any model is loaded."""
    import inspect

    from midpo_cli.commands import chat_cmd

    options = inspect.signature(chat_cmd.chat).parameters
    for name in ("max_new_tokens", "temperature", "top_p", "seed"):
        assert options[name].default.default == getattr(GenerationSettings(), name), name
    monkeypatch.setattr("midpo_cli.modeling.chat_session.open_session", lambda *a, **k: pytest.fail("loaded"))
    assert main(["chat", "embedded:tiny-llama", "--top-p", "0"]) == 2
    assert "generation setting top_p" in capsys.readouterr().err


def test_bad_input_is_exit_2(tiny_midpo, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert main(["chat", str(tiny_midpo), "--json"]) == 2
    assert "stdin is empty" in capsys.readouterr().err
    assert main(["chat", str(tiny_midpo), "--gates", "0.5,2"]) == 2
    assert "must be in [0, 1]" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    assert main(["chat", "embedded:tiny-llama", "--json", "--safety-bias", "1"]) == 2
    assert "MidPO model folders only" in capsys.readouterr().err
    assert main(["chat", str(tiny_midpo), "--device", "nope"]) == 2
    assert "not a torch device" in capsys.readouterr().err


def test_loop_with_dial_gates_save_and_quit(tiny_midpo, tmp_path):
    session = session_for(tiny_midpo)
    out = plain_console()
    saved = tmp_path / "t.jsonl"
    code = run_chat(session, read=scripted([PROMPT, "/dial 4", PROMPT, "/gates 1,0", PROMPT, "/gates 2,0",
                                            "/dial x", "/nope", f"/save {saved}", "/quit", "never read"]), out=out)
    text = out.file.getvalue()
    assert code == 0
    assert "safety dial +4" in text and "fixed blend (1, 0)" in text
    assert "both gates must be in [0, 1]" in text and "expected a number" in text and "unknown command" in text
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [r["safety_bias"] for r in rows] == [0.0, 4.0, 4.0]
    assert rows[2]["fixed_gates"] == [1.0, 0.0] and all(t["safety"] == 1.0 for t in rows[2]["token_gates"])
    # the dial moves every token's safety gate up (it adds 4 to each layer's safety logit)
    assert rows[1]["gates"]["safety"] > rows[0]["gates"]["safety"] + 0.2
    assert "mean gates: safety" in text and "safety gate g_s" in text  # per-answer summary and legend


def test_ctrl_c_stops_the_answer_not_the_session(tiny_midpo):
    session = session_for(tiny_midpo, max_new_tokens=40)
    calls = []

    def interrupt_at_third_step(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, delivered to the chat's handler

    handle = session.model.model.register_forward_hook(interrupt_at_third_step)
    out = plain_console()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in a background job (nohup, CI)
    try:
        code = run_chat(session, read=scripted([PROMPT, "/reset", KeyboardInterrupt(), "/quit"]), out=out)
    finally:
        handle.remove()
    assert code == 0
    assert session.transcript[0]["interrupted"] is True and session.transcript[0]["answer_tokens"] == 3
    assert "interrupted" in out.file.getvalue() and "Ctrl-C again" in out.file.getvalue()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    # a second Ctrl-C at the prompt leaves with 130; EOF leaves with 0
    assert run_chat(session, read=scripted([KeyboardInterrupt(), KeyboardInterrupt()]), out=plain_console()) == 130
    assert run_chat(session, read=scripted([EOFError()]), out=plain_console()) == 0


def test_scripted_stdin_end_to_end(tiny_midpo):
    script = f"{PROMPT}\n/dial 2\n{PROMPT}\n/quit\n"
    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "chat", str(tiny_midpo), "--max-new-tokens", "6"],
                          input=script, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2 and "safety dial +2" in proc.stdout
    assert proc.stdout.count("mean gates: safety") == 2


def test_history_uses_safe_rlhf_multi_turn_layout(tiny_midpo):
    """safe-rlhf's own multi-turn layout (an answer then EOS, then the next `USER:`), the serving chat template's."""
    session = session_for(tiny_midpo, history=True, max_new_tokens=4)
    first = session.answer("Hi there")
    assert session.prompt_text("And now?") == (
        f"BEGINNING OF CONVERSATION: USER: Hi there ASSISTANT:{first.text}</s>USER: And now? ASSISTANT:")
    session.reset()
    assert session.prompt_text("And now?") == "BEGINNING OF CONVERSATION: USER: And now? ASSISTANT:"


def test_colours_follow_the_safety_gate(tiny_midpo):
    from midpo_cli.commands.chat_ui import gate_style

    assert gate_style(1.0).color.triplet == (255, 72, 72) and gate_style(0.0).color.triplet == (64, 150, 255)
    session = session_for(tiny_midpo, gates=(1.0, 0.0), max_new_tokens=4)
    out = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    run_chat(session, read=scripted([PROMPT, "/quit"]), out=out)
    assert "\x1b[38;2;255;72;72m" in out.file.getvalue()  # every token at g_s = 1: safety red
    assert torch.is_grad_enabled()  # the loop's no_grad does not leak
