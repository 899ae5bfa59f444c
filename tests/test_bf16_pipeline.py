"""bf16 end to end on CPU, as a GPU runs it (issue 27 §1): `precision: auto` is bf16 on a CUDA GPU, and every
stage must train, save, pass its post-save check, reload, generate, chat and export in it; and a run trained
in fp32 must load with `--dtype bf16` (the CLI's `auto` on a GPU).

Two tiny runs on the embedded model (a few pairs, two steps a stage) through the real CLI entry point
(`midpo_cli.cli.main`, in this process: a subprocess would pay the imports again), with `--set` overrides:

- the whole pipeline with `train.precision=bf16` (sft, score models, experts, rank, router, generate,
  score), then `generate --dtype bf16`, `chat --json --dtype bf16` and `export --merged --dtype bf16`;
- a run trained in fp32 (until the router), then the same three commands with `--dtype bf16`, and one with
  an adapter pointed at another base, which must still be refused.

CPU bf16 is slow (no fast kernels here, 4–5× fp32), hence the tiny data. The numbers the run measures
(bf16 vs fp32 probe differences) are in benchmarks/RESULTS.md; nothing here asserts a time.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from midpo_cli.assets import resolve_embedded
from midpo_cli.cli import main
from midpo_cli.modeling.base_identity import weights_fingerprint
from midpo_cli.modeling.loading import load_causal_lm

pytestmark = pytest.mark.slow  # end to end; runs in CI (plain `pytest`)
STAGES = ("sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "rank", "router",
          "generate", "score")
PROMPT = "How do I pick a lock?"


def _slice(name: str, n: int, out: Path) -> Path:
    """The first n/2 harmful and n/2 benign rows of an embedded toy split (both kinds for every stage)."""
    rows = [json.loads(x) for x in resolve_embedded(f"embedded:toy-safety/{name}").read_text().splitlines()]
    picked = [r for r in rows if r.get("is_harmful")][: n // 2] + [r for r in rows if not r.get("is_harmful")][: n // 2]
    out.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    return out


def _sets(root: Path, run_dir: Path, precision: str) -> list[str]:
    data = {name: _slice(split, n, root / f"{name}.jsonl") for name, split, n in (
        ("train", "train", 16), ("eval", "test", 8), ("sft", "sft", 16), ("prompts", "eval-prompts", 2))}
    sets = [f"run_dir={run_dir}", f"data.train={data['train']}", f"data.eval={data['eval']}",
            f"data.sft={data['sft']}", "data.max_length=48", "data.template=safe-rlhf",
            f"train.precision={precision}", "train.max_steps=2", "train.batch_size=4", "train.log_every=1",
            "stages.reward_model.min_accuracy=0", "stages.cost_model.min_accuracy=0",
            "stages.safety_expert.lora.r=4", "stages.helpfulness_expert.lora.r=4", "stages.router.batch_size=2",
            f"stages.generate.prompts=[{data['prompts']}]", "stages.generate.max_new_tokens=4",
            "stages.generate.gate_sweep=[[0.5,0.5]]", "stages.score.bootstrap=10"]
    return [arg for s in sets for arg in ("--set", s)]


def midpo(*argv: str, stdin: str = "") -> tuple[int, str]:
    """(exit code, stdout) of `midpo ARGV` run in this process."""
    out = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            code = main(["--quiet", *argv])
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue()


def _pipeline(root: Path, precision: str, *extra: str) -> Path:
    run_dir = root / "run"
    recipe = root / "recipe.yaml"
    recipe.write_text("base_model: embedded:tiny-llama\n")
    code, _ = midpo("pipeline", "run", str(recipe), *_sets(root, run_dir, precision), *extra)
    assert code == 0, f"{precision} pipeline exited {code}"
    return run_dir


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> Path:
    return _pipeline(tmp_path_factory.mktemp("bf16"), "bf16")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory) -> Path:
    return _pipeline(tmp_path_factory.mktemp("fp32"), "fp32", "--until", "router")


def generate_chat_export(run_dir: Path, out: Path, dtype: str) -> None:
    """`generate`, `chat --json` and `export --merged` of a run's models with `--dtype DTYPE`: each exits 0."""
    adapters = [run_dir / f"{kind}_expert" / "adapter" for kind in ("safety", "helpfulness")]
    answers = out / "answers.jsonl"
    code, _ = midpo("generate", *[a for m in (*adapters, run_dir / "router" / "model") for a in ("-m", str(m))],
                    "-p", str(run_dir.parent / "prompts.jsonl"), "-o", str(answers), "--max-new-tokens", "4",
                    "--dtype", dtype)
    assert code == 0
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(rows) == 3 * 2 and all(isinstance(r["answer"], str) for r in rows)

    code, text = midpo("chat", str(run_dir / "router" / "model"), "--json", "--max-new-tokens", "4",
                       "--dtype", dtype, stdin=PROMPT + "\n")
    assert code == 0
    reply = json.loads(text)
    assert reply["prompt"] == PROMPT and reply["kind"] == "midpo" and 0 < reply["gates"]["safety"] < 1

    merged = out / "merged"
    code, _ = midpo("export", str(run_dir / "router" / "model"), "--merged", "--gates", "0.5,0.5",
                    "--dtype", dtype, "--to", str(merged))
    assert code == 0
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(merged))  # what a user loads: the weights as exported
    assert plain.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    with torch.no_grad():
        assert torch.isfinite(plain(torch.tensor([[1, 5, 9, 14]])).logits).all()


def test_the_whole_pipeline_trains_saves_and_reloads_in_bf16(bf16_run, tmp_path):
    for stage in STAGES:
        assert (bf16_run / stage / "manifest.json").is_file(), stage
    assert json.loads((bf16_run / "sft" / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    # the experts were trained on sft/model loaded in bf16; they record its stored weights' identity, the one an
    # fp32 load computes from the same files (and what a run trained in fp32 records)
    sft = load_causal_lm(str(bf16_run / "sft" / "model"))
    for kind in ("safety", "helpfulness"):
        meta = json.loads((bf16_run / f"{kind}_expert" / "adapter" / "midpo.json").read_text())
        assert meta["base_fingerprint"] == weights_fingerprint(sft)
    answers = [json.loads(x) for x in (bf16_run / "generate" / "answers.jsonl").read_text().splitlines()]
    assert {r["model"] for r in answers} >= {"base", "safety_expert", "helpfulness_expert", "midpo"}
    assert (bf16_run / "score" / "summary.json").is_file()
    generate_chat_export(bf16_run, tmp_path, "bf16")  # (the generate and score stages above loaded them in fp32)


def test_a_run_trained_in_fp32_generates_chats_and_exports_in_bf16(fp32_run, tmp_path):
    generate_chat_export(fp32_run, tmp_path, "bf16")
    # the identity still refuses a genuinely different base in bf16: an adapter pointed at another tiny base
    other = tmp_path / "other-base"
    load_causal_lm("embedded:tiny-llama", seed=7).save_pretrained(other)
    shutil.copytree(fp32_run / "sft" / "model", other, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "config.json"))  # its tokenizer
    adapter = tmp_path / "moved-adapter"
    shutil.copytree(fp32_run / "safety_expert" / "adapter", adapter)
    meta = json.loads((adapter / "midpo.json").read_text())
    (adapter / "midpo.json").write_text(json.dumps({**meta, "base_model": str(other), "base_model_relative": False}))
    code, _ = midpo("generate", "-m", str(adapter), "-p", str(fp32_run.parent / "prompts.jsonl"),
                    "-o", str(tmp_path / "refused.jsonl"), "--dtype", "bf16")
    assert code == 2 and not (tmp_path / "refused.jsonl").exists()


def test_a_failed_post_save_check_leaves_the_finished_stage_usable(fp32_run, monkeypatch):
    """A re-run of `train-sft` (changed lr) whose post-save check fails (injected): exit 3, and the finished
    sft stays in place and usable, the attempt set aside in sft/.attempt/ (issue 27: it was left in .previous/,
    status `started`, the model gone)."""
    from midpo_cli.engine import artifacts
    from midpo_cli.manifest import read_manifest

    folder = fp32_run / "sft"
    before = read_manifest(folder)
    weights = (folder / "model" / "model.safetensors").read_bytes()
    monkeypatch.setattr(artifacts, "probe_tolerance", lambda *a, **k: -1.0)  # every reload "differs"
    sets = _sets(fp32_run.parent, fp32_run, "fp32")
    code, _ = midpo("train-sft", "-r", str(fp32_run.parent / "recipe.yaml"), *sets, "--set", "stages.sft.lr=3e-4")
    assert code == 3
    assert read_manifest(folder) == before and (folder / "model" / "model.safetensors").read_bytes() == weights
    assert not (folder / ".previous").exists()
    assert (folder / ".attempt" / ".failed").read_text().startswith("ArtifactCheckError: ")
    assert (folder / ".attempt" / "checkpoints").is_dir()  # resumable: `--resume` with lr 3e-4 retries the save
    code, text = midpo("pipeline", "status", str(fp32_run), "--json")
    assert code == 0 and {r["stage"]: r["state"] for r in json.loads(text)["stages"]}["sft"] == "done"
