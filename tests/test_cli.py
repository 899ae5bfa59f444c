"""CLI shell: fast help without heavy imports, stable exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "datasets", "deepspeed", "peft", "fastapi", "uvicorn")


def _run_in_fresh_process(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_and_recipe_check_import_no_heavy_modules(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1e-4\n")
    code = f"""
import sys
from midpo_cli.cli import main
main(["--help"])
main(["recipe", "check", {str(recipe)!r}, "--json"])
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
"""
    proc = _run_in_fresh_process(code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout or proc.stdout.rstrip().endswith("HEAVY=")


def test_recipe_check_exit_code_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: two\n  nope: 1\nstages:\n  router:\n    granularity: x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "midpo_cli.cli", "recipe", "check", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:2 train.epochs" in proc.stderr
    assert f"{bad}:3 train.nope: unknown key" in proc.stderr
    assert f"{bad}:6 stages.router.granularity: must be one of token, prompt" in proc.stderr


def test_recipe_check_prints_resolved_json(tmp_path: Path) -> None:
    import json

    good = tmp_path / "good.yaml"
    good.write_text("train:\n  lr: 2e-4\nstages:\n  router:\n    lr: 1e-2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "midpo_cli.cli", "recipe", "check", str(good), "--json", "--set", "train.seed=7"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["train"]["lr"] == 2e-4 and data["train"]["seed"] == 7
    assert data["stages"]["router"]["lr"] == 1e-2 and data["stages"]["sft"]["lr"] == 2e-4


def test_version() -> None:
    from midpo_cli import __version__

    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"midpo {__version__}"


def test_launcher_dry_run_prints_pasteable_argv(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "midpo_cli.cli", "train-expert", "--kind", "safety", "--dry-run",
         "--launcher", "deepspeed", "--num-gpus", "8", "--num-nodes", "2", "--hostfile", str(hosts),
         "--set", f"run_dir={run}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"deepspeed --hostfile {hosts} --num_nodes 2 --num_gpus 8 --module midpo_cli.worker "
        f"--stage safety_expert --config {run}/safety_expert/resolved.yaml")
    assert not run.exists()  # a dry run starts nothing and writes nothing


def test_missing_hostfile_is_an_error_before_anything_starts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "midpo_cli.cli", "train-sft", "--launcher", "deepspeed", "--num-gpus", "2",
         "--hostfile", str(tmp_path / "nope"), "--set", f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope'} does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_help_lists_every_product_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "--help"], capture_output=True, text=True,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    for name in ("train-sft", "train-rm", "train-cost", "train-expert", "rank", "train-router", "generate",
                 "score", "report", "pipeline", "data", "recipe", "env"):
        assert f" {name} " in proc.stdout, name


def test_usage_errors_exit_2_with_click_message() -> None:
    for argv, message in ((["train-sft", "--bogus"], "No such option: --bogus"),
                          (["bogus"], "No such command 'bogus'")):
        proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_failed_launcher_run_exit_code_reaches_the_shell(tmp_path: Path, monkeypatch) -> None:
    """`raise typer.Exit(code)` after the launcher returns: click hands the code back, main must return it."""
    import midpo_cli.engine.launch as launch
    from midpo_cli.cli import main

    calls = []
    monkeypatch.setattr(launch, "run_argv", lambda argv: calls.append(argv) or 7)
    code = main(["train-sft", "--launcher", "torchrun", "--num-gpus", "2",  # no --quiet: console state is global
                 "--set", f"run_dir={tmp_path / 'run'}"])
    assert code == 7
    assert calls and calls[0][0] == "torchrun"
