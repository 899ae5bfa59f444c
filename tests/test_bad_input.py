"""Bad input through the real CLI, against a finished run: exit 2, one stderr line naming the culprit,
no traceback, and not one file under the run dir changed (issue 16).

The "finished run" is built without training: every stage folder gets the manifest and fingerprint
marker a real run would leave (computed by midpo's own fingerprint code) plus small stand-in
artifacts, so every command below takes the re-run path and must refuse before touching anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from midpo_cli.assets import resolve_embedded
from midpo_cli.io import atomic_write_text
from midpo_cli.manifest import StageRecord, write_manifest
from midpo_cli.pipeline.folders import FINGERPRINT_FILE
from midpo_cli.pipeline.graph import expected_fingerprint
from midpo_cli.pipeline.run import LOCK
from midpo_cli.recipe import STAGE_ORDER, load_recipe

OUTPUTS = {"sft": {"model": "sft/model"}, "reward_model": {"model": "reward_model/model"},
           "cost_model": {"model": "cost_model/model"}, "safety_expert": {"adapter": "safety_expert/adapter"},
           "helpfulness_expert": {"adapter": "helpfulness_expert/adapter"},
           "rank": {"dual": "rank/dual.jsonl"}, "router": {"model": "router/model"},
           "generate": {"answers": "generate/answers.jsonl"}, "score": {"report": "score/report.html"}}


def _stand_ins(run: Path) -> None:
    """Small files where a real run keeps its artifacts (what a careless re-run would delete)."""
    tiny = json.loads((resolve_embedded("embedded:tiny-llama") / "config.json").read_text())
    for stage in ("sft", "router"):
        atomic_write_text(run / stage / "model" / "config.json", json.dumps(tiny))
    for stage, kind in (("reward_model", "reward"), ("cost_model", "cost")):
        atomic_write_text(run / stage / "model" / "config.json",
                          json.dumps({**tiny, "architectures": ["LlamaForScore"], "score_type": kind}))
    for stage in ("safety_expert", "helpfulness_expert"):
        atomic_write_text(run / stage / "adapter" / "adapter_config.json", '{"peft_type": "LORA"}')
        (run / stage / "adapter" / "adapter_model.safetensors").write_bytes(b"\x08" * 64)
        atomic_write_text(run / stage / "checkpoints" / "latest", "step-2\n")
        (run / stage / "checkpoints" / "step-2").mkdir(parents=True)
        (run / stage / "checkpoints" / "step-2" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 32)
        atomic_write_text(run / stage / "margins.json", '{"values": {}}')
    atomic_write_text(run / "rank" / "dual.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    atomic_write_text(run / "generate" / "answers.jsonl", "")
    atomic_write_text(run / "score" / "report.html", "<html></html>")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    pairs = root / "pairs.jsonl"
    lines = resolve_embedded("embedded:toy-safety/train").read_text(encoding="utf-8").splitlines()[:48]
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = root / "run"
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(f"run_dir: {run}\ndata:\n  train: {pairs}\n  eval: {pairs}\ntrain:\n  batch_size: 4\n")
    recipe = load_recipe(recipe_file)
    manifests: dict = {}
    for stage in STAGE_ORDER:
        folder = run / stage
        folder.mkdir(parents=True)
        want = expected_fingerprint(recipe, stage, manifests)
        write_manifest(folder, StageRecord(stage=stage, fingerprint=want, outputs=OUTPUTS[stage]), {"stage": stage})
        (folder / FINGERPRINT_FILE).write_text(want + "\n")
        manifests[stage] = json.loads((folder / "manifest.json").read_text())
    _stand_ins(run)
    _bad_files(root, lines)
    _outside_files(root, run)
    return {"root": root, "run": run, "recipe": recipe_file, "pairs": pairs}


def _bad_files(root: Path, lines: list[str]) -> None:
    (root / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    (root / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (root / "badline.jsonl").write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    (root / "no_response_1.jsonl").write_text(
        "\n".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "response_1"}) for x in lines) + "\n")
    (root / "empty.jsonl").write_text("\n")
    (root / "sheet.xlsx").write_text("x")
    (root / "header.csv").write_text("[/b]q,answer\nhello,world\n")
    (root / "a_file").write_text("not a folder")
    (root / "empty.yaml").write_text("# nothing here\n")
    (root / "list.yaml").write_text("- run_dir: x\n")
    (root / "latin1.yaml").write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    (root / "x[").mkdir()
    (root / "x[" / "y].yaml").write_text("train: [\n")
    (root / "answers.jsonl").write_text(json.dumps(
        {"model": "m", "prompt_set": "p", "index": "abc", "prompt": "q", "answer": "a"}) + "\n")


def _outside_files(root: Path, run: Path) -> None:
    """Issue 27's inputs. `keep/` holds what is not midpo's (a user's folders, other runs, models): the tests
    hash it with the run dir, so a command that follows a symlink out of the run or clears a user's file fails."""
    from midpo_cli.modeling.files import WEIGHT_FILES  # noqa: F401 - torch-free

    keep = root / "keep"
    (keep / "outside").mkdir(parents=True)
    (keep / "outside" / "thesis.tex").write_text("years of work\n")
    (keep / "outside" / "notes.md").write_text("mine\n")
    (run / "dpo_expert").symlink_to(keep / "outside", target_is_directory=True)  # a stage folder that is a link
    (keep / "run2" / "sft").mkdir(parents=True)  # an unfinished stage folder holding a user's file
    (keep / "run2" / "sft" / "notes.txt").write_text("mine\n")
    (keep / "scores").mkdir()
    (keep / "nomodels").mkdir()
    (keep / "nomodels" / "summary.json").write_text('{"n_rows": 1}\n')
    (keep / "nomodels" / "scores.csv").write_text("model,prompt_set,index\nm,p,0\n")
    os.mkfifo(root / "fifo.jsonl")
    (root / "dup.yaml").write_text("run_dir: a\ntrain:\n  lr: 1e-4\nrun_dir: b\n")
    (root / "pyobj.yaml").write_text("run_dir: x\ntrain: !!python/object/apply:os.system ['true']\n")
    (root / "deep.yaml").write_text("train: " + "[" * 3000 + "]" * 3000 + "\n")
    bomb = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (root / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (root / "prompts.txt").write_text("How do I bake bread?\n")
    (root / "answers_ok.jsonl").write_text(json.dumps(
        {"model": "m", "prompt_set": "dev", "index": 0, "prompt": "q", "answer": "a"}) + "\n")
    _models(keep / "models")
    _midpo_stand_ins(run, keep)


def _models(models: Path) -> None:
    """Model folders that are broken in one way each (config.json from the embedded tiny LLaMA)."""
    import pickle
    import struct
    import zipfile

    tiny = resolve_embedded("embedded:tiny-llama")  # config and tokenizer, no weights
    config = (tiny / "config.json").read_text()
    for name in ("weightless", "truncated", "pickled", "pickled_rm"):
        shutil.copytree(tiny, models / name)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}).encode()
    (models / "truncated" / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 100)
    payload = pickle.dumps(_Evil(), protocol=2)  # never loaded by the tests: midpo must refuse it unread
    for name in ("pickled", "pickled_rm"):
        with zipfile.ZipFile(models / name / "pytorch_model.bin", "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    rm = json.loads(config) | {"architectures": ["LlamaForScore"], "score_type": "reward"}
    (models / "pickled_rm" / "config.json").write_text(json.dumps(rm))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _midpo_stand_ins(run: Path, keep: Path) -> None:
    """The run's router model as a MidPO folder, and another run whose router weights differ."""
    cfg = {"format": "midpo", "format_version": 1, "base_model": "embedded:tiny-llama", "adapters": {},
           "router": {}, "scaling": 1.0, "target_modules": ["down_proj"]}
    from midpo_cli.modeling.midpo import CONFIG_FILE, FORMAT, FORMAT_VERSION, ROUTER_FILE

    cfg.update(format=FORMAT, format_version=FORMAT_VERSION)
    atomic_write_text(run / "router" / "model" / CONFIG_FILE, json.dumps(cfg))
    (run / "router" / "model" / ROUTER_FILE).write_bytes(b"router weights of this run")
    other = keep / "run-b" / "router"
    atomic_write_text(other / "model" / ROUTER_FILE, "router weights of another run")
    atomic_write_text(other / "manifest.json", json.dumps({"stage": "router", "outputs": {"model": "router/model"}}))


def snapshot(*folders: Path) -> dict[str, str]:
    """Every path under each folder → sha256 of its content ('dir' for folders, 'link → target' for links,
    which are not followed)."""
    out = {}
    for folder in folders:
        for top, dirs, files in os.walk(folder):
            for name in sorted(dirs + files):
                path = Path(top) / name
                rel = f"{folder.name}/{path.relative_to(folder)}"
                if path.is_symlink():
                    out[rel] = f"link → {os.readlink(path)}"
                elif path.is_dir():
                    out[rel] = "dir"
                elif path.is_file():
                    out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[rel] = "special"
    return out


def cases(w: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    """(id, argv after `midpo`, text the one error line must contain)."""
    root, R = w["root"], ["-r", str(w["recipe"])]
    safety = ["train-expert", "--kind", "safety", *R]
    return [
        ("data-typo", [*safety, "--set", "data.train=typo.jsonl"], "typo.jsonl"),
        ("batch-too-big", [*safety, "--set", "stages.safety_expert.batch_size=100000"], "batch_size"),
        ("grad-accum-too-big", [*safety, "--set", "train.grad_accum=1000"], "grad_accum 1000"),
        ("fp16-on-cpu", [*safety, "--set", "train.precision=fp16"], "fp16"),
        ("run-dir-is-file", [*safety, "--set", f"run_dir={root / 'a_file'}"], "a_file is a file"),
        ("run-dir-under-file", ["train-sft", *R, "--set", f"run_dir={root / 'a_file' / 'run'}"], "a_file is a file"),
        ("non-utf8-data", [*safety, "--set", f"data.train={root / 'latin1.jsonl'}"], "latin1.jsonl: not UTF-8"),
        ("corrupt-parquet", [*safety, "--set", f"data.train={root / 'broken.parquet'}"], "broken.parquet"),
        ("bad-json-row", [*safety, "--set", f"data.train={root / 'badline.jsonl'}"], "row 2"),
        ("missing-column", [*safety, "--set", f"data.train={root / 'no_response_1.jsonl'}"], "'response_1'"),
        ("columns-map-missing", [*safety, "--set", "data.columns={prompt: question}"], "'question'"),
        ("empty-data", [*safety, "--set", f"data.train={root / 'empty.jsonl'}"], "no rows"),
        ("eval-typo", ["train-expert", "--kind", "helpfulness", *R, "--set", "data.eval=ev.jsonl"], "data.eval"),
        ("unsupported-suffix", [*safety, "--set", f"data.train={root / 'sheet.xlsx'}"], "unsupported file type"),
        ("sft-data-typo", ["train-sft", *R, "--set", "data.sft=sft-typo.jsonl"], "sft-typo.jsonl"),
        ("sft-no-answer-column", ["train-sft", *R, "--set", f"data.sft={w['pairs']}"], "'answer'"),
        ("sft-corpus-no-text-column", ["train-sft", *R, "--set", f"stages.sft.corpus={w['pairs']}"],
         "stages.sft.corpus"),
        ("sft-corpus-typo", ["train-sft", *R, "--set", "stages.sft.corpus=corpus-typo.jsonl"], "corpus-typo.jsonl"),
        ("sft-use-missing", ["train-sft", *R, "--set", "stages.sft.use=./no-such-model"], "no-such-model"),
        ("policy-is-score-model", ["train-sft", *R, "--set", f"stages.sft.use={w['run'] / 'reward_model/model'}"],
         "is a score model"),
        ("rm-use-missing", ["train-rm", *R, "--set", "stages.reward_model.use=./nope-rm"], "nope-rm"),
        ("rm-use-not-score", ["train-rm", *R, "--set", f"stages.reward_model.use={w['run'] / 'sft/model'}"],
         "not a score model"),
        ("base-model-missing", ["train-sft", *R, "--set", "base_model=./no-base"], "no-base"),
        ("tokenizer-missing", ["train-sft", *R, "--set", "tokenizer=./no-tok"], "no-tok"),
        ("unknown-key", [*safety, "--set", "train.learning_rat=1"], "train.learning_rat: unknown key"),
        ("wrong-type", [*safety, "--set", "train.epochs=two"], "must be an integer"),
        ("deep-unknown-key", [*safety, "--set", "train.nonexistent.deep=3"], "--set train.nonexistent"),
        ("rule-flag", ["rank", *R, "--rule", "vibes"], "--rule stages.rank.rule"),
        ("set-without-equals", [*safety, "--set", "train.lr"], "expected KEY=VALUE"),
        ("recipe-not-found", ["train-sft", "-r", str(root / "nope.yaml")], "recipe file not found"),
        ("empty-recipe", ["recipe", "check", str(root / "empty.yaml")], "empty.yaml: the recipe is empty"),
        ("recipe-bracket-path", ["recipe", "check", str(root / "x[" / "y].yaml")], "x[/y].yaml"),
        ("recipe-is-list", ["recipe", "check", str(root / "list.yaml")], "must be a mapping"),
        ("recipe-non-utf8", ["recipe", "check", str(root / "latin1.yaml")], "latin1.yaml: not UTF-8"),
        ("gate-sweep-brackets", ["recipe", "check", str(w["recipe"]), "--set", "stages.generate.gate_sweep=[[2,0]]"],
         "[g_safety, g_helpfulness] in [0, 1], got [2.0, 0.0]"),
        ("max-length-small", [*safety, "--set", "data.max_length=4"], "data.max_length: must be > 8"),
        ("lora-rank-zero", [*safety, "--set", "stages.safety_expert.lora.r=0"], "lora.r: must be > 0"),
        ("unknown-stage", ["pipeline", "run", str(w["recipe"]), "--only", "nosuch"], "unknown stage nosuch"),
        ("unknown-force", ["pipeline", "run", str(w["recipe"]), "--force", "nosuch"], "unknown stage nosuch"),
        ("pipeline-data-typo", ["pipeline", "run", str(w["recipe"]), "--set", "data.train=typo2.jsonl"],
         "typo2.jsonl"),
        ("missing-upstream", ["train-router", *R, "--set", f"run_dir={root / 'other-run'}"], "needs sft"),
        ("rank-data-typo", ["rank", *R, "--set", "data.train=typo3.jsonl"], "typo3.jsonl"),
        ("hostfile-missing", ["train-rm", *R, "--launcher", "deepspeed", "--hostfile", str(root / "nohosts")],
         "nohosts"),
        ("score-output-is-file", ["score", str(root / "answers.jsonl"), "-o", str(root / "a_file")],
         "--output"),
        ("score-bad-index", ["score", str(root / "answers.jsonl"), "-o", str(root / "scores")],
         "row 1: index must be an integer, got 'abc'"),
        ("score-answers-missing", ["score", str(root / "none.jsonl"), "-o", str(root / "scores")], "none.jsonl"),
        ("score-model-missing", ["score", str(root / "answers.jsonl"), "-o", str(root / "scores"),
                                 "--reward-model", "./no-rm"], "no-rm"),
        ("data-show-typo", ["data", "show", str(root / "typo.jsonl")], "typo.jsonl"),
        ("data-show-columns", ["data", "show", str(w["pairs"]), "--columns", "prompt"], "--columns"),
        ("data-show-stage", ["data", "show", str(w["pairs"]), "--stage", "nope"], "--stage"),
        ("csv-bracket-header", ["data", "show", str(root / "header.csv"), "--stage", "sft", "--tokenizer", "none"],
         "[/b]q"),
        ("status-not-a-dir", ["pipeline", "status", str(root / "a_file")], "a_file"),
        *issue_27_cases(w),
    ]


def issue_27_cases(w: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    """Issue 27 §2–4: files outside midpo's own, silent wrong results, hangs and exit codes."""
    root, keep, R = w["root"], w["root"] / "keep", ["-r", str(w["recipe"])]
    models, safety = keep / "models", ["train-expert", "--kind", "safety", *R]
    generate = ["generate", "-p", str(root / "prompts.txt"), "-o", str(keep / "scores" / "answers.jsonl")]
    check = ["recipe", "check", str(w["recipe"]), "--set"]
    return [
        ("stage-folder-is-symlink", ["train-expert", "--kind", "dpo", *R], "dpo_expert is a symbolic link"),
        ("stage-folder-stray-file", ["train-sft", *R, "--set", f"run_dir={keep / 'run2'}"],
         "holds files midpo did not write (notes.txt)"),
        ("weightless-model-sft", ["train-sft", *R, "--set", f"stages.sft.use={models / 'weightless'}"],
         "weightless has config.json but no weight files"),
        ("weightless-model-generate", [*generate, "-m", str(models / "weightless")],
         "weightless has config.json but no weight files"),
        ("duplicate-yaml-key", ["recipe", "check", str(root / "dup.yaml")],
         "dup.yaml:4: duplicate key run_dir (first at line 1)"),
        ("from-after-until", ["pipeline", "run", str(w["recipe"]), "--from", "score", "--until", "sft"],
         "score comes after sft"),
        ("export-other-run-dir", ["export", str(w["run"] / "router" / "model"), "--midpo", "--to",
                                  str(root / "exported"), "--run-dir", str(keep / "run-b")], "--run-dir"),
        ("chat-bias-and-gates", ["chat", "embedded:tiny-llama", "--safety-bias", "1", "--gates", "0.5,0.5"],
         "--safety-bias with --gates"),
        ("select-on-typo", ["score", str(root / "answers_ok.jsonl"), "-o", str(keep / "scores"),
                            "--select-on", "dve"], "select_on 'dve'"),
        ("yaml-alias-bomb", ["recipe", "check", str(root / "bomb.yaml")], "expands to more than"),
        ("data-is-fifo", [*safety, "--set", f"data.train={root / 'fifo.jsonl'}"], "fifo.jsonl: not a regular file"),
        ("recipe-is-fifo", ["recipe", "check", str(root / "fifo.jsonl")], "fifo.jsonl: not a regular file"),
        ("beta-inf", [*safety, "--set", "stages.safety_expert.beta=.inf"], "beta: must be a finite number"),
        ("lora-alpha-inf", [*check, "stages.safety_expert.lora.alpha=.inf"], "lora.alpha: must be a finite"),
        ("score-reg-inf", [*check, "stages.reward_model.score_regularization=.inf"],
         "score_regularization: must be a finite"),
        ("lr-inf", ["train-sft", *R, "--set", "train.lr=.inf"], "train.lr: must be a finite number"),
        ("margin-scale-huge", [*check, "stages.safety_expert.margin_scale=1e308"], "margin_scale: must be <= 100"),
        ("seed-negative", [*check, "train.seed=-1"], "train.seed: must be >= 0"),
        ("seed-huge", [*check, "train.seed=100000000000000000000000"], "train.seed: must be <= 4294967295"),
        ("lora-rank-huge", [*safety, "--set", "stages.safety_expert.lora.r=1000000000"], "lora.r: must be <= 8192"),
        ("python-object-tag", ["recipe", "check", str(root / "pyobj.yaml")],
         "pyobj.yaml:2: tag tag:yaml.org,2002:python/object/apply:os.system is not allowed"),
        ("deeply-nested-yaml", ["recipe", "check", str(root / "deep.yaml")], "nests too deeply"),
        ("truncated-safetensors", ["train-sft", *R, "--set", f"stages.sft.use={models / 'truncated'}"],
         "truncated/model.safetensors: not a readable safetensors file"),
        ("truncated-safetensors-generate", [*generate, "-m", str(models / "truncated")],
         "truncated/model.safetensors: not a readable safetensors file"),
        ("pickle-bin-base", ["train-sft", *R, "--set", f"base_model={models / 'pickled'}"],
         "pickled/pytorch_model.bin: refused: a pickle that would call posix.system"),
        ("pickle-bin-score-model", ["score", str(root / "answers_ok.jsonl"), "-o", str(keep / "scores"),
                                    "--reward-model", str(models / "pickled_rm")],
         "pickled_rm/pytorch_model.bin: refused"),
        ("output-is-folder", [*generate[:-1], str(keep / "scores"), "-m", "embedded:tiny-llama"], "is a folder"),
        ("binary-answers-file", ["score", str(root / "binary.jsonl"), "-o", str(keep / "scores")],
         "binary.jsonl: not UTF-8 text"),
        ("summary-without-models", ["report", str(keep / "nomodels")], "no 'models' list"),
        ("label-with-space", [*generate, "-m", "my model=embedded:tiny-llama"], "label 'my model'"),
        ("prompt-label-with-space", ["generate", "-m", "embedded:tiny-llama", "-p", f"my set={root / 'prompts.txt'}",
                                     "-o", str(keep / "scores" / "answers.jsonl")], "label 'my set'"),
    ]


CASE_IDS = [c[0] for c in cases({"root": Path("r"), "run": Path("r"), "recipe": Path("r"), "pairs": Path("p")})]


def midpo(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "midpo_cli.cli", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_there_are_at_least_40_kinds() -> None:
    assert len(set(CASE_IDS)) == len(CASE_IDS) >= 40


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_exits_2_with_one_line_and_touches_nothing(world: dict[str, Path], case: str) -> None:
    _, argv, culprit = next(c for c in cases(world) if c[0] == case)
    before = snapshot(world["run"], world["root"] / "keep")
    result = midpo(*argv)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0], lines[0]
    assert snapshot(world["run"], world["root"] / "keep") == before
    assert not (world["root"] / "exported").exists() and not Path("PWNED").exists()


def test_a_held_lock_refuses_standalone_stage_commands(world: dict[str, Path]) -> None:
    """A standalone command must not write into a run dir a `pipeline run` is using (item 4)."""
    import socket

    lock = world["run"] / LOCK
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                                "command": "pipeline run"}))
    try:
        before = snapshot(world["run"])
        for argv in (["train-expert", "--kind", "safety"], ["train-sft"], ["rank"], ["train-router"]):
            result = midpo(*argv, "-r", str(world["recipe"]), "--set", "stages.safety_expert.beta=0.3",
                           "--set", "stages.sft.lr=1e-3", "--set", "stages.rank.batch_size=7",
                           "--set", "stages.router.beta=0.3")
            assert result.returncode == 2 and "is in use by `pipeline run`" in result.stderr, result.stderr
        assert snapshot(world["run"]) == before
    finally:
        lock.unlink()


def test_data_show_help_renders_brackets() -> None:
    result = midpo("data", "show", "--help")
    assert result.returncode == 0, result.stderr
    assert "org/name[/config][:split]" in result.stdout.replace("\n", " ").replace("│", " ").replace("  ", " ")


def test_the_finished_run_still_plans_as_done(world: dict[str, Path]) -> None:
    """The stand-in run really is 'finished' for midpo, so the cases above exercised the re-run path."""
    result = midpo("pipeline", "plan", str(world["recipe"]), "--json")
    assert result.returncode == 0, result.stderr
    assert {row["status"] for row in json.loads(result.stdout)["stages"]} == {"done"}
    shutil.rmtree(world["root"] / "other-run", ignore_errors=True)
