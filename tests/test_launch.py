"""Launcher argv building (exact argv, no shell strings) and real 2-process CPU runs under the
`deepspeed` and `torchrun` launchers (docs/design.md §6: both work on CPU with gloo)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from midpo_cli.engine.launch import build_launcher_argv, format_argv, launcher_env
from midpo_cli.errors import InputError

SCRIPT = Path(__file__).parent / "engine_scripts" / "train_tiny.py"
REPO = Path(__file__).resolve().parents[1]
WORKER = ["--stage", "sft", "--config", "runs/my run/sft/resolved.yaml"]


def test_deepspeed_argv_with_hostfile_is_pasteable(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    argv = build_launcher_argv("deepspeed", num_gpus=8, num_nodes=2, hostfile=str(hosts), master_port=29600,
                               worker_argv=WORKER)
    assert argv == ["deepspeed", "--hostfile", str(hosts), "--num_nodes", "2", "--num_gpus", "8",
                    "--master_port", "29600", "--module", "midpo_cli.worker", *WORKER]
    assert shlex.split(format_argv(argv)) == argv  # the printed line pastes back to the same argv


def test_deepspeed_single_node_and_torchrun_argv():
    assert build_launcher_argv("deepspeed", num_gpus=2, num_nodes=1, hostfile=None, master_port=None,
                               worker_argv=WORKER) == ["deepspeed", "--num_gpus", "2", "--module",
                                                       "midpo_cli.worker", *WORKER]
    assert build_launcher_argv("torchrun", num_gpus=4, num_nodes=1, hostfile=None, master_port=29501,
                               worker_argv=WORKER) == ["torchrun", "--nproc_per_node", "4", "--master_port",
                                                       "29501", "-m", "midpo_cli.worker", *WORKER]


def test_missing_hostfile_is_an_input_error_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"launcher.hostfile: .*hosts does not exist"):
        build_launcher_argv("deepspeed", num_gpus=8, num_nodes=None, hostfile=str(tmp_path / "hosts"),
                            master_port=None, worker_argv=WORKER)
    with pytest.raises(InputError, match="launcher.kind"):
        build_launcher_argv("none", num_gpus=1, num_nodes=1, hostfile=None, master_port=None, worker_argv=[])


def _clean_env() -> dict[str, str]:
    """The launchers set the rendezvous variables; drop any a previous in-process train() left behind."""
    env = launcher_env()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["DS_ACCELERATOR"] = "cpu"
    return env


@pytest.mark.parametrize("kind", ["deepspeed", "torchrun"])
def test_two_process_run_finishes_and_saves_one_artifact(tmp_path, kind):
    if shutil.which(kind) is None:
        pytest.fail(f"{kind} launcher not on PATH")
    out = tmp_path / "run"
    argv = build_launcher_argv(kind, num_gpus=2, num_nodes=1, hostfile=None, master_port=None,
                               worker_argv=["--out", str(out), "--zero", "2"], script=SCRIPT)
    proc = subprocess.run(argv, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == 4
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoints", "metrics.jsonl", "model", "result.json"]
    assert [p.name for p in (out / "model").iterdir()] == ["model.safetensors"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == [1, 2, 3, 4]  # rank 0 alone writes
    ckpt = out / "checkpoints" / "step-4"
    assert len(list(ckpt.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # both ranks wrote their shard


def test_two_process_run_resumes_from_its_checkpoint(tmp_path):
    """The resumed 2-process run continues from step 4 (data position and shards restored)."""
    out = tmp_path / "run"
    base = ["--out", str(out), "--zero", "2"]
    for steps, resumed in ((4, None), (6, 4)):
        argv = build_launcher_argv("torchrun", num_gpus=2, num_nodes=1, hostfile=None, master_port=None,
                                   worker_argv=[*base, "--steps", str(steps)], script=SCRIPT)
        proc = subprocess.run(argv, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads((out / "result.json").read_text())
        assert result["resumed_from_step"] == resumed and result["global_step"] == steps


def test_format_argv_quotes_paths_with_spaces(tmp_path):
    """The CLI's --dry-run prints format_argv(argv): paths holding a space must stay one argument."""
    hosts = tmp_path / "my hosts"
    hosts.write_text("localhost slots=2\n")
    argv = build_launcher_argv("deepspeed", num_gpus=8, num_nodes=None, hostfile=hosts, master_port=None,
                               worker_argv=WORKER)
    line = format_argv(argv)
    assert f"'{hosts}'" in line and "'runs/my run/sft/resolved.yaml'" in line
    assert shlex.split(line) == argv
