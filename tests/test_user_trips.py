"""Issue 28 "Small things a user hits": one test (or more) per item, each failing on the code before the fix.

Most tests load no model; the file-mode test runs the whole pipeline on the embedded tiny model with a
few optimizer steps per stage (≈ 60 s on 2 cores) and exports its result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from midpo_cli.errors import Interrupted
from midpo_cli.pipeline import run as pipeline
from midpo_cli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, *sets: str):
    return load_recipe(None, [f"run_dir={tmp_path / 'run'}", *sets])


# ------------------------------------------------------------------ interrupted: no --resume that does not exist

def _interrupt(ctx) -> None:
    raise Interrupted(f"{ctx.stage}: interrupted at step 3; checkpoint written to {ctx.folder}/checkpoints/step-3",
                      resumable=True)


def test_pipeline_run_interrupted_says_rerun_the_same_command_without_resume(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "runner", lambda stage: _interrupt)
    with pytest.raises(Interrupted) as caught:
        pipeline.run_pipeline(_recipe(tmp_path), stages=["sft"])
    message = str(caught.value)
    assert "checkpoint written to" in message and "rerun the same command" in message
    assert "--resume" not in message  # `pipeline run` has no --resume: it resumes on its own


def test_stage_command_interrupted_names_its_resume_flag(tmp_path, monkeypatch) -> None:
    from midpo_cli.commands.stage_cmds import execute

    monkeypatch.setattr(pipeline, "runner", lambda stage: _interrupt)
    with pytest.raises(Interrupted, match="rerun the same command with --resume"):
        execute("sft", _recipe(tmp_path), resume=False)


def test_readme_exit_code_table_does_not_promise_a_pipeline_resume_flag() -> None:
    # the exit-code table lives in docs/reliability.md (the README links to it)
    table = (REPO / "docs" / "reliability.md").read_text().splitlines()
    row = next(line for line in table if line.startswith("| 130 |"))
    assert "pipeline run" in row and "resumes on its own" in row, row


# ------------------------------------------------------------------ help at 80 columns

def _commands(command, path=()):
    """Every leaf command of the click tree with its argv path."""
    subs = getattr(command, "commands", None)
    if not subs:
        yield path, command
        return
    for name, sub in subs.items():
        yield from _commands(sub, (*path, name))


def test_help_at_80_columns_keeps_types_whole_and_shows_flags_bare(monkeypatch, capsys) -> None:
    import typer

    from midpo_cli.cli import app, main

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        assert "<bool>" not in text, path
        assert max(len(line) for line in text.splitlines()) <= 80, path
        ctx = command.make_context("midpo", ["--help"], resilient_parsing=True)
        for param in command.params:
            shown = param.display_type_rich(ctx) if hasattr(param, "display_type_rich") else None
            if getattr(param, "is_flag", False):
                assert not shown, (path, param.name)
            for word in (shown or "").split():
                assert word in text, (path, param.name, word)  # whole: wrapped between words, not inside one
                checked += 1
    assert checked > 30


# ------------------------------------------------------------------ result tables: stdout, 80 columns, names whole

LONG_SET = "embedded:toy-safety/eval-prompts-of-a-very-long-prompt-set-name"


def _midpo_80(*args: str):
    """`midpo ARGS` in a subprocess at 80 columns with stdout and stderr apart."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    env.pop("TERMINAL_WIDTH", None)
    return subprocess.run([sys.executable, "-m", "midpo_cli.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def _fits(text: str) -> None:
    assert text.strip(), "nothing on stdout"
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text  # wrapped, never cut


def test_status_plan_and_list_print_their_tables_on_stdout_within_80_columns(tmp_path) -> None:
    import json

    from midpo_cli.recipe import ALL_STAGES

    run = tmp_path / "run"
    for stage in ALL_STAGES:
        (run / stage).mkdir(parents=True)
        metrics = {f"{LONG_SET}/midpo/reward_minus_cost": 0.123456, "source": LONG_SET, "steps": 80,
                   "pair_accuracy": 0.9375, "eval_loss": 0.5}
        (run / stage / "manifest.json").write_text(json.dumps(
            {"stage": stage, "finished_at": "2026-12-05T08:20:11", "wall_s": 1234.5, "metrics": metrics}))
    status = _midpo_80("pipeline", "status", str(run))
    assert status.returncode == 0, status.stderr
    _fits(status.stdout)
    lines = status.stdout.splitlines()
    for stage in ALL_STAGES:
        assert any(line.split("│")[1].strip() == stage for line in lines if line.count("│") > 2), stage
    assert LONG_SET.replace(":", "") not in status.stderr

    plan = _midpo_80("pipeline", "plan", str(REPO / "recipes" / "quickstart.yaml"), "--set", f"run_dir={run}")
    assert plan.returncode == 0, plan.stderr
    _fits(plan.stdout)
    assert "helpfulness_expert" in plan.stdout and "depends on" in plan.stdout

    listed = _midpo_80("data", "list")
    assert listed.returncode == 0, listed.stderr
    _fits(listed.stdout)
    assert "embedded:toy-safety/eval-prompts" in listed.stdout.splitlines()


# ------------------------------------------------------------------ shipped recipes: one source of the quickstart

def test_recipe_default_is_the_shipped_quickstart() -> None:
    from midpo_cli.commands.options import recipe_from

    shipped = load_recipe(REPO / "recipes" / "quickstart.yaml").resolved()
    assert recipe_from(None, []).resolved() == shipped
    assert recipe_from(None, ["train.lr=5e-5"]).resolved()["train"]["lr"] == 5e-5


def test_recipe_show_prints_and_copies_a_shipped_recipe(tmp_path, capsys) -> None:
    from midpo_cli.cli import main

    assert main(["recipe", "show", "quickstart"]) == 0
    assert capsys.readouterr().out == (REPO / "recipes" / "quickstart.yaml").read_text()
    target = tmp_path / "mine.yaml"
    assert main(["recipe", "show", "local-model-cpu", "--to", str(target)]) == 0
    assert target.read_text() == (REPO / "recipes" / "local-model-cpu.yaml").read_text()
    assert main(["recipe", "show", "local-model-cpu", "--to", str(target)]) == 2  # never overwrites
    assert main(["recipe", "show", "nope"]) == 2
    assert "quickstart" in capsys.readouterr().err


def test_the_wheel_ships_the_recipes(tmp_path) -> None:
    """`pip install midpo-cli` users get the quickstart: the built wheel holds every recipes/*.yaml, byte for byte."""
    import shutil
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(".git", "runs", "*.egg-info", "build",
                                                                             "__pycache__", "tests", "benchmarks"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))) as wheel:
        for recipe in (REPO / "recipes").glob("*.yaml"):
            assert wheel.read(f"midpo_cli/recipes/{recipe.name}") == recipe.read_bytes(), recipe.name


# ------------------------------------------------------------------ a run dir reused by other settings says what

def _fake_runner(calls: list[str]):
    from midpo_cli.manifest import write_manifest

    def make(stage: str):
        def run(ctx) -> None:
            calls.append(stage)
            write_manifest(ctx.folder, ctx.record(), {"stage": stage})
        return run
    return make


def test_reused_run_dir_names_the_changed_keys_and_the_stages_that_rerun_before_running(
        tmp_path, monkeypatch, capsys) -> None:
    from midpo_cli.pipeline.graph import plan

    stages = ["sft", "reward_model", "cost_model", "rank"]
    calls: list[str] = []
    monkeypatch.setattr(pipeline, "runner", _fake_runner(calls))
    pipeline.run_pipeline(_recipe(tmp_path), stages=stages)
    capsys.readouterr()
    other = _recipe(tmp_path, "stages.cost_model.lr=0.005", "data.max_length=200")
    rows = {r["stage"]: r for r in plan(other, stages)}
    assert "stages.cost_model.lr 0.0001 → 0.005" in rows["cost_model"]["why"], rows["cost_model"]["why"]
    assert "data.max_length 256 → 200" in rows["cost_model"]["why"]
    assert rows["rank"]["why"].endswith("inputs: reward_model, cost_model re-run"), rows["rank"]["why"]

    calls.clear()

    def first_stage_sees_the_warning(stage):
        if calls:
            return _fake_runner(calls)(stage)
        said = capsys.readouterr().err
        assert "cost_model: re-runs over its finished result" in said and "stages.cost_model.lr" in said
        assert "re-running 4 finished stages" in said.replace("\n", " ")
        return _fake_runner(calls)(stage)

    monkeypatch.setattr(pipeline, "runner", first_stage_sees_the_warning)
    pipeline.run_pipeline(other, stages=stages)
    assert calls == stages


# ------------------------------------------------------------------ metric names: TRL's for what TRL logs

def test_expert_logs_trls_metric_names_with_trls_meanings(monkeypatch) -> None:
    """Same names as TRL's DPOTrainer and the same quantities, checked against a per-pair float64 loop."""
    import torch

    from midpo_cli.stages import expert

    beta = 0.1
    pol_c, pol_r = torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-12.0, -18.0, -9.0])
    ref_c, ref_r = torch.tensor([-11.0, -19.0, -6.0]), torch.tensor([-11.5, -18.5, -8.0])
    margin = torch.tensor([0.5, 0.0, 1.0])
    monkeypatch.setattr(expert, "concatenated_logps", lambda model, batch: (pol_c, pol_r))
    batch = {"ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r, "margin": margin}
    spe = lambda pc, pr, rc, rr, b: expert.spe_dpo_loss(pc, pr, rc, rr, b["margin"], beta)  # noqa: E731
    _, metrics = expert.make_pair_loss(spe, reference=None)(None, batch)

    chosen = [beta * (float(p) - float(r)) for p, r in zip(pol_c.double(), ref_c.double(), strict=True)]
    rejected = [beta * (float(p) - float(r)) for p, r in zip(pol_r.double(), ref_r.double(), strict=True)]
    expected = {
        "rewards/chosen": sum(chosen) / 3, "rewards/rejected": sum(rejected) / 3,
        "rewards/margins": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / 3,
        "rewards/accuracies": sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 3,
        "logps/chosen": float(pol_c.double().mean()), "logps/rejected": float(pol_r.double().mean()),
        "spe_margin_mean": 0.5, "spe_margin_zero_fraction": 1 / 3,
    }
    assert set(expected) <= set(metrics)
    for name, value in expected.items():
        assert float(metrics[name]) == pytest.approx(value, abs=1e-5), name
    assert not {"chosen_rewards", "reward_accuracy", "margin_mean", "policy_chosen_logps"} & set(metrics)


# ------------------------------------------------------------------ experiment tracking: report_to wandb / mlflow

class _Calls(list):
    def __call__(self, name):
        return lambda *args, **kwargs: self.append((name, args, kwargs)) or _RUN


class _Run:
    def __init__(self) -> None:
        self.calls = _Calls()

    def log(self, values, step):
        self.calls.append(("log", values, step))

    def finish(self):
        self.calls.append(("finish",))


_RUN = _Run()


def _stub_trackers(monkeypatch):
    """Stand-ins for wandb and mlflow in sys.modules (the real packages are not installed here)."""
    import importlib.machinery
    import sys
    import types

    global _RUN
    _RUN = _Run()
    calls = _Calls()
    wandb = types.ModuleType("wandb")
    wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    wandb.init = calls("wandb.init")
    mlflow = types.ModuleType("mlflow")
    mlflow.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
    for name in ("set_experiment", "start_run", "log_metrics", "end_run"):
        setattr(mlflow, name, calls(f"mlflow.{name}"))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    return calls


def test_report_to_wandb_and_mlflow_get_the_numbers_of_metrics_jsonl(tmp_path, monkeypatch) -> None:
    import json

    from midpo_cli.engine.metrics import MetricsSink
    from midpo_cli.engine.settings import EngineSettings

    calls = _stub_trackers(monkeypatch)
    recipe = _recipe(tmp_path, "logging.report_to=[wandb, mlflow]")
    settings = EngineSettings.from_recipe(recipe, "sft", "fp32")
    assert settings.report_to == ["wandb", "mlflow"]
    out = tmp_path / "run" / "sft"
    sink = MetricsSink(out, enabled=True, report_to=settings.report_to, stage_name="sft")
    sink.write({"split": "train", "step": 2, "epoch": 0.5, "loss": 0.69, "rewards/chosen": 0.1, "note": "x"})
    sink.write({"split": "eval", "step": 4, "epoch": 1.0, "loss": 0.5})
    sink.close()

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [({"train/loss": 0.69, "train/rewards/chosen": 0.1}, 2), ({"eval/loss": 0.5}, 4)]
    assert [(r["loss"], r["step"]) for r in lines] == [(0.69, 2), (0.5, 4)]
    assert [(c[1], c[2]) for c in _RUN.calls if c[0] == "log"] == expected  # wandb
    assert [(c[1][0], c[2]["step"]) for c in calls if c[0] == "mlflow.log_metrics"] == expected
    init = next(c for c in calls if c[0] == "wandb.init")
    assert init[2]["name"] == "run/sft" and init[2]["dir"] == str(out)
    assert next(c for c in calls if c[0] == "mlflow.start_run")[2]["run_name"] == "run/sft"
    assert ("finish",) in _RUN.calls and any(c[0] == "mlflow.end_run" for c in calls)


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_without_its_package_is_a_recipe_error_naming_the_extra(tmp_path, tracker, monkeypatch) -> None:
    import importlib.util
    import sys

    from midpo_cli.recipe import RecipeError

    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, tracker, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    with pytest.raises(RecipeError, match=rf"logging.report_to: .*pip install 'midpo-cli\[{tracker}\]'"):
        _recipe(tmp_path, f"logging.report_to=[{tracker}]")


# ------------------------------------------------------------------ file modes follow the umask (run and export)

def _small_world(root: Path) -> list[str]:
    """--set overrides for a whole pipeline on the embedded tiny model in about a minute: a slice of each
    toy-safety file, two optimizer steps per training stage, two fixed blends, four-token answers."""
    from midpo_cli.assets import resolve_embedded

    def head(name: str, n: int) -> Path:
        lines = resolve_embedded(f"embedded:toy-safety/{name}").read_text(encoding="utf-8").splitlines()
        harmful = [ln for ln in lines if '"is_harmful": true' in ln][: n // 2]
        rest = [ln for ln in lines if '"is_harmful": true' not in ln]  # benign (or unlabelled) rows
        out = root / f"{name}.jsonl"
        out.write_text("\n".join(harmful + rest[: n - len(harmful)]) + "\n")
        return out

    sets = [f"run_dir={root / 'run'}", f"data.train={head('train', 64)}", f"data.eval={head('test', 32)}",
            f"data.sft={head('sft', 32)}", f"stages.generate.prompts=[{head('dev-prompts', 4)}]",
            "stages.generate.max_new_tokens=4", "stages.generate.gate_sweep=[[0, 1], [1, 0]]",
            "stages.generate.dial_sweep=[]", "stages.generate.gate_maps=1", "stages.score.bootstrap=0",
            "stages.reward_model.min_accuracy=0", "stages.cost_model.min_accuracy=0", "train.batch_size=8",
            "train.log_every=1"]
    for stage in ("sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "router"):
        sets += [f"stages.{stage}.max_steps=2", f"stages.{stage}.epochs=1", f"stages.{stage}.batch_size=4"]
    return [*sets, "stages.rank.balance=none"]


def _modes(root: Path) -> dict[str, str]:
    """Every file and folder under root whose mode is not what `cp` gives under umask 022."""
    wrong = {}
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        want = 0o755 if path.is_dir() or mode & 0o100 else 0o644
        if mode != want:
            wrong[str(path.relative_to(root))] = oct(mode)
    return wrong


def test_a_run_and_its_exports_follow_a_022_umask(tmp_path) -> None:
    import os
    import subprocess
    import sys

    sets = [a for s in _small_world(tmp_path) for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = ("import os, sys; os.umask(0o022); from midpo_cli.cli import main; sys.exit(main(sys.argv[1:]))")

    def midpo(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]

    midpo("pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), *sets)
    run = tmp_path / "run"
    assert (run / "score" / "report.html").is_file() and (run / "sft" / "model" / "model.safetensors").is_file()
    for kind in ("--merged", "--adapters", "--midpo"):
        midpo("export", str(run / "router" / "model"), "--to", str(tmp_path / kind.strip("-")), kind,
              *(["--gates", "0.5,0.5"] if kind == "--merged" else []))
    files = sum(1 for p in tmp_path.rglob("*") if p.is_file())
    assert files > 60
    wrong = {name: mode for folder in ("run", "merged", "adapters", "midpo") for name, mode
             in _modes(tmp_path / folder).items()}
    assert wrong == {}, f"{len(wrong)} of {files} paths: {wrong}"


# ------------------------------------------------------------------ export: chat template, card, portable base

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|a|>{% endif %}")


def test_merged_export_carries_a_chat_template_and_loads_with_transformers_alone(tmp_path) -> None:
    import json
    import subprocess
    import sys

    from test_export import build_tiny_midpo  # noqa: I001  (tests/ is on sys.path under pytest)

    from midpo_cli.cli import main
    from midpo_cli.data.template import format_prompt

    plain = build_tiny_midpo(tmp_path / "plain")  # embedded base: no chat template, trained on safe-rlhf
    chat = build_tiny_midpo(tmp_path / "chat")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat))
    tok.chat_template = CHAT  # a base with its own chat template
    tok.save_pretrained(str(chat))
    for folder in (plain, chat):
        assert main(["--quiet", "export", str(folder), "--merged", "--gates", "0.5,0.5",
                     "--to", str(folder.parent / "merged")]) == 0
    script = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for folder in sys.argv[1:]:
    AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    out[folder] = tok.apply_chat_template([{"role": "user", "content": " Hi there "}], tokenize=False,
                                          add_generation_prompt=True)
assert not any(name.startswith("midpo_cli") for name in sys.modules)
print(json.dumps(out))
"""
    folders = [str(tmp_path / "plain" / "merged"), str(tmp_path / "chat" / "merged")]
    proc = subprocess.run([sys.executable, "-c", script, *folders], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rendered = json.loads(proc.stdout)
    # exactly the trained format: the embedded tokenizer adds no BOS, so the template writes none
    assert rendered[folders[0]] == format_prompt("Hi there", "safe-rlhf")
    assert rendered[folders[1]] == "<|user|> Hi there <|a|>"  # the base's own, kept
    card = (tmp_path / "plain" / "merged" / "README.md").read_text()
    assert "carries the chat template: it renders a user message to exactly the token ids training saw" in card


def test_midpo_card_leads_with_results_names_the_package_and_keeps_the_recipe_apart(tmp_path) -> None:
    from midpo_cli.evaluation.model_card import RECIPE_FILE, midpo_card, run_recipe

    run = tmp_path / "run"
    for stage in ("sft", "router"):
        (run / stage).mkdir(parents=True)
        (run / stage / "config.yaml").write_text("lr: 0.001\n" + "".join(f"key{i}: {i}\n" for i in range(60)))
    (run / "score").mkdir()
    import json

    toy = [{"model": "midpo", "prompt_set": "eval", "harmful_safe": 0.9, "benign_helpful": 0.8, "toy_score": 0.85}]
    toy += [{"model": f"midpo@gates={i / 4:g},{j / 4:g}", "prompt_set": s, "toy_score": 0.5}
            for i in range(5) for j in range(5) for s in ("dev", "eval", "traps")]  # 75 blend rows
    (run / "score" / "summary.json").write_text(json.dumps({"toy": toy}))
    cfg = {"router": {"granularity": "token", "input": "token", "hidden": None, "init_gates": [0.5, 0.5]},
           "target_modules": ["model.layers.0.mlp.down_proj"], "scaling": {"safety": 2.0, "helpfulness": 2.0}}
    card = midpo_card(cfg, name="m", base="org/base", kind="hub", template="chat", run=run, router_params=10,
                      adapters={"safety": {}, "helpfulness": {}})
    assert 'pip install "midpo-cli[serve]"' in card and "pip install midpo " not in card
    assert card.index("| midpo | eval |") < card.index("## Contents")  # results first
    assert "key59" not in card and RECIPE_FILE in card
    assert len(card.splitlines()) < 200
    folded = card.index("<details><summary>75 fixed blends")
    assert card.index("| midpo | eval |") < folded < card.index("| midpo@gates=0,0 | dev |")
    assert "key59: 59" in run_recipe(run) and run_recipe(run).count("lr: 0.001") == 2


# ------------------------------------------------------------------ chat: one prompt a line, no warnings, early limits

def test_chat_json_answers_each_stdin_line_and_the_chat_shows_no_deprecation_notice() -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-W", "default", "-m", "midpo_cli.cli", "chat", "embedded:tiny-llama",
            "--max-new-tokens", "3"]
    proc = subprocess.run([*base, "--json"], input="Hi there\n\nHow do I bake bread?\n", capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["Hi there", "How do I bake bread?"]
    assert all(r["answer_tokens"] == 3 for r in rows)

    talk = subprocess.run(base, input="Hi\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert talk.returncode == 0, talk.stderr[-2000:]
    said = talk.stdout + talk.stderr
    assert "model>" in said and "Warning" not in said and "deprecated" not in said, said


def test_chat_refuses_max_new_tokens_beyond_the_context_before_the_first_message(monkeypatch, capsys) -> None:
    import io

    from midpo_cli.cli import main

    class Untouched(io.StringIO):
        def read(self, *args):  # no message may be read before the refusal
            raise AssertionError("stdin was read")

        readline = read

    monkeypatch.setattr("sys.stdin", Untouched())
    assert main(["chat", "embedded:tiny-llama", "--max-new-tokens", "3000"]) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens 3000" in err and "256 tokens at most" in err


# ------------------------------------------------------------------ a quick local run skips the slow test; CI does not

def test_slow_marker_gives_a_quick_local_run_while_ci_runs_everything() -> None:
    import tomllib

    pytest_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in pytest_cfg["markers"])
    assert "-m" not in pytest_cfg.get("addopts", "")  # a plain `pytest` (CI's) deselects nothing
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    args = [line.split("pytest", 1)[1] for line in ci]
    assert ci and all(" -m " not in a and " -k " not in a for a in args), ci
    assert "pytestmark = pytest.mark.slow" in (REPO / "tests" / "test_quickstart_e2e.py").read_text()
    assert 'pytest -m "not slow"' in (REPO / "README.md").read_text()
