"""CLI shell: fast help without heavy imports, stable exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "datasets", "deepspeed", "peft")


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
