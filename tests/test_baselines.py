"""The baselines as stages (issue 29): each trains a few steps on the tiny model through the experts' code path,
with the cached reference only, resumes bit for bit, saves a plain PEFT adapter; the TIES merge is peft's; bad
input stops before any stage folder is touched."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "engine_scripts"))

from faults import faulty_step  # noqa: E402

from midpo_cli.errors import Interrupted  # noqa: E402
from midpo_cli.manifest import read_manifest  # noqa: E402
from midpo_cli.recipe import load_recipe  # noqa: E402

TRAINED = ("dpo_helpful", "dpo_safe", "modpo", "safedpo")


def _sets(root: Path, base: Path, pairs: Path) -> list[str]:
    return [f"run_dir={root}", f"stages.sft.use={base}", f"data.train={pairs}",
            f"data.eval={pairs.with_name('eval.jsonl')}", "data.max_length=48", "data.template=safe-rlhf",
            "train.max_steps=2", "train.batch_size=2",
            "train.precision=fp32", "train.eval_each_epoch=false", "stages.cost_model.min_accuracy=0",
            "stages.helpfulness_expert.loss=dpo", "stages.helpfulness_expert.lora.r=4",
            "stages.helpfulness_expert.lora.target_modules=[down_proj]",
            "stages.safety_expert.lora.r=4", "stages.safety_expert.lora.target_modules=[down_proj]",
            "stages.baseline_ties.weights=[[0.5,0.5],[1,1]]", "stages.baseline_ties.method=ties_svd",
            f"stages.baselines=[{','.join((*TRAINED, 'ties'))}]"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A run dir with sft (a saved tiny base), the cost model and both experts, a couple of steps each."""
    from midpo_cli.assets import resolve_embedded
    from midpo_cli.commands.stage_cmds import execute
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("baselines")
    pairs = root / "pairs.jsonl"
    lines = resolve_embedded("embedded:toy-safety/train").read_text().splitlines()
    pairs.write_text("\n".join(lines[:16]) + "\n")
    (root / "eval.jsonl").write_text("\n".join(lines[16:24]) + "\n")
    base = root / "base"
    load_causal_lm("embedded:tiny-llama", seed=3).save_pretrained(base)
    load_tokenizer("embedded:tiny-llama").save_pretrained(base)
    run = root / "run"
    upstream_steps = [f"stages.{s}.max_steps=1" for s in ("cost_model", "safety_expert", "helpfulness_expert")]
    recipe = load_recipe(None, [*_sets(run, base, pairs), *upstream_steps])
    for stage in ("sft", "cost_model", "safety_expert", "helpfulness_expert"):
        execute(stage, recipe, resume=True)
    return {"root": root, "base": base, "pairs": pairs, "run": run}


def _recipe(upstream, run: Path, *extra: str):
    steps = [f"stages.{s}.max_steps=1" for s in ("cost_model", "safety_expert", "helpfulness_expert")]
    return load_recipe(None, [*_sets(run, upstream["base"], upstream["pairs"]), *steps, *extra])


@pytest.fixture(scope="module")
def trained(upstream):
    """Every trained baseline run once; the training step's reference context must never be entered, and the
    reference log-probs computed for the baselines are counted (the experts filled the shared cache)."""
    from midpo_cli.commands.stage_cmds import execute
    from midpo_cli.engine import preference
    from midpo_cli.stages import expert

    computed: dict[str, int] = {}
    original_fill, original_loss = preference.fill_ref_logps, expert.make_pair_loss
    current = {"stage": None}

    def counting_fill(*args, **kwargs):
        features, n = original_fill(*args, **kwargs)
        computed[current["stage"]] = computed.get(current["stage"], 0) + n
        return features, n

    def no_reference():
        raise AssertionError("a second reference forward inside a training step")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preference, "fill_ref_logps", counting_fill)
        mp.setattr(expert, "make_pair_loss", lambda loss, reference: original_loss(loss, no_reference))
        recipe = _recipe(upstream, upstream["run"])
        for kind in TRAINED:
            current["stage"] = f"baseline_{kind}"
            execute(f"baseline_{kind}", recipe, resume=True)
        current["stage"] = "baseline_ties"
        execute("baseline_ties", recipe, resume=True)
    return {"computed": computed, "run": upstream["run"]}


def test_each_baseline_trains_with_the_cached_reference_only(trained) -> None:
    run = trained["run"]
    for kind in TRAINED:
        manifest = read_manifest(run / f"baseline_{kind}")
        # max_steps 1 is inherited from the expert (train: says 2)
        assert manifest["metrics"]["steps"] == 1 and manifest["metrics"]["train_loss"] > 0
        live = manifest["live_parameters_during_training"]
        assert live["top_level_models"] == 1  # the policy alone: no reference copy, no score model
    # dpo_helpful, modpo and safedpo train on the helpfulness expert's sequences, dpo_safe on the safety
    # expert's: every reference log-prob was already in the shared cache
    assert trained["computed"] == {f"baseline_{k}": 0 for k in TRAINED}


def test_the_objective_is_the_only_difference(trained) -> None:
    run = trained["run"]
    metas = {k: json.loads((run / f"baseline_{k}" / "adapter" / "midpo.json").read_text()) for k in TRAINED}
    expert = json.loads((run / "helpfulness_expert" / "adapter" / "midpo.json").read_text())
    for meta in metas.values():
        assert meta["base_fingerprint"] == expert["base_fingerprint"] and meta["beta"] == expert["beta"]
        config = json.loads((run / f"baseline_{meta['kind']}" / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["target_modules"] == ["down_proj"]
    assert metas["modpo"]["weights"] == {"helpfulness": 0.5, "safety": 0.5}
    assert metas["modpo"]["score_model"] and metas["safedpo"]["delta"] == 2.0
    modpo = read_manifest(run / "baseline_modpo")["margins"]
    assert modpo["mode"] == "modpo" and 0 <= modpo["winner_safer_fraction"] <= 1


def test_every_baseline_adapter_loads_with_plain_peft(trained, upstream) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = trained["run"]
    folders = [run / f"baseline_{k}" / "adapter" for k in TRAINED]
    folders += sorted((run / "baseline_ties" / "adapters").iterdir())
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    base = AutoModelForCausalLM.from_pretrained(upstream["base"]).eval()
    with torch.no_grad():
        plain = base(ids).logits
    for folder in folders:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(upstream["base"]), str(folder)).eval()
        with torch.no_grad():
            assert not torch.equal(model(ids).logits, plain), folder  # the adapter does something


def test_ties_merge_equals_peft_on_the_experts(trained, upstream) -> None:
    """The saved candidates are peft's add_weighted_adapter of the two expert adapters, tensor for tensor."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    run = trained["run"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(upstream["base"]),
                                           str(run / "safety_expert" / "adapter"), adapter_name="safety")
    peft_model.load_adapter(str(run / "helpfulness_expert" / "adapter"), adapter_name="helpfulness")
    manifest = read_manifest(run / "baseline_ties")
    assert sorted(manifest["outputs"]["candidates"]) == ["ties@gates=0.5,0.5", "ties@gates=1,1"]
    for i, weights in enumerate(([0.5, 0.5], [1.0, 1.0])):
        name = f"merged{i}"
        torch.manual_seed(0)
        peft_model.add_weighted_adapter(["safety", "helpfulness"], weights, name, combination_type="ties_svd",
                                        density=0.5)
        want = get_peft_model_state_dict(peft_model, adapter_name=name)
        got = load_file(str(run / "baseline_ties" / "adapters" / f"{weights[0]:g}-{weights[1]:g}"
                            / "adapter_model.safetensors"))
        assert sorted(got) == sorted(want) and got
        assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)
        assert not all(torch.allclose(got[k], peft_model.state_dict()[k.replace(".weight", ".safety.weight")])
                       for k in got)  # not simply one expert


@pytest.mark.parametrize("kind", ["dpo_helpful", "dpo_safe", "modpo", "safedpo"])
def test_every_trained_baseline_resumes_bit_for_bit(upstream, tmp_path, monkeypatch, kind) -> None:
    """4 steps straight vs SIGINT after step 2 + resume: the same adapter, tensor for tensor."""
    from midpo_cli.commands.stage_cmds import execute
    from midpo_cli.engine import loop

    stage = f"baseline_{kind}"
    steps = (f"stages.{stage}.max_steps=4", f"stages.{stage}.checkpoint={{every_steps: 2}}")
    runs = {}
    for name in ("full", "interrupted"):
        runs[name] = tmp_path / name
        shutil.copytree(upstream["run"], runs[name], ignore=shutil.ignore_patterns("baseline_*"))
    execute(stage, _recipe(upstream, runs["full"], *steps), resume=True)
    monkeypatch.setattr(loop, "train_step", faulty_step("sigint", 2))
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted):
        execute(stage, _recipe(upstream, runs["interrupted"], *steps), resume=True)
    assert signal.getsignal(signal.SIGINT) is previous
    monkeypatch.undo()
    execute(stage, _recipe(upstream, runs["interrupted"], *steps), resume=True)
    assert read_manifest(runs["interrupted"] / stage)["resumed_from_step"] == 2
    a, b = (load_file(str(runs[n] / stage / "adapter" / "adapter_model.safetensors")) for n in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "orpo"], "'orpo' is not one of"),
    (["--kind", "modpo", "--set", "stages.baselines=[orpo]"], "stages.baselines.0: must be one of dpo_helpful"),
    (["--kind", "modpo", "--set", "stages.baseline_modpo.weights=[0, 0]"], "must sum to a positive number"),
    (["--kind", "modpo", "--set", "stages.baseline_modpo.weights=[-1, 2]"], "two finite numbers >= 0"),
    (["--kind", "modpo"], "needs cost_model"),
    (["--kind", "ties"], "needs safety_expert, helpfulness_expert"),
])
def test_bad_input_is_one_line_exit_2_and_touches_no_stage_folder(tmp_path, capfd, args, message) -> None:
    from midpo_cli.cli import main
    from midpo_cli.manifest import StageRecord, write_manifest

    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    write_manifest(run / "sft", StageRecord(stage="sft", fingerprint="x", inputs={}, started=0.0), {})
    assert main(["train-baseline", *args, "--set", f"run_dir={run}"]) == 2
    err = " ".join(capfd.readouterr().err.split())  # one message, however the terminal wraps it
    assert message in err and "Traceback" not in err, err
    assert sorted(p.name for p in run.iterdir()) == ["sft"]


def test_export_and_chat_take_a_baseline_as_they_take_an_expert(trained, tmp_path) -> None:
    from peft import PeftModel

    from midpo_cli.cli import app
    from midpo_cli.modeling.loading import load_causal_lm

    adapter = trained["run"] / "baseline_safedpo" / "adapter"
    to = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(adapter), "--to", str(to), "--adapters", "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads((to / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((to / "base").resolve())
    peft = PeftModel.from_pretrained(load_causal_lm(str(to / "base")), str(to / "adapter")).eval()
    direct = PeftModel.from_pretrained(load_causal_lm(str(trained["run"].parent / "base")), str(adapter)).eval()
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        assert torch.allclose(peft(ids).logits, direct(ids).logits, atol=1e-5)
    answer = CliRunner().invoke(app, ["chat", str(adapter), "--json", "--max-new-tokens", "4"], input="Hello?\n")
    assert answer.exit_code == 0, answer.output
    assert isinstance(json.loads(answer.stdout)["answer"], str)


def test_the_pipeline_runs_listed_baselines_only_and_generate_answers_them(tmp_path) -> None:
    from types import SimpleNamespace

    from midpo_cli.pipeline.graph import dependencies, select_stages
    from midpo_cli.stages.kit.inputs import baseline_models

    recipe = load_recipe(None, [f"run_dir={tmp_path}", "stages.baselines=[modpo,ties]"])
    stages = select_stages(recipe=recipe)
    assert [s for s in stages if s.startswith("baseline_")] == ["baseline_modpo", "baseline_ties"]
    assert stages.index("baseline_ties") < stages.index("generate")
    assert not any(s.startswith("baseline_") for s in select_stages(recipe=load_recipe(None, [])))
    assert select_stages(only=["baseline_safedpo"], recipe=recipe) == ["baseline_safedpo"]  # on request
    assert dependencies(recipe, "generate")[-2:] == ("baseline_modpo", "baseline_ties")
    candidates = {"ties@gates=0.5,0.5": "baseline_ties/adapters/0.5-0.5",
                  "ties@gates=1,1": "baseline_ties/adapters/1-1"}
    inputs = {"baseline_modpo": {"outputs": {"adapter": "baseline_modpo/adapter"}},
              "baseline_ties": {"outputs": {"adapter": "baseline_ties/adapters/0.5-0.5", "candidates": candidates}}}
    ctx = SimpleNamespace(recipe=recipe, inputs=inputs, run_dir=tmp_path,
                          input_path=lambda stage, key: tmp_path / inputs[stage]["outputs"][key])
    assert baseline_models(ctx, ("dev-prompts",)) == [
        ("modpo", str(tmp_path / "baseline_modpo/adapter"), None),
        ("ties@gates=0.5,0.5", str(tmp_path / "baseline_ties/adapters/0.5-0.5"), ("dev-prompts",)),
        ("ties@gates=1,1", str(tmp_path / "baseline_ties/adapters/1-1"), ("dev-prompts",))]


def test_dare_ties_is_seeded(trained, upstream) -> None:
    """DARE drops delta entries at random: the stage seeds it, so the same seed gives the same adapter."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from midpo_cli.stages.merge import merge_experts

    run = trained["run"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(upstream["base"]),
                                      str(run / "safety_expert" / "adapter"), adapter_name="safety")
    model.load_adapter(str(run / "helpfulness_expert" / "adapter"), adapter_name="helpfulness")
    got = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        merge_experts(model, (1.0, 1.0), method="dare_ties", density=0.5, name=name, seed=seed)
        got[name] = get_peft_model_state_dict(model, adapter_name=name)
    assert all(torch.equal(got["a"][k], got["b"][k]) for k in got["a"])
    assert not all(torch.equal(got["a"][k], got["c"][k]) for k in got["a"])
