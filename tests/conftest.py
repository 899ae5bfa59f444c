"""Test-wide settings: never touch the hub, never write to the user's HF cache."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="midpo-hf-home-")


def pytest_collection_modifyitems(config, items):
    """`real` tests (a pretrained model, tens of minutes) run only when asked for: `pytest -m real`."""
    import pytest

    if "real" in (config.getoption("markexpr") or ""):
        return
    opt_in = pytest.mark.skip(reason="opt-in: run with `pytest -m real` (a pretrained model folder, ~45 min)")
    for item in items:
        if "real" in item.keywords:
            item.add_marker(opt_in)


def _toy_slice(split: str, n: int, out) -> str:
    """The first n/2 harmful and n/2 benign rows of an embedded toy-world prompt file, as a named local set whose
    name keeps the toy world's ground-truth judge (`toy-safety-<split>=<file>`)."""
    import json

    from midpo_cli.assets import resolve_embedded

    rows = [json.loads(x) for x in resolve_embedded(f"embedded:toy-safety/{split}").read_text().splitlines() if x]
    rows = [r for r in rows if r["is_harmful"]][: n // 2] + [r for r in rows if not r["is_harmful"]][: n // 2]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"toy-safety-{split}={out}"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One whole `pipeline run --json` on slices of the toy world (test_user_trips._small_world), stderr not a
    terminal, with every long step on: the safety expert's `select: dev`, the probe switch's threshold, a dev set
    and a reported set with the toy judge. About a minute on 2 cores; shared by the tests of what a run prints
    (test_run_output.py) and of the report in a browser (test_report_browser.py)."""
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from test_user_trips import _small_world  # noqa: I001  (tests/ is on sys.path under pytest)

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path_factory.mktemp("small-run")
    prompts = [_toy_slice("dev-prompts", 8, root / "dev.jsonl"), _toy_slice("eval-prompts", 8, root / "eval.jsonl")]
    sets = [*_small_world(root), f"stages.generate.prompts=[{', '.join(prompts)}]", "stages.score.bootstrap=50",
            "stages.safety_expert.select=dev", "stages.safety_expert.select_every=1",
            "stages.generate.models=[midpo, probe_switch]", "stages.generate.gate_sweep=[[0, 1], [1, 0], [0.5, 1]]"]
    env = {**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "pipeline", "run",
                           str(repo / "recipes" / "quickstart.yaml"), *(a for s in sets for a in ("--set", s)),
                           "--json"], capture_output=True, text=True, env=env, cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(run=root / "run", stderr=proc.stderr, stdout=proc.stdout)
