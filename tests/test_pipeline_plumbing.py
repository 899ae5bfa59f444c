"""Pipeline orchestration without models: skip-if-done, downstream re-runs, plan, and the run lock.

Stage runners are replaced by a recorder that writes a manifest the way real stages do, so these
tests exercise the real fingerprinting, context and lock code in milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from midpo_cli.errors import InputError
from midpo_cli.manifest import write_manifest
from midpo_cli.pipeline import run as pipeline
from midpo_cli.pipeline.graph import plan
from midpo_cli.recipe import STAGE_ORDER, load_recipe


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fake_runner(stage: str):
        def run(ctx) -> None:
            calls.append(stage)
            (ctx.folder / "x").write_text(stage)  # the artifact the manifest names: a stage is done with it
            record = ctx.record()
            record.outputs = {"artifact": ctx.rel(ctx.folder / "x")}
            write_manifest(ctx.folder, record, {"stage": stage})

        return run

    monkeypatch.setattr(pipeline, "runner", fake_runner)
    return calls


def _recipe(tmp_path: Path, *sets: str):
    return load_recipe(None, [f"run_dir={tmp_path / 'run'}", *sets])


def test_second_run_skips_everything(tmp_path: Path, ran: list[str]) -> None:
    recipe = _recipe(tmp_path)
    pipeline.run_pipeline(recipe, stages=list(STAGE_ORDER))
    assert ran == list(STAGE_ORDER)
    ran.clear()
    summary = pipeline.run_pipeline(recipe, stages=list(STAGE_ORDER))
    assert ran == [] and {row["action"] for row in summary} == {"skipped"}


def test_router_penalty_change_reruns_router_generate_score_only(tmp_path: Path, ran: list[str]) -> None:
    pipeline.run_pipeline(_recipe(tmp_path), stages=list(STAGE_ORDER))
    ran.clear()
    changed = _recipe(tmp_path, "stages.router.penalty.safety=0.5")
    assert [r["stage"] for r in plan(changed, list(STAGE_ORDER)) if r["status"] != "done"] == [
        "router", "generate", "score"]
    pipeline.run_pipeline(changed, stages=list(STAGE_ORDER))
    assert ran == ["router", "generate", "score"]


def test_cost_model_change_reruns_its_dependants(tmp_path: Path, ran: list[str]) -> None:
    pipeline.run_pipeline(_recipe(tmp_path), stages=list(STAGE_ORDER))
    ran.clear()
    pipeline.run_pipeline(_recipe(tmp_path, "stages.cost_model.lr=1e-3"), stages=list(STAGE_ORDER))
    assert ran == ["cost_model", "safety_expert", "rank", "router", "generate", "score"]


def test_force_and_only(tmp_path: Path, ran: list[str]) -> None:
    recipe = _recipe(tmp_path)
    pipeline.run_pipeline(recipe, stages=list(STAGE_ORDER))
    ran.clear()
    pipeline.run_pipeline(recipe, stages=["rank"], force={"rank"})
    assert ran == ["rank"]


def test_missing_dependency_is_blocked(tmp_path: Path, ran: list[str]) -> None:
    recipe = _recipe(tmp_path)
    rows = plan(recipe, ["router"])
    assert rows[0]["status"] == "blocked" and "sft" in rows[0]["why"]
    with pytest.raises(InputError, match="needs sft"):
        pipeline.run_pipeline(recipe, stages=["router"])
    assert ran == []


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / pipeline.LOCK
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(InputError, match=r"in use by `pipeline run` \(pid"), pipeline.run_lock(run_dir):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    with pipeline.run_lock(run_dir) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_changed_settings_discard_stale_checkpoints(tmp_path: Path) -> None:
    from midpo_cli.pipeline.run import make_context

    recipe = _recipe(tmp_path, "stages.sft.lr=1e-3")
    ctx = make_context(recipe, "sft")
    (ctx.folder / "checkpoints").mkdir()
    assert make_context(recipe, "sft").folder.joinpath("checkpoints").exists()  # same settings: kept
    make_context(_recipe(tmp_path, "stages.sft.lr=2e-3"), "sft")
    assert not (ctx.folder / "checkpoints").exists()


def test_every_stage_has_a_runner_and_only_running_it_imports_its_module() -> None:
    """`runner` imports stage modules statically but lazily: planning a run imports none of them (only the stage
    kit's context, which the runner builds, and no torch)."""
    code = ("import sys; from midpo_cli.pipeline import run; from midpo_cli.pipeline.graph import plan; "
            "from midpo_cli.recipe import load_recipe; plan(load_recipe(None), ['sft']); "
            "print(sorted(m for m in sys.modules if m.startswith('midpo_cli.stages.') and m not in "
            "('midpo_cli.stages.kit', 'midpo_cli.stages.kit.context') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from midpo_cli.recipe import ALL_STAGES

    assert all(callable(pipeline.runner(stage)) for stage in ALL_STAGES)
    with pytest.raises(KeyError):
        pipeline.runner("no_such_stage")


def test_a_failed_post_save_check_keeps_the_finished_stage_and_sets_the_attempt_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: a re-run (changed settings) that trains to the end, writes a checkpoint and then fails its
    post-save check leaves the finished result in place, done for its settings; the attempt waits in
    `.attempt/` and `--resume` with its settings picks it up (checkpoint included)."""
    from midpo_cli.errors import ArtifactCheckError
    from midpo_cli.manifest import read_manifest
    from midpo_cli.pipeline.folders import ATTEMPT, FINGERPRINT_FILE, PREVIOUS

    seen: list[bool] = []

    def runner(fail: bool):
        def run(ctx) -> None:
            seen.append((ctx.folder / "checkpoints" / "latest").is_file())
            (ctx.folder / "checkpoints").mkdir(exist_ok=True)
            (ctx.folder / "checkpoints" / "latest").write_text("step-2\n")
            if fail:
                raise ArtifactCheckError(f"{ctx.folder / 'model'}: probe outputs differ (injected)")
            (ctx.folder / "model").write_text(ctx.fingerprint)
            record = ctx.record()
            record.outputs = {"model": ctx.rel(ctx.folder / "model")}
            write_manifest(ctx.folder, record, {"stage": "sft"})
        return lambda stage: run

    old, new = _recipe(tmp_path, "stages.sft.lr=1e-3"), _recipe(tmp_path, "stages.sft.lr=2e-3")
    folder = tmp_path / "run" / "sft"
    monkeypatch.setattr(pipeline, "runner", runner(fail=False))
    pipeline.run_pipeline(old, stages=["sft"])
    finished = read_manifest(folder)

    monkeypatch.setattr(pipeline, "runner", runner(fail=True))
    with pytest.raises(ArtifactCheckError, match="injected"):
        pipeline.run_pipeline(new, stages=["sft"])
    assert read_manifest(folder) == finished and (folder / "model").read_text() == finished["fingerprint"]
    assert plan(old, ["sft"])[0]["status"] == "done" and plan(new, ["sft"])[0]["status"] != "done"
    assert not (folder / PREVIOUS).exists()
    attempt = folder / ATTEMPT
    assert (attempt / FINGERPRINT_FILE).read_text().strip() == plan(new, ["sft"])[0]["fingerprint"]
    assert (attempt / "checkpoints" / "latest").is_file() and "injected" in (attempt / ".failed").read_text()

    with pytest.raises(ArtifactCheckError):  # failing again: still the finished result in place
        pipeline.run_pipeline(new, stages=["sft"])
    assert read_manifest(folder) == finished and (attempt / "checkpoints" / "latest").is_file()

    monkeypatch.setattr(pipeline, "runner", runner(fail=False))
    pipeline.run_pipeline(new, stages=["sft"])
    assert seen == [False, False, True, True]  # each retry resumed the attempt's checkpoint
    assert read_manifest(folder)["fingerprint"] == plan(new, ["sft"])[0]["fingerprint"]
    assert not attempt.exists() and not (folder / PREVIOUS).exists() and not (folder / ".failed").exists()


def test_subnormals_are_flushed_before_the_first_stage_runs_and_not_when_all_are_done(
        tmp_path: Path, ran: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The intra-op threads copy the flush mode when they start (midpo_cli/engine/subnormals.py), so the
    pipeline sets it before any stage; a run with nothing to do does not import torch for it."""
    from midpo_cli.engine import subnormals

    monkeypatch.setattr(subnormals, "flush_subnormals", lambda: ran.append("flush") or True)
    recipe = _recipe(tmp_path)
    pipeline.run_pipeline(recipe, stages=["sft", "reward_model"])
    assert ran == ["flush", "sft", "reward_model"]
    ran.clear()
    pipeline.run_pipeline(recipe, stages=["sft", "reward_model"])
    assert ran == []
