"""Issue 40 "Nothing lost, nothing hidden": one test (or more) per item, each failing on the code before the fix.

Where an item is about files, the command runs through the real CLI on a copy of a finished run (test_bad_input's
stand-in run: manifests with midpo's own fingerprints, small stand-in artifacts) and every file of the run and
outside it is hashed before and after. Most tests load no model; the switch's save check builds the tiny LLaMA
of test_midpo_model, and the full-disk test trains test_hardening's 200-parameter model for a few steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from test_bad_input import midpo, snapshot, world  # noqa: F401 - world is a fixture

from midpo_cli.errors import InputError
from midpo_cli.manifest import write_manifest
from midpo_cli.pipeline import run as pipeline
from midpo_cli.pipeline.folders import ATTEMPT, PREVIOUS
from midpo_cli.pipeline.graph import plan
from midpo_cli.pipeline.status import stage_state
from midpo_cli.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).parent / "engine_scripts"))


@pytest.fixture
def copy(world: dict[str, Path], tmp_path: Path) -> dict[str, Path]:  # noqa: F811
    """A private copy of the finished stand-in run (run dir, recipe, data) and a folder outside it."""
    run = tmp_path / "run"
    shutil.copytree(world["run"], run, symlinks=True)
    (run / "dpo_expert").unlink()  # test_bad_input's stage-folder link, which every case below would trip over
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.yaml").write_text("a user's config\n")
    (outside / "thesis.tex").write_text("years of work\n")
    return {"run": run, "outside": outside, "recipe": world["recipe"], "root": tmp_path,
            "R": ["-r", str(world["recipe"]), "--set", f"run_dir={run}"]}


def refused_here(argv: list[str], culprit: str, *folders: Path, capsys) -> None:
    """`refused` through `cli.main` in this process, for commands that start no work before their check."""
    from midpo_cli import cli

    before = snapshot(*folders)
    capsys.readouterr()
    code = cli.main(argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert culprit in lines[0], lines[0]
    assert snapshot(*folders) == before


def refused(argv: list[str], culprit: str, *folders: Path, env: dict[str, str] | None = None) -> str:
    """`midpo ARGV` exits 2 with one `error:` line naming `culprit`, and no file under `folders` changed."""
    before = snapshot(*folders)
    result = midpo(*argv, env=env)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0], lines[0]
    assert snapshot(*folders) == before
    return lines[0]


# ------------------------------------------------------------------ files lost or moved

def test_a_linked_previous_is_refused_before_anything_moves(copy) -> None:
    """`.previous` linked to a user's folder: the finished rank files were moved through it and the user's
    config.yaml replaced."""
    (copy["run"] / "rank" / PREVIOUS).symlink_to(copy["outside"], target_is_directory=True)
    refused(["rank", *copy["R"], "--set", "stages.rank.balance=kinds"], f"rank/{PREVIOUS} is a symbolic link",
            copy["run"], copy["outside"])
    assert stage_state(copy["run"], "rank")["state"] == "refused"


@pytest.mark.parametrize("where", [ATTEMPT, "checkpoints", "checkpoints/step-1/mp_rank_00_model_states.pt",
                                   f"{PREVIOUS}/model/config.json"])
def test_a_link_anywhere_under_a_stage_folder_is_refused_by_every_path_that_moves_it(copy, where) -> None:
    """The same for a link deeper down, at each place a run moves or clears: `pipeline plan` and status say
    refused, a pipeline run and a resume of the same settings refuse it, and nothing changes."""
    from midpo_cli.pipeline.folders import prepare_folder

    folder = copy["run"] / "sft"
    link = folder / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(copy["outside"] / "config.yaml")
    recipe = load_recipe(copy["recipe"], [f"run_dir={copy['run']}"])
    fingerprint = (folder / ".fingerprint").read_text().strip()
    before = snapshot(copy["run"], copy["outside"])
    for resume in (True, False):
        with pytest.raises(InputError, match=f"sft/{where} is a symbolic link"):
            prepare_folder(folder, fingerprint, resume=resume)
    with pytest.raises(InputError, match=f"sft/{where} is a symbolic link"):
        pipeline.run_pipeline(recipe, stages=["sft"], force={"sft"})
    assert stage_state(copy["run"], "sft")["state"] == "refused" and plan(recipe, ["sft"])[0]["status"] == "refused"
    assert snapshot(copy["run"], copy["outside"]) == before


def test_a_users_file_with_a_name_like_midpos_is_refused_not_deleted(copy) -> None:
    """`score/my-figure.png` matched the own-name glob `*.png` and was deleted by a re-run of score."""
    (copy["run"] / "score" / "my-figure.png").write_bytes(b"mine")
    refused(["pipeline", "run", str(copy["recipe"]), "--set", f"run_dir={copy['run']}", "--only", "score",
             "--set", "stages.score.bootstrap=10"], "holds files midpo did not write (my-figure.png)", copy["run"])


def _recipes(run_dir: Path):
    """(a recipe, the same with other SFT settings), both on `run_dir`."""
    return load_recipe(None, [f"run_dir={run_dir}"]), load_recipe(None, [f"run_dir={run_dir}", "stages.sft.lr=1e-3"])


def _writes(names: dict[str, str], *, fail: bool = False):
    """A fake stage runner writing `names` (name → text) into its folder, then its manifest (or failing)."""
    def run(ctx) -> None:
        for name, text in names.items():
            (ctx.folder / name).write_text(text)
        if fail:
            raise RuntimeError("boom")
        record = ctx.record()
        record.outputs = {"model": ctx.rel(ctx.folder / next(iter(names)))}
        write_manifest(ctx.folder, record, {"stage": ctx.stage})

    return lambda stage: run


def test_what_a_run_wrote_is_recorded_by_exact_name_and_only_that_is_cleared(tmp_path, monkeypatch) -> None:
    """A name a stage writes that is not one of midpo's fixed names (`extra.png`) is recorded in the folder's
    `.written.json` and moves with the result; a user's file is never taken for one of them."""
    old, new = _recipes(tmp_path)
    folder = tmp_path / "sft"
    monkeypatch.setattr(pipeline, "runner", _writes({"w": "A", "extra.png": "A's figure"}))
    pipeline.run_stage(old, "sft", resume=True)
    assert json.loads((folder / ".written.json").read_text()) == {"names": ["extra.png", "w"]}
    monkeypatch.setattr(pipeline, "runner", _writes({"w": "B"}, fail=True))
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run_stage(new, "sft", resume=True)
    assert (folder / "extra.png").read_text() == "A's figure" and (folder / "w").read_text() == "A"
    (folder / "extra2.png").write_text("mine")
    with pytest.raises(InputError, match=r"holds files midpo did not write \(extra2.png\)"):
        pipeline.run_stage(new, "sft", resume=True)
    assert (folder / "extra2.png").read_text() == "mine"


def test_a_failure_after_the_first_checkpoint_keeps_the_finished_result_in_place(tmp_path, monkeypatch) -> None:
    """The router trained, then an error found after training (a bad dev file) left the finished router in
    `router/.previous/`. Now the finished result stays in place, the attempt (its checkpoint) waits in
    `.attempt/`, and plan says the run will resume it."""
    old, new = _recipes(tmp_path)
    folder = tmp_path / "sft"
    monkeypatch.setattr(pipeline, "runner", _writes({"model": "A"}))
    pipeline.run_stage(old, "sft", resume=True)
    finished = snapshot(folder)

    def trains_then_fails(ctx) -> None:
        (ctx.folder / "checkpoints" / "step-2").mkdir(parents=True)
        (ctx.folder / "checkpoints" / "latest").write_text("step-2\n")
        raise InputError("the dev prompts are missing (found after training)")

    monkeypatch.setattr(pipeline, "runner", lambda stage: trains_then_fails)
    with pytest.raises(InputError, match="found after training"):
        pipeline.run_stage(new, "sft", resume=True)
    assert {k: v for k, v in snapshot(folder).items() if not k.startswith(f"sft/{ATTEMPT}")} == finished
    assert (folder / ATTEMPT / "checkpoints" / "latest").is_file()
    assert plan(old, ["sft"])[0]["status"] == "done"
    row = plan(new, ["sft"])[0]
    assert row["status"] == "will resume" and f"sft/{ATTEMPT}/" in row["why"]


# ------------------------------------------------------------------ the router displaced: checked before training

def test_a_missing_dev_file_of_the_switch_is_refused_before_the_router_trains(copy) -> None:
    """A learned router with probe_switch among the models and a dev prompt file that does not exist trained, then
    exited 2 with the finished router moved aside: preflight took the missing file for a hub set and skipped it."""
    refused(["train-router", *copy["R"], "--set", "stages.generate.models=[base, midpo, probe_switch]",
             "--set", "stages.generate.prompts=[./missing-dev-prompts.jsonl]"], "missing-dev-prompts.jsonl",
            copy["run"])


def test_switch_prompts_of_one_kind_are_refused_before_the_router_trains(copy) -> None:
    """Training data of one prompt kind failed in the switch's fit, after training, with a bare ValueError
    (exit 1). Rank's output is read before anything moves."""
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0, "safer_response_id": 0,
           "is_response_0_safe": True, "is_response_1_safe": True, "is_harmful": True}  # the router keeps it
    (copy["run"] / "rank" / "dual.jsonl").write_text("".join(json.dumps({**row, "prompt": f"p{i}"}) + "\n"
                                                             for i in range(3)))
    refused(["train-router", *copy["R"], "--set", "stages.router.kind=probe", "--set", "stages.router.switch=soft"],
            "these are all 3 harmful", copy["run"])


def test_the_switch_is_reloaded_and_checked_before_it_is_renamed_into_place(tmp_path, monkeypatch) -> None:
    """save_switch used save_midpo, unchecked: a switch that reloads with other weights still exited 0."""
    import torch
    from test_midpo_model import build, routed, tiny_tokenizer
    from test_probe_switch import make_switch

    from midpo_cli.errors import ArtifactCheckError
    from midpo_cli.modeling.midpo import load_midpo
    from midpo_cli.modeling.switch import ProbeSwitch
    from midpo_cli.stages.router import save_switch

    base, adapters = build(tmp_path)
    model = routed(base, adapters)
    switch = make_switch(model, "hard", threshold=0.4)
    ids = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "response_mask": (torch.arange(9) >= 6).long().expand(2, 9)}
    kw = dict(policy=str(base), safety_dir=adapters["safety"], help_dir=adapters["helpfulness"], template="safe-rlhf",
              probe_batch=probe)
    save_switch(model, switch, tiny_tokenizer(), tmp_path / "switch", **kw)
    assert load_midpo(tmp_path / "switch")[0].switch.threshold == 0.4 and model.switch is None

    real_load = ProbeSwitch.load.__func__

    def reloads_other_weights(cls, folder, config):
        loaded = real_load(cls, folder, config)
        loaded.bias = loaded.bias + 1.0
        return loaded

    monkeypatch.setattr(ProbeSwitch, "load", classmethod(reloads_other_weights))
    with pytest.raises(ArtifactCheckError):
        save_switch(model, switch, tiny_tokenizer(), tmp_path / "switch2", **kw)
    assert not (tmp_path / "switch2").exists() and model.switch is None


# ------------------------------------------------------------------ hangs

def test_generate_into_a_fifo_fails_fast(tmp_path) -> None:
    """`generate -o FIFO` blocked forever reading the FIFO to resume it."""
    fifo = tmp_path / "answers.jsonl"
    os.mkfifo(fifo)
    (tmp_path / "prompts.txt").write_text("Hello?\n")
    refused(["generate", "-m", "embedded:tiny-llama", "-p", str(tmp_path / "prompts.txt"), "-o", str(fifo)],
            "answers.jsonl: is not a regular file", tmp_path)


# ------------------------------------------------------------------ silent wrong results

def test_a_flat_dev_curve_is_said_with_what_it_means() -> None:
    from midpo_cli.evaluation.expert_select import best_step, flat_curve

    curve = [(1, 0.0), (2, 0.0), (3, 0.0)]
    note = flat_curve(curve)
    assert best_step(curve) == 1 and note is not None
    assert "flat (0.000 at all 3 steps)" in note and "least trained" in note and "no right answer" in note
    assert "do not tell the steps apart" in flat_curve([(1, 1.0), (2, 1.0)])
    assert flat_curve([(1, 0.0), (2, 0.5)]) is None and flat_curve([(1, 0.0), (2, None)]) is None


def _ran(monkeypatch) -> list[str]:
    ran: list[str] = []

    def fake(stage):
        def run(ctx) -> None:
            ran.append(stage)
            (ctx.folder / "x").write_text(stage)
            record = ctx.record()
            record.outputs = {"artifact": ctx.rel(ctx.folder / "x")}
            write_manifest(ctx.folder, record, {"stage": stage})
        return run

    monkeypatch.setattr(pipeline, "runner", fake)
    return ran


def test_plan_run_and_status_share_one_notion_of_done(tmp_path, monkeypatch) -> None:
    """A deleted artifact: status said incomplete while plan and run skipped the stage as done. A manifest holding
    a list or bad JSON planned as "not run yet" or "will resume". A file where a stage folder goes showed as
    started."""
    ran = _ran(monkeypatch)
    recipe = load_recipe(None, [f"run_dir={tmp_path}"])
    stages = ["sft", "reward_model", "cost_model"]
    pipeline.run_pipeline(recipe, stages=stages)
    (tmp_path / "sft" / "x").unlink()
    (tmp_path / "reward_model" / "manifest.json").write_text("[1]")
    (tmp_path / "cost_model" / "manifest.json").write_text("{not json")
    rows = {r["stage"]: r for r in plan(recipe, stages)}
    for stage, state in (("sft", "incomplete"), ("reward_model", "corrupt"), ("cost_model", "corrupt")):
        assert stage_state(tmp_path, stage)["state"] == state
        assert rows[stage]["status"] == "will run" and rows[stage]["why"].startswith(f"{state}: "), rows[stage]
    ran.clear()
    pipeline.run_pipeline(recipe, stages=stages)
    assert ran == stages and {stage_state(tmp_path, s)["state"] for s in stages} == {"done"}

    (tmp_path / "rank").write_text("a file where a stage folder goes")
    assert stage_state(tmp_path, "rank")["state"] == "refused"
    assert plan(recipe, ["rank"])[0]["status"] == "refused"
    with pytest.raises(InputError, match="rank is a file"):
        pipeline.run_pipeline(recipe, stages=["rank"])


def test_plan_says_will_resume_and_will_restore_only_when_the_run_does(tmp_path, monkeypatch) -> None:
    """An `.attempt/` of the settings wanted is resumed (plan said "will run"); one without a checkpoint starts
    over; a finished result of these settings in `.previous/` is restored, not run."""
    ran = _ran(monkeypatch)
    old, new = _recipes(tmp_path)
    pipeline.run_pipeline(old, stages=["sft"])
    want = plan(new, ["sft"])[0]["fingerprint"]
    attempt = tmp_path / "sft" / ATTEMPT
    attempt.mkdir()
    (attempt / ".fingerprint").write_text(want + "\n")
    assert plan(new, ["sft"])[0]["status"] == "will run"  # no checkpoint in it: the run starts over
    (attempt / "checkpoints").mkdir()
    (attempt / "checkpoints" / "latest").write_text("step-1\n")
    assert plan(new, ["sft"])[0]["status"] == "will resume"
    pipeline.run_pipeline(new, stages=["sft"])
    assert ran == ["sft", "sft"] and not attempt.exists()

    def interrupted(ctx) -> None:  # old settings again: the new result waits in .previous
        from midpo_cli.errors import Interrupted

        (ctx.folder / "checkpoints").mkdir()
        (ctx.folder / "checkpoints" / "latest").write_text("step-1\n")
        raise Interrupted("stop")

    monkeypatch.setattr(pipeline, "runner", lambda stage: interrupted)
    with pytest.raises(Exception, match="stop"):
        pipeline.run_pipeline(old, stages=["sft"])
    assert plan(new, ["sft"])[0]["status"] == "will restore"
    ran = _ran(monkeypatch)
    pipeline.run_pipeline(new, stages=["sft"])
    assert ran == [] and stage_state(tmp_path, "sft")["state"] == "done"


def test_an_empty_run_dir_is_refused(tmp_path, capsys) -> None:
    """`run_dir: ""` wrote the stages into the working directory."""
    from midpo_cli import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text('run_dir: ""\n')
    assert cli.main(["recipe", "check", str(recipe)]) == 2
    assert "r.yaml:1 run_dir: must not be empty" in capsys.readouterr().err


def test_a_recipe_over_1_mib_is_refused(tmp_path, capsys) -> None:
    """The bound docs/reliability.md states ("at most 1 MiB"), shown."""
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (1 << 17) + "run_dir: x\n")
    refused_here(["recipe", "check", str(big)], f"big.yaml: {big.stat().st_size} bytes; a recipe is at most 1048576",
                 tmp_path, capsys=capsys)


def test_recipe_show_does_not_replace_a_dangling_link(tmp_path, capsys) -> None:
    link = tmp_path / "mine.yaml"
    link.symlink_to(tmp_path / "nowhere.yaml")
    refused_here(["recipe", "show", "quickstart", "--to", str(link)], "mine.yaml: exists", tmp_path, capsys=capsys)


# ------------------------------------------------------------------ wrong exit code or wrong culprit

def test_output_paths_under_a_regular_file_are_refused_before_any_work(copy, capsys) -> None:
    """`FileExistsError` / `NotADirectoryError` (exit 1), `score -o` after its scoring."""
    root, run = copy["root"], copy["run"]
    (root / "a_file").write_text("not a folder")
    answers = root / "answers.jsonl"
    answers.write_text(json.dumps({"model": "m", "prompt_set": "p", "index": 0, "prompt": "q", "answer": "a"}) + "\n")
    (root / "prompts.txt").write_text("Hello?\n")
    under = root / "a_file" / "x"
    for argv in (["recipe", "show", "quickstart", "--to", str(under)],
                 ["export", str(run / "router" / "model"), "--midpo", "--to", str(under)],
                 ["generate", "-m", "embedded:tiny-llama", "-p", str(root / "prompts.txt"), "-o", str(under)],
                 ["score", str(answers), "-o", str(under)]):
        refused_here(argv, f"{root / 'a_file'} is a file", root, capsys=capsys)


def test_a_corrupt_upstream_is_named_as_status_names_it(copy) -> None:
    """`train-router` called rank "missing" where status calls it corrupt."""
    (copy["run"] / "rank" / "manifest.json").write_text("[1]")
    refused(["train-router", *copy["R"]], "needs rank (corrupt: ", copy["run"])


def test_a_summary_holding_a_list_is_named_by_the_card(tmp_path) -> None:
    """`export --midpo` exited 1 (AttributeError) on a run whose records hold `[1]`."""
    from midpo_cli.evaluation.model_card import _router_metrics, _run_sections

    (tmp_path / "score").mkdir()
    (tmp_path / "score" / "summary.json").write_text("[1]")
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "manifest.json").write_text('{"metrics": [1]}')
    assert _router_metrics(tmp_path) == []
    with pytest.raises(InputError, match=r"summary.json: holds a JSON list, not an object"):
        _run_sections(tmp_path)


@pytest.mark.parametrize(("key", "culprit"), [
    ("stages.baseline_ties.weights=[[1e308, 1]]", "stages.baseline_ties.weights: each entry must be"),
    ("stages.baseline_ties.density=1e-9", "stages.baseline_ties.density: must be >= 0.01"),
    ("stages.baseline_modpo.weights=[1e308, 1]", "stages.baseline_modpo.weights: must be [w_helpfulness"),
    ("stages.baseline_modpo.weights=[1e-300, 1]", "w_safety / w_helpfulness <= 100"),
    ("stages.baseline_safedpo.delta=1e308", "stages.baseline_safedpo.delta: must be <= 100"),
    ("stages.baseline_dpo_safe.beta=1e308", "stages.baseline_dpo_safe.beta: must be <= 100"),
])
def test_the_baselines_keys_have_the_experts_bounds(key, culprit, capsys) -> None:
    from midpo_cli import cli

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert cli.main(["recipe", "check", "--set", "run_dir=x", "--set", key, str(recipe)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and culprit in err[0], err


def test_a_full_disk_while_saving_a_checkpoint_exits_2_and_the_rerun_resumes(tmp_path, monkeypatch) -> None:
    """torch's zip writer raises RuntimeError, not OSError(ENOSPC), on a full disk: exit 1. Now the OSError the
    CLI says in one line (exit 2); the cut-off step folder is gone and the rerun resumes from the last whole one."""
    import torch
    from tiny import collate, loss_fn, make_data, make_model

    from midpo_cli.cli import disk_full_message
    from midpo_cli.engine.loop import train
    from midpo_cli.engine.settings import EngineSettings

    settings = EngineSettings(max_steps=4, batch_size=8, checkpoint={"every_steps": 1, "keep": 5},
                              eval_each_epoch=False, log_every=100)
    real_save = torch.save

    def full_at_step_3(obj, path, *args, **kwargs):
        if "step-3" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_3)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 << 30, 100 << 30, 0))
    with pytest.raises(OSError) as caught:
        train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn, settings=settings,
              out_dir=tmp_path, stage_name="tiny")
    assert caught.value.errno == errno.ENOSPC and "no space left" in disk_full_message(caught.value)
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step-2" and not (ckpt / "step-3").exists()
    monkeypatch.undo()
    result = train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn, settings=settings,
                   out_dir=tmp_path, stage_name="tiny")
    assert result.resumed_from_step == 2 and result.global_step == 4


@pytest.mark.parametrize("tail", [b'{"mode', b"{", b'{"model": "m", "prompt_s'])
def test_a_partial_last_answer_row_of_any_length_is_cut_off_on_resume(tmp_path, tail, capsys) -> None:
    """A full disk during generate left `{"mode` (6 bytes); the resume refused it as not an answers file."""
    from midpo_cli.evaluation.answers import read_answers

    row = json.dumps({"model": "m", "prompt_set": "p", "index": 0, "answer": "a"}) + "\n"
    path = tmp_path / "answers.jsonl"
    path.write_bytes(row.encode() + tail)
    assert [r["index"] for r in read_answers(path)] == [0]
    assert path.read_bytes() == row.encode() and "dropping a partial last line" in capsys.readouterr().err


def test_a_resume_with_another_template_names_the_template(tmp_path) -> None:
    from midpo_cli.data.prompt_sets import PromptSet
    from midpo_cli.recipe import GenerationSettings
    from midpo_cli.stages.generate import ModelEntry, generate_to_file

    gen = GenerationSettings().model_dump(exclude={"batch_size"})
    out = tmp_path / "answers.jsonl"
    out.write_text(json.dumps({"model": "m", "prompt_set": "p", "index": 0, "answer": "a", "template": "chat",
                               "gen": gen, "gen_id": "written-in-chat"}) + "\n")
    pset = PromptSet("p", "p", [{"prompt": "q", "row": 0}])
    with pytest.raises(InputError, match=r"other settings \(template 'chat' → 'safe-rlhf'\)"):
        generate_to_file([ModelEntry("m", "embedded:tiny-llama")], [pset], out, template="safe-rlhf",
                         loader=lambda e: pytest.fail("no model loads before the check"))


def test_adapter_base_errors_name_midpo_json_and_the_base_given(tmp_path) -> None:
    """An adapter alone in a folder: "no such file or folder: <a path never given>"; a copied adapter whose
    recorded base is the one given: "... use <the same folder>"."""
    from test_midpo_model import build, load_base

    from midpo_cli.modeling.lora import MIDPO_META, adapter_base, check_adapter_base

    base, adapters = build(tmp_path)
    adapter = adapters["safety"]
    meta = {"base_model": os.path.relpath(base, adapter), "base_model_relative": True, "base_fingerprint": "other"}
    (adapter / MIDPO_META).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="is where midpo.json says its base is, but its weights are not"):
        check_adapter_base(adapter, load_base(base), base_name=str(base), source=str(base))
    alone = tmp_path / "alone" / "adapter"
    shutil.copytree(adapter, alone)
    with pytest.raises(InputError, match=r"alone/adapter/midpo.json: records the base as .* does not exist"):
        adapter_base(alone, check=True)


def test_a_model_label_with_a_slash_is_an_error_about_the_label(tmp_path, capsys) -> None:
    (tmp_path / "prompts.txt").write_text("Hello?\n")
    refused_here(["generate", "-m", "my/model=embedded:tiny-llama", "-p", str(tmp_path / "prompts.txt"),
                  "-o", str(tmp_path / "a.jsonl")], "label 'my/model'", tmp_path, capsys=capsys)


# ------------------------------------------------------------------ the exit-code table (docs/reliability.md)

@pytest.mark.parametrize(("error", "code"), [
    (InputError("bad input"), 2), (OSError(errno.ENOSPC, "No space left on device", "f"), 2),
    ("training", 3), ("artifact", 3), ("gate", 4), ("interrupted", 130), (ValueError("a bug"), 1),
])
def test_each_error_kind_exits_with_its_code_and_one_error_line(error, code, monkeypatch, capsys) -> None:
    """What the exit-code table of docs/reliability.md says, through the CLI's one error mapping."""
    from midpo_cli import cli, errors

    made = {"training": errors.TrainingError("loss is nan at step 3"),
            "artifact": errors.ArtifactCheckError("probe outputs differ"),
            "gate": errors.GateError("pair_accuracy below min_accuracy"),
            "interrupted": errors.Interrupted("interrupted at step 3")}.get(error, error)

    def raises(*args, **kwargs):
        raise made

    monkeypatch.setattr("midpo_cli.recipe.load_recipe", raises)
    assert cli.main(["recipe", "check", "r.yaml"]) == code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[0].startswith("error: ") and len(err) == (1 if code == 2 else 2), err  # else: the --debug hint


def test_a_score_model_below_its_audit_floor_is_refused_with_exit_code_4(tmp_path) -> None:
    from midpo_cli.errors import GateError
    from midpo_cli.stages.kit.context import StageContext
    from midpo_cli.stages.kit.inputs import require_audit

    recipe = load_recipe(None, [f"run_dir={tmp_path}", "stages.cost_model.min_accuracy=0.7"])
    audit = {"pair_accuracy": 0.9, "sign_accuracy": 0.65}
    ctx = StageContext(recipe, "rank", tmp_path / "rank", {"cost_model": {"audit": audit}}, "f")
    with pytest.raises(GateError, match="sign_accuracy = 0.650 on the eval split is below "
                                        "stages.cost_model.min_accuracy = 0.7") as caught:
        require_audit(ctx, "cost_model")
    assert caught.value.exit_code == 4
