"""Issue 16 "Hardening": one test (or more) per item; each fails on the code before the fix.

Most tests load no model; the checkpoint test trains a 200-parameter model, and the seed/adapter
test trains the embedded 1.9 M-parameter LLaMA for one step, twice.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import pytest

from midpo_cli.errors import InputError
from midpo_cli.manifest import read_manifest, write_manifest
from midpo_cli.pipeline import run as pipeline
from midpo_cli.pipeline.folders import PREVIOUS
from midpo_cli.pipeline.graph import expected_fingerprint, plan
from midpo_cli.recipe import RecipeError, load_recipe

sys.path.insert(0, str(Path(__file__).parent / "engine_scripts"))
REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, *sets: str):
    return load_recipe(None, [f"run_dir={tmp_path / 'run'}", *sets])


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------ item 1: move aside, never delete first

def _runner(content: str, *, fail: Exception | None = None, seen: dict | None = None):
    def run(ctx) -> None:
        if seen is not None and (ctx.folder / PREVIOUS / "model" / "w").exists():
            seen["previous"] = (ctx.folder / PREVIOUS / "model" / "w").read_text()
        (ctx.folder / "model").mkdir(exist_ok=True)
        (ctx.folder / "model" / "w").write_text(content)
        if fail is not None:
            raise fail
        record = ctx.record()
        record.outputs = {"model": ctx.rel(ctx.folder / "model")}
        write_manifest(ctx.folder, record, {"stage": ctx.stage})

    return lambda stage: run


def test_changed_stage_keeps_the_old_result_until_the_new_one_is_written(tmp_path, monkeypatch) -> None:
    old, new = _recipe(tmp_path), _recipe(tmp_path, "stages.sft.lr=1e-3")
    monkeypatch.setattr(pipeline, "runner", _runner("A"))
    pipeline.run_stage(old, "sft", resume=True)
    folder = tmp_path / "run" / "sft"
    finished = _tree(folder)

    seen: dict = {}
    monkeypatch.setattr(pipeline, "runner", _runner("B", fail=RuntimeError("boom"), seen=seen))
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run_stage(new, "sft", resume=True)
    assert seen["previous"] == "A"  # moved aside while the new run ran, not deleted
    assert _tree(folder) == finished  # a failed run with nothing to resume gives the old result back

    monkeypatch.setattr(pipeline, "runner", _runner("B"))
    pipeline.run_stage(new, "sft", resume=True)
    assert (folder / "model" / "w").read_text() == "B" and not (folder / PREVIOUS).exists()


def test_settings_changed_back_restore_the_previous_result_without_running(tmp_path, monkeypatch) -> None:
    from midpo_cli.errors import Interrupted

    old, new = _recipe(tmp_path), _recipe(tmp_path, "stages.sft.lr=1e-3")
    monkeypatch.setattr(pipeline, "runner", _runner("A"))
    pipeline.run_stage(old, "sft", resume=True)

    def interrupted(ctx) -> None:  # leaves a resumable checkpoint of the new settings
        (ctx.folder / "checkpoints").mkdir()
        (ctx.folder / "checkpoints" / "latest").write_text("step-1\n")
        raise Interrupted("stop")

    monkeypatch.setattr(pipeline, "runner", lambda stage: interrupted)
    with pytest.raises(Interrupted):
        pipeline.run_stage(new, "sft", resume=True)
    assert (tmp_path / "run" / "sft" / PREVIOUS / "model" / "w").read_text() == "A"
    assert plan(new, ["sft"])[0]["status"] == "will resume"

    monkeypatch.setattr(pipeline, "runner", lambda stage: pytest.fail)  # must not run
    manifest = pipeline.run_stage(old, "sft", resume=True)
    assert manifest["fingerprint"] == expected_fingerprint(old, "sft", {})
    assert (tmp_path / "run" / "sft" / "model" / "w").read_text() == "A"


# ------------------------------------------------------------------ item 3: no unpickling on resume

class _Payload:
    """Unpickling this opens (creates) a marker file: the side effect that must never happen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_a_checkpoint_is_never_executed(tmp_path, capsys) -> None:
    import torch
    from tiny import collate, loss_fn, make_data, make_model

    from midpo_cli.engine.loop import train
    from midpo_cli.engine.settings import EngineSettings

    def run(steps: int):
        settings = EngineSettings(max_steps=steps, batch_size=8, checkpoint={"every_steps": 1, "keep": 3},
                                  eval_each_epoch=False, log_every=100)
        return train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn,
                     settings=settings, out_dir=tmp_path, stage_name="tiny")

    run(3)
    marker = tmp_path / "PWNED"
    planted = tmp_path / "checkpoints" / "step-3" / "mp_rank_00_model_states.pt"
    assert planted.is_file()
    torch.save({"module": _Payload(str(marker))}, planted, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    truncated = tmp_path / "checkpoints" / "step-2" / "mp_rank_00_model_states.pt"
    truncated.write_bytes(truncated.read_bytes()[:100])  # and the one before is cut short
    capsys.readouterr()
    result = run(4)
    err = capsys.readouterr().err.replace("\n", "")
    assert not marker.exists()
    assert result.resumed_from_step == 1  # step-3 refused, step-2 truncated: back to step-1
    assert str(planted) in err and str(truncated) in err


def test_checkpoint_state_is_json_not_pickle(tmp_path) -> None:
    from tiny import collate, loss_fn, make_data, make_model

    from midpo_cli.engine.loop import train
    from midpo_cli.engine.settings import EngineSettings

    train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn,
          settings=EngineSettings(max_steps=1, batch_size=8, eval_each_epoch=False), out_dir=tmp_path)
    state = json.loads((tmp_path / "checkpoints" / "step-1" / "midpo-state.json").read_text())
    assert state["step"] == 1 and set(state["rng"]) >= {"python", "numpy", "torch"}


# ------------------------------------------------------------------ item 4: standalone commands take the lock

def test_standalone_stage_command_refuses_a_held_lock(tmp_path, monkeypatch) -> None:
    from midpo_cli.commands.stage_cmds import execute

    recipe = _recipe(tmp_path)
    called = []
    monkeypatch.setattr(pipeline, "runner", lambda stage: called.append)
    with pipeline.run_lock(recipe.run_dir, command="pipeline run"):
        with pytest.raises(InputError, match=r"in use by `pipeline run`"):
            execute("sft", recipe, resume=True)
    assert called == [] and not (tmp_path / "run" / "sft").exists()


# ------------------------------------------------------------------ items 7, 9, 12: seeded LoRA, adapter base

@pytest.fixture(scope="module")
def expert_runs(tmp_path_factory) -> dict[str, Path]:
    """The same helpfulness expert (plain DPO, 1 step) trained twice in one process, on a saved tiny base."""
    from midpo_cli.assets import resolve_embedded
    from midpo_cli.commands.stage_cmds import execute
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("experts")
    pairs = root / "pairs.jsonl"
    lines = resolve_embedded("embedded:toy-safety/train").read_text().splitlines()[:16]
    pairs.write_text("\n".join(lines) + "\n")
    out = {}
    for name in ("a", "b"):
        base = root / name / "base"
        load_causal_lm("embedded:tiny-llama", seed=3).save_pretrained(base)
        load_tokenizer("embedded:tiny-llama").save_pretrained(base)
        sets = [f"run_dir={root / name}", f"stages.sft.use={base}", f"data.train={pairs}", "data.eval=null",
                "data.max_length=64", "train.max_steps=1", "train.batch_size=2", "stages.helpfulness_expert.loss=dpo",
                "stages.helpfulness_expert.lora.r=4", "stages.helpfulness_expert.lora.target_modules=[down_proj]"]
        recipe = load_recipe(None, sets)
        execute("sft", recipe, resume=True)
        execute("helpfulness_expert", recipe, resume=True)
        out[name] = root / name
    return out


def test_same_seed_gives_identical_adapters(expert_runs) -> None:
    import torch
    from safetensors.torch import load_file

    a, b = (load_file(str(expert_runs[k] / "helpfulness_expert" / "adapter" / "adapter_model.safetensors"))
            for k in ("a", "b"))
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_base_resolves_from_a_copied_run_and_refuses_another_base(expert_runs, tmp_path) -> None:
    from midpo_cli.modeling.loading import load_causal_lm
    from midpo_cli.modeling.lora import adapter_base, check_adapter_base

    copy = tmp_path / "copied"
    shutil.copytree(expert_runs["a"], copy)
    adapter = copy / "helpfulness_expert" / "adapter"
    meta = json.loads((adapter / "midpo.json").read_text())
    assert meta["base_model_relative"] and meta["base_fingerprint"]
    assert Path(adapter_base(adapter)) == (copy / "base").resolve()  # the copy's own base, not the original's
    check_adapter_base(adapter, load_causal_lm(adapter_base(adapter)))
    with pytest.raises(InputError, match="not the base this adapter was trained on"):
        check_adapter_base(adapter, load_causal_lm("embedded:tiny-llama", seed=4))  # same shape, other weights
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=768))
    with pytest.raises(InputError, match=r"down_proj is \(32, 64\) in the base model but the adapter expects"):
        check_adapter_base(adapter, other)


def test_manifests_record_the_stage_wall_time(expert_runs) -> None:
    assert read_manifest(expert_runs["a"] / "helpfulness_expert")["wall_s"] > 0.5


def test_a_score_model_is_refused_as_a_policy(tmp_path) -> None:
    from midpo_cli.assets import resolve_embedded
    from midpo_cli.modeling.loading import load_causal_lm

    folder = tmp_path / "rm"
    folder.mkdir()
    config = json.loads((resolve_embedded("embedded:tiny-llama") / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForScore"],
                                                    "score_type": "reward"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="is a score model"):
        load_causal_lm(str(folder))


# ------------------------------------------------------------------ item 8: markup in user text

def test_console_prints_user_text_literally(monkeypatch) -> None:
    from rich.console import Console

    from midpo_cli import console

    buffer = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=buffer, width=300))
    console.log("recipe x[/y].yaml column [/b]q")
    console.warn("gate sweep [[2,0]] and [g_safety, g_helpfulness]")
    console.error("bad [/config] path")
    text = buffer.getvalue()
    assert "x[/y].yaml column [/b]q" in text and "[[2,0]] and [g_safety, g_helpfulness]" in text
    assert "bad [/config] path" in text


# ------------------------------------------------------------------ item 10: broken files name themselves

def test_truncated_safetensors_is_an_input_error_naming_the_file(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    from midpo_cli.modeling.loading import load_safetensors
    from midpo_cli.modeling.lora import read_adapter

    path = tmp_path / "router.safetensors"
    save_file({"w": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match=r"router.safetensors: not a readable safetensors file"):
        load_safetensors(path)
    save_file({}, str(path))
    with pytest.raises(InputError, match="router.safetensors: holds no tensors"):
        load_safetensors(path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(InputError, match="adapter_model.safetensors"):
        read_adapter(adapter)


# ------------------------------------------------------------------ item 11: silent surprises

def test_set_with_a_mapping_merges_into_the_section(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  batch_size: 3\n")
    recipe = load_recipe(path, ["train={lr: 1e-3}"])
    assert recipe.train.batch_size == 3 and recipe.train.lr == 1e-3


def test_override_errors_blame_the_override_and_flags_name_themselves(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("run_dir: x\ntrain:\n  batch_size: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.nonexistent.deep=3", ("stages.rank.rule=foo", "--rule")])
    problems = sorted(info.value.problems)
    assert problems[0].startswith("--rule stages.rank.rule: must be one of")
    assert problems[1].startswith("--set train.nonexistent: unknown key")


def test_an_empty_recipe_file_is_refused_but_an_explicit_empty_mapping_is_not(tmp_path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(InputError, match=r"empty.yaml: the recipe is empty.*run_dir runs/midpo.*write `\{\}`"):
        load_recipe(empty)
    empty.write_text("{}\n")
    assert load_recipe(empty).run_dir == "runs/midpo"


def test_plan_says_will_run_for_a_checkpoint_of_other_settings(tmp_path) -> None:
    from midpo_cli.pipeline.run import make_context

    ctx = make_context(_recipe(tmp_path, "stages.sft.lr=1e-3"), "sft")
    (ctx.folder / "checkpoints").mkdir()
    (ctx.folder / "checkpoints" / "latest").write_text("step-1\n")
    assert plan(_recipe(tmp_path, "stages.sft.lr=1e-3"), ["sft"])[0]["status"] == "will resume"
    assert plan(_recipe(tmp_path, "stages.sft.lr=2e-3"), ["sft"])[0]["status"] == "will run"


def test_each_stage_is_fingerprinted_on_the_data_it_reads(tmp_path) -> None:
    a = _recipe(tmp_path)
    b = _recipe(tmp_path, "data.train=other.jsonl")
    c = _recipe(tmp_path, "data.sft=other-sft.jsonl")
    assert expected_fingerprint(a, "sft", {}) == expected_fingerprint(b, "sft", {})
    assert expected_fingerprint(a, "sft", {}) != expected_fingerprint(c, "sft", {})
    assert expected_fingerprint(a, "reward_model", {}) != expected_fingerprint(b, "reward_model", {})
    assert expected_fingerprint(a, "reward_model", {}) == expected_fingerprint(c, "reward_model", {})


# ------------------------------------------------------------------ item 12: small ones

def test_wall_s_counts_from_the_start_of_the_stage(tmp_path, monkeypatch) -> None:
    def slow(ctx) -> None:
        time.sleep(0.3)
        write_manifest(ctx.folder, ctx.record(), {})

    monkeypatch.setattr(pipeline, "runner", lambda stage: slow)
    assert pipeline.run_stage(_recipe(tmp_path), "sft", resume=True)["wall_s"] >= 0.3


def test_pipeline_finds_the_score_report(tmp_path) -> None:
    from midpo_cli.commands.pipeline_cmd import report_path

    (tmp_path / "score").mkdir()
    assert report_path(tmp_path) is None
    (tmp_path / "score" / "report.html").write_text("<html></html>")
    assert report_path(tmp_path) == tmp_path / "score" / "report.html"


def test_dpo_baseline_has_its_own_stage(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from midpo_cli.cli import app
    from midpo_cli.pipeline.graph import dependencies

    recipe = _recipe(tmp_path)
    assert recipe.stages.dpo_expert.loss == "dpo" and dependencies(recipe, "dpo_expert") == ("sft",)
    ran: list[str] = []

    def fake(stage):
        def run(ctx) -> None:
            ran.append(ctx.folder.name)
            write_manifest(ctx.folder, ctx.record(), {})

        return run

    monkeypatch.setattr(pipeline, "runner", fake)
    monkeypatch.setattr("midpo_cli.pipeline.preflight.check_architecture", lambda *a: None)  # no model here
    sft = tmp_path / "run" / "sft"
    sft.mkdir(parents=True)
    write_manifest(sft, _sft_record(recipe), {})
    result = CliRunner().invoke(app, ["train-expert", "--kind", "dpo", "--set", f"run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 0, result.output
    assert ran == ["dpo_expert"] and not (tmp_path / "run" / "helpfulness_expert").exists()


def _sft_record(recipe):
    from midpo_cli.manifest import StageRecord

    return StageRecord(stage="sft", fingerprint=expected_fingerprint(recipe, "sft", {}),
                       outputs={"model": "embedded:tiny-llama"})


def test_margins_score_the_answer_as_the_policy_sees_it() -> None:
    from midpo_cli.data.filters import Pair
    from midpo_cli.data.tokenize import encode_pairs
    from midpo_cli.modeling.loading import load_tokenizer
    from midpo_cli.stages.expert import seen_answer

    tok = load_tokenizer("embedded:tiny-llama")
    long = "I can help with that. " * 40
    pair = Pair(prompt="How do I bake bread?", chosen=long, rejected="No.", chosen_safe=True, rejected_safe=True,
                row=0, meta={})
    (feature,), _ = encode_pairs([pair], tok, "safe-rlhf", 48)
    cut = seen_answer(tok, feature, "chosen", long)
    assert 0 < len(cut) < len(long) and long.startswith(cut.strip()[:20])
    assert seen_answer(tok, feature, "rejected", "No.") == "No."


# ------------------------------------------------------------------ item 13: tensorboard

def test_tensorboard_without_the_package_is_a_recipe_error(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(RecipeError, match=r"logging.tensorboard: .*pip install 'midpo-cli\[tensorboard\]'"):
        load_recipe(None, ["logging.tensorboard=true"])


def test_the_test_extra_installs_what_the_tests_need() -> None:
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {e.split(">")[0].split("=")[0].split("[")[0] for e in extra}
    assert {"pytest", "pandas", "tensorboard", "pyarrow"} <= names
    pins = {line.split("==")[0] for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert names <= pins
