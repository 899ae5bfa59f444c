"""The safety dial (`--safety-bias`, `stages.generate.safety_bias`, dial sweeps) and the per-token gate maps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from midpo_cli.errors import InputError
from midpo_cli.modeling.generation import generate_answers
from midpo_cli.stages import generate as stage

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import PROMPTS, build_midpo, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def midpo(tmp_path_factory):
    return build_midpo(tmp_path_factory.mktemp("dial"))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_bias_zero_is_no_dial_and_plus_minus_50_are_the_fixed_expert_gates(midpo) -> None:
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    plain = logits(midpo, ids)
    with midpo.safety_dial(0.0):
        assert torch.equal(logits(midpo, ids), plain)
    for bias, gates in ((50.0, (1.0, 0.0)), (-50.0, (0.0, 1.0))):
        with midpo.safety_dial(bias):
            dialled = logits(midpo, ids)
            assert all(torch.allclose(g, torch.tensor(gates), atol=1e-6) for layer in midpo.gates() for g in layer[0])
        with midpo.fixed_gates(*gates):
            fixed = logits(midpo, ids)
        torch.testing.assert_close(dialled, fixed, rtol=0, atol=1e-5)
        assert not torch.allclose(dialled, plain, atol=1e-3)  # the dial does move the model
    with midpo.safety_dial(2.0):  # in between: the safety gate opens, the helpfulness gate closes, everywhere
        logits(midpo, ids)
        up = torch.stack(midpo.gates())
    logits(midpo, ids)
    base = torch.stack(midpo.gates())
    assert bool((up[..., 0] > base[..., 0]).all()) and bool((up[..., 1] < base[..., 1]).all())


def counting_loader(model, calls: list):
    def load(entry):
        calls.append(entry.label)
        return stage.Policy(model, tiny_tokenizer(), "midpo")
    return load


def test_a_sweep_loads_its_model_once_and_records_gates_and_bias_per_row(midpo, tmp_path) -> None:
    from midpo_cli.evaluation.labels import blend_label, dial_label

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "midpo_config.json").write_text("{}")
    pset = stage.PromptSet("set", "set", [{"prompt": p, "row": i, "is_harmful": i % 2 == 0, "category": None}
                                          for i, p in enumerate(PROMPTS[:3])])
    spec = str(folder)
    entries = [stage.ModelEntry("midpo", spec),
               stage.ModelEntry(blend_label("midpo", (0.25, 0.75)), spec, (0.25, 0.75)),
               stage.ModelEntry(dial_label("midpo", 50), spec, safety_bias=50.0),
               stage.ModelEntry(blend_label("midpo", (1, 0)), spec, (1.0, 0.0))]
    calls: list = []
    out = tmp_path / "a.jsonl"
    stage.generate_to_file(entries, [pset], out, max_new_tokens=4, batch_size=2, loader=counting_loader(midpo, calls))
    assert calls == ["midpo"]
    rows = {(r["model"], r["index"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert rows[("midpo@gates=0.25,0.75", 0)]["gates"] == {"safety": 0.25, "helpfulness": 0.75}
    assert rows[("midpo@gates=0.25,0.75", 0)]["fixed_gates"] == [0.25, 0.75]
    dial = rows[("midpo@dial=+50", 1)]
    assert dial["safety_bias"] == 50.0 and dial["gates"] == pytest.approx({"safety": 1.0, "helpfulness": 0.0})
    assert dial["answer"] == rows[("midpo@gates=1,0", 1)]["answer"]  # the dial at +50 is the safety expert
    assert rows[("midpo", 0)]["safety_bias"] == 0.0 and rows[("midpo", 0)]["fixed_gates"] is None
    assert midpo.state.fixed is None and midpo.state.safety_bias == 0.0  # the model is left as it was found
    assert len({r["model_id"] for r in rows.values()}) == 4


def test_a_sweep_that_starts_with_a_blend_gives_the_dial_the_routers_not_that_blend(midpo, tmp_path) -> None:
    """load_policy applies an entry's gates as it loads; when another model sits between the router and its
    sweep (e.g. the probe switch), the folder is reloaded for its first blend, and the dial settings after it
    answered at that blend's gates (every dial point of a paper-table run scored as the base, 136 of 160 eval
    answers changed). The dial must start from the routers: at +50 it is the safety expert, not (0, 0)."""
    from midpo_cli.evaluation.labels import blend_label, dial_label

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "midpo_config.json").write_text("{}")
    pset = stage.PromptSet("set", "set", [{"prompt": p, "row": i, "is_harmful": i % 2 == 0, "category": None}
                                          for i, p in enumerate(PROMPTS[:2])])

    def loading_like_load_policy(entry):
        midpo.set_fixed_gates(entry.gates)
        midpo.set_safety_bias(entry.safety_bias)
        return stage.Policy(midpo, tiny_tokenizer(), "midpo")

    spec = str(folder)
    entries = [stage.ModelEntry(blend_label("midpo", (0, 0)), spec, (0.0, 0.0)),
               stage.ModelEntry(dial_label("midpo", 50), spec, safety_bias=50.0),
               stage.ModelEntry(blend_label("midpo", (1, 0)), spec, (1.0, 0.0))]
    out = tmp_path / "a.jsonl"
    stage.generate_to_file(entries, [pset], out, max_new_tokens=4, batch_size=2, loader=loading_like_load_policy)
    rows = {(r["model"], r["index"]): r for r in map(json.loads, out.read_text().splitlines())}
    for i in range(2):
        dial = rows[("midpo@dial=+50", i)]
        assert dial["gates"] == pytest.approx({"safety": 1.0, "helpfulness": 0.0}), dial["gates"]
        assert dial["answer"] == rows[("midpo@gates=1,0", i)]["answer"]
    assert midpo.state.fixed is None and midpo.state.safety_bias == 0.0


def test_safety_bias_applies_to_midpo_folders_only(tmp_path) -> None:
    folder = tmp_path / "mid"
    folder.mkdir()
    (folder / "midpo_config.json").write_text("{}")
    entries = stage.model_entries([f"r={folder}", "b=embedded:tiny-llama"])
    dialled = stage.apply_routing(entries, None, -1.5)
    assert [(e.label, e.safety_bias) for e in dialled] == [("r@dial=-1.5", -1.5), ("b", 0.0)]
    assert stage.apply_routing(entries, None, 0.0) == entries
    with pytest.raises(InputError, match="--safety-bias: none of the --model folders is a MidPO model"):
        stage.apply_routing(entries[1:], None, 2.0)
    with pytest.raises(InputError, match="give one of them"):
        stage.apply_routing(entries, (0.5, 0.5), 2.0)
    with pytest.raises(InputError, match="--safety-bias applies to MidPO model folders only"):
        stage.load_policy("embedded:tiny-llama", safety_bias=1.0)


def test_generate_command_safety_bias_on_a_base_model_exits_2(tmp_path) -> None:
    from midpo_cli.cli import main

    (tmp_path / "p.txt").write_text("w1 w2\n")
    code = main(["generate", "-m", "embedded:tiny-llama", "-p", str(tmp_path / "p.txt"), "-o",
                 str(tmp_path / "a.jsonl"), "--safety-bias", "2"])
    assert code == 2 and not (tmp_path / "a.jsonl").exists()


def test_recipe_safety_bias_and_dial_sweep(tmp_path) -> None:
    from midpo_cli.recipe import RecipeError, load_recipe

    cfg = load_recipe(None, ["stages.generate.safety_bias=1.5", "stages.generate.dial_sweep=[-2, 2]"]).stages.generate
    assert cfg.safety_bias == 1.5 and cfg.dial_sweep == [-2, 2]
    with pytest.raises(RecipeError, match="stages.generate.safety_bias"):
        load_recipe(None, ["stages.generate.safety_bias=nope"])


def test_gate_maps_are_the_teacher_forced_gates_of_the_generated_answer(midpo) -> None:
    prompts = [{"prompt": p, "row": i, "is_harmful": i % 2 == 0, "category": "c"} for i, p in enumerate(PROMPTS)]
    sets = [stage.PromptSet("x/eval-prompts", "e", prompts), stage.PromptSet("x/traps", "t", prompts[:4])]
    picked = stage.pick_gate_prompts(sets, 2)
    assert [(k, s.name) for k, s, _ in picked] == [("harmful", "x/eval-prompts")] * 2 + \
        [("benign", "x/eval-prompts")] * 2 + [("trap", "x/traps")] * 2
    tok = tiny_tokenizer()
    maps = stage.gate_maps(stage.Policy(midpo, tok, "midpo"), sets, per_kind=2, label="midpo", template="safe-rlhf",
                           max_new_tokens=5)
    assert maps["layers"] == list(midpo.routed) and len(maps["prompts"]) == 6
    rows = {r["index"]: r for b in generate_answers(midpo, tok, PROMPTS, max_new_tokens=5) for r in b}
    for item in maps["prompts"]:
        row = rows[item["index"]]
        k = len(item["tokens"])
        assert k == row["answer_tokens"] + row["finished"]  # EOS is a column when it was produced
        assert all(len(layer) == k for layer in item["safety"] + item["helpfulness"])
        mean_s = sum(sum(layer) for layer in item["safety"]) / (k * len(item["safety"]))
        assert mean_s == pytest.approx(row["gates"]["safety"], abs=1e-3)  # the row's gates: same steps
        if row["finished"]:
            assert item["tokens"][-1] == tok.eos_token


def test_generate_command_with_a_saved_midpo_folder_and_a_dial(tmp_path) -> None:
    from midpo_cli.commands import generate_cmd
    from midpo_cli.modeling.midpo import save_midpo

    model = build_midpo(tmp_path)
    folder = save_midpo(model, tiny_tokenizer(), tmp_path / "router", base_model=str(tmp_path / "base"))
    (tmp_path / "p.txt").write_text("w1 w2\nw3\n")
    import typer

    app = typer.Typer()
    generate_cmd.register(app)
    app.command("noop")(lambda: None)
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(app, ["generate", "-m", f"r={folder}", "-p", str(tmp_path / "p.txt"), "-o", str(out),
                                      "--max-new-tokens", "3", "--safety-bias", "50", "--template", "safe-rlhf",
                                      "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["model"] for r in rows} == {"r@dial=+50"} and all(r["safety_bias"] == 50.0 for r in rows)
    assert all(r["gates"]["safety"] == pytest.approx(1.0) for r in rows)


def test_the_stage_sweeps_25_blends_everywhere_and_the_dial_on_the_reported_sets() -> None:
    from midpo_cli.recipe import load_recipe

    cfg = load_recipe(None, ["stages.generate.dial_sweep=[-2, 1]"]).stages.generate
    refs = {name: (lambda n=name: f"/runs/{n}") for name in ("base", "safety_expert", "helpfulness_expert", "midpo")}
    sets = [stage.PromptSet(f"embedded:toy-safety/{n}", f"embedded:toy-safety/{n}", [])
            for n in ("dev-prompts", "eval-prompts", "traps")]
    entries = stage.stage_entries(cfg, refs, sets)
    blends = [e for e in entries if e.gates is not None]
    assert len(blends) == 25 and len({e.label for e in entries}) == len(entries) == 4 + 25 + 2
    assert all(e.spec == "/runs/midpo" and e.sets is None for e in blends)
    dials = [e for e in entries if "@dial=" in e.label]
    assert [(e.label, e.safety_bias) for e in dials] == [("midpo@dial=-2", -2.0), ("midpo@dial=+1", 1.0)]
    assert all(e.sets == ("embedded:toy-safety/eval-prompts", "embedded:toy-safety/traps") for e in dials)
    only = load_recipe(None, ["stages.generate.sweep_prompts=[eval-prompts]", "stages.generate.gate_sweep=[[1, 0]]"])
    entries = stage.stage_entries(only.stages.generate, refs, sets)
    assert [e.sets for e in entries if e.gates] == [("embedded:toy-safety/eval-prompts",)]
    with pytest.raises(InputError, match="sweep_prompts: 'nope'"):
        stage.stage_entries(load_recipe(None, ["stages.generate.sweep_prompts=[nope]"]).stages.generate, refs, sets)
