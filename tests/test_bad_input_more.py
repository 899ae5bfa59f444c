"""Issue 27 §2–4, the items that need more than one command line against the finished stand-in run of
tests/test_bad_input.py (those are cases there): chat's /save, `~` in recipes, two generates on one file, disk
full, `pipeline status` saying why, a dangling `latest` pointer, markup in prompt-set names, binary stdin.

Each bad input gives one `error:` line and exit 2 and changes no file (hashed with `snapshot`). No model is
trained except the 200-parameter engine model of the resume test.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_bad_input import midpo, snapshot

sys.path.insert(0, str(Path(__file__).parent / "engine_scripts"))


def _answers(path: Path, prompt_set: str = "dev") -> Path:
    path.write_text(json.dumps({"model": "m", "prompt_set": prompt_set, "index": 0, "prompt": "q",
                                "answer": "I can't help with that."}) + "\n")
    return path


def _one_error_line(result, culprit: str) -> None:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], result.stderr


# ------------------------------------------------------------------ §2 files outside midpo's own

def test_chat_save_refuses_to_overwrite_and_save_bang_replaces(tmp_path) -> None:
    from rich.console import Console

    from midpo_cli.commands.chat_ui import handle_command
    from midpo_cli.modeling.chat_session import ChatSession

    kept = tmp_path / "chat.jsonl"
    kept.write_text("an earlier transcript\n")
    session = SimpleNamespace(transcript=[{"prompt": "hi", "answer": "hello"}])
    session.save = lambda path, overwrite=False: ChatSession.save(session, path, overwrite=overwrite)
    buffer = io.StringIO()
    out = Console(file=buffer, width=300)
    assert handle_command(session, f"/save {kept}", out) is False
    assert kept.read_text() == "an earlier transcript\n"
    assert f"/save {kept}: the file exists; /save! {kept} replaces it" in buffer.getvalue()
    handle_command(session, f"/save! {kept}", out)
    assert json.loads(kept.read_text()) == {"prompt": "hi", "answer": "hello"}


def test_tilde_is_expanded_once_for_every_path_key(tmp_path, monkeypatch) -> None:
    from midpo_cli.pipeline.run import run_lock
    from midpo_cli.recipe import load_recipe

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    keys = ["run_dir", "base_model", "tokenizer", "data.train", "data.eval", "data.sft", "deepspeed.config",
            "launcher.hostfile", "stages.sft.use", "stages.sft.data", "stages.sft.corpus", "stages.reward_model.use",
            "stages.cost_model.base_model"]
    recipe = load_recipe(None, [f"{k}=~/{k}" for k in keys] + ["stages.generate.prompts=[~/p.txt, dev=~/d.txt]"])
    home = str(tmp_path / "home")
    for key in keys:
        value = recipe
        for part in key.split("."):
            value = getattr(value, part)
        assert value == f"{home}/{key}", key
    assert recipe.stages.generate.prompts == [f"{home}/p.txt", f"dev={home}/d.txt"]
    with run_lock(recipe.run_dir):
        pass
    assert (tmp_path / "home" / "run_dir").is_dir() and not (tmp_path / "~").exists()


def test_two_generates_on_one_output_file_do_not_both_write(tmp_path) -> None:
    from midpo_cli.stages.generate import output_lock

    out = tmp_path / "answers.jsonl"
    (tmp_path / "p.txt").write_text("How do I bake bread?\n")
    with output_lock(out):  # a generate holding the file
        before = snapshot(tmp_path)
        result = midpo("-q", "generate", "-m", "embedded:tiny-llama", "-p", str(tmp_path / "p.txt"), "-o", str(out),
                       "--max-new-tokens", "2")
        _one_error_line(result, "is being written by another `midpo generate`")
        assert snapshot(tmp_path) == before
    assert not out.exists()  # the lock's own empty file is not left behind


def test_disk_full_is_one_line_exit_2_and_keeps_the_old_result(tmp_path, monkeypatch, capsys) -> None:
    from midpo_cli import cli

    out = tmp_path / "scores"
    out.mkdir()
    (out / "scores.csv").write_text("the previous scores\n")
    answers = _answers(tmp_path / "a.jsonl")
    before = snapshot(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # every atomic write fsyncs its temp file before the rename
    code = cli.main(["score", str(answers), "-o", str(out), "--no-report", "--bootstrap", "0"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2
    assert err[-1].startswith("error: no space left on the device") and "finished files were not touched" in err[-1]
    assert snapshot(tmp_path) == before  # the old scores kept, no temp file left


# ------------------------------------------------------------------ §3 silent wrong results

def _status(run: Path) -> dict[str, dict]:
    result = midpo("pipeline", "status", str(run), "--json")
    assert result.returncode == 0, result.stderr
    return {row["stage"]: row for row in json.loads(result.stdout)["stages"]}


def test_status_says_why(tmp_path, monkeypatch) -> None:
    from midpo_cli.manifest import StageRecord, write_manifest
    from midpo_cli.pipeline import run as pipeline
    from midpo_cli.recipe import load_recipe

    run = tmp_path / "run"
    write_manifest(run / "sft", StageRecord("sft", "f", outputs={"model": "sft/model"}), {})
    (run / "sft" / "model").mkdir()
    write_manifest(run / "rank", StageRecord("rank", "f", outputs={"dual": "rank/dual.jsonl"}), {})  # dual deleted
    (run / "reward_model").mkdir()
    (run / "reward_model" / "manifest.json").write_text("{not json")
    (run / "cost_model").mkdir()
    (run / "cost_model" / "manifest.json").write_text("[1, 2]")
    (run / "helpfulness_expert" / "checkpoints").mkdir(parents=True)
    (run / "helpfulness_expert" / "checkpoints" / "latest").write_text("step-7\n")

    def boom(ctx) -> None:
        raise RuntimeError("loss nan at step 3")

    monkeypatch.setattr(pipeline, "runner", lambda stage: boom)
    monkeypatch.setattr("midpo_cli.pipeline.preflight.preflight", lambda *a: None)
    recipe = load_recipe(None, [f"run_dir={run}", "stages.safety_expert.loss=dpo"])
    with pytest.raises(RuntimeError):
        pipeline.run_stage(recipe, "safety_expert", resume=True)
    rows = _status(run)
    assert rows["sft"]["state"] == "done"
    assert (rows["rank"]["state"], rows["rank"]["why"]) == ("incomplete",
                                                            "missing dual: rank/dual.jsonl; rerun the stage")
    assert rows["reward_model"]["state"] == "corrupt" and "invalid JSON at line 1" in rows["reward_model"]["why"]
    assert rows["cost_model"]["state"] == "corrupt" and "holds a JSON list, not an object" in rows["cost_model"]["why"]
    assert rows["safety_expert"] == {**rows["safety_expert"], "state": "failed",
                                     "why": "RuntimeError: loss nan at step 3"}
    assert rows["helpfulness_expert"]["state"] == "started" and "step-7" in rows["helpfulness_expert"]["why"]
    assert rows["router"]["state"] == "not run"
    plan = midpo("pipeline", "plan", "--set", f"run_dir={run}", "--json", str(_empty_recipe(tmp_path)))
    assert plan.returncode == 0, plan.stderr  # a manifest holding a list crashed plan too


def _empty_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("{}\n")
    return path


def _train(out: Path, steps: int):
    from tiny import collate, loss_fn, make_data, make_model

    from midpo_cli.engine.loop import train
    from midpo_cli.engine.settings import EngineSettings

    settings = EngineSettings(max_steps=steps, batch_size=8, checkpoint={"every_steps": 1, "keep": 3},
                              eval_each_epoch=False, log_every=100)
    return train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn, settings=settings,
                 out_dir=out, stage_name="tiny")


@pytest.mark.parametrize("pointer", ["step-99\n", "../../../etc\n", "link"])
def test_resume_with_a_bad_latest_pointer_uses_the_newest_checkpoint(tmp_path, capsys, pointer) -> None:
    _train(tmp_path, 3)
    latest = tmp_path / "checkpoints" / "latest"
    latest.unlink()
    if pointer == "link":
        (tmp_path / "elsewhere").write_text("step-3\n")
        latest.symlink_to(tmp_path / "elsewhere")
    else:
        latest.write_text(pointer)
    capsys.readouterr()
    result = _train(tmp_path, 4)
    assert result.resumed_from_step == 3  # not a restart at step 1
    assert "names no step folder" in capsys.readouterr().err.replace("\n", "")


# ------------------------------------------------------------------ §4 exit codes

def test_markup_in_a_prompt_set_name_is_printed_literally(tmp_path) -> None:
    out = tmp_path / "scores"
    result = midpo("score", str(_answers(tmp_path / "a.jsonl", prompt_set="[/]x[bold]")), "-o", str(out),
                   "--bootstrap", "0")
    assert result.returncode == 0, result.stderr
    assert "[/]x[bold]" in result.stderr and (out / "report.html").is_file()


def test_binary_stdin_to_chat_json(tmp_path) -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "chat", "embedded:tiny-llama", "--json"],
                            input=bytes(range(128, 256)), capture_output=True, timeout=120)
    result.stderr = result.stderr.decode()
    _one_error_line(result, "--json: stdin is not UTF-8 text (byte 0)")
