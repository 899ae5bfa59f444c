"""Your own model and data (docs/own-data.md): the split held out by prompt, the kind rules, `midpo recipe new`,
prompt sets by role, the whole-run preflight, a failed audit failing its own stage, HF/TRL key names, shipped
recipes by name. The end-to-end run of a written recipe is tests/test_own_data_e2e.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midpo_cli.cli import main
from midpo_cli.data.split import HARM_RULES, UNSAFE_RULE, Sizes, prompt_kind, quotas, split_pairs
from midpo_cli.errors import InputError
from midpo_cli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
PAIR = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id", "is_response_0_safe",
        "is_response_1_safe")


def pku_rows(n: int = 60) -> list[dict]:
    """n toy-world pairs in PKU-SafeRLHF's seven columns only (no is_harmful, no category)."""
    from midpo_cli.data.readers import load_rows

    return [{c: r[c] for c in PAIR} for r in load_rows(f"embedded:toy-safety/train@{n}").rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(prompt: str, safe0: bool = True, safe1: bool = True, **extra) -> dict:
    return {"prompt": prompt, "response_0": f"a to {prompt}", "response_1": f"b to {prompt}", "better_response_id": 0,
            "safer_response_id": 1, "is_response_0_safe": safe0, "is_response_1_safe": safe1, **extra}


# ------------------------------------------------------------------------------------------------ the split


def test_no_prompt_is_in_two_parts_and_every_pair_goes_with_its_prompt() -> None:
    """Prompts repeat (three pairs for some, padded with spaces once): all of a prompt's pairs land in one part."""
    rows = pku_rows(60)
    rows += [{**rows[i], "prompt": rows[i]["prompt"] + "  ", "response_0": "other"} for i in range(0, 30, 3)]
    rows += [{**rows[i], "response_1": "again"} for i in range(1, 30, 3)]
    split = split_pairs(rows, Sizes(dev=6, eval=6, test_fraction=0.1, seed=3))
    parts = {"train": {r["prompt"].strip() for r in split.train}, "test": {r["prompt"].strip() for r in split.test},
             "dev": {p["prompt"] for p in split.dev}, "eval": {p["prompt"] for p in split.eval}}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not parts[a] & parts[b], (a, b, parts[a] & parts[b])
    assert len(split.dev) == len(parts["dev"]) == 6 and len(parts["eval"]) == 6
    every = {r["prompt"].strip() for r in rows}
    assert set().union(*parts.values()) == every  # nothing lost
    per_prompt = {p: sum(1 for r in rows if r["prompt"].strip() == p) for p in parts["train"] | parts["test"]}
    assert len(split.train) + len(split.test) == sum(per_prompt.values())


def test_the_same_inputs_give_the_same_split_and_another_seed_another() -> None:
    rows = pku_rows(60)
    one, two = split_pairs(rows, Sizes(seed=7)), split_pairs(list(rows), Sizes(seed=7))
    assert (one.train, one.test, one.dev, one.eval) == (two.train, two.test, two.dev, two.eval)
    other = split_pairs(rows, Sizes(seed=8))
    assert {p["prompt"] for p in other.dev} != {p["prompt"] for p in one.dev}


def test_a_prompts_kind_follows_the_documented_rules_in_order() -> None:
    """Rule 1, the data's own prompt label (three column spellings), beats rule 2, an unsafe response; a prompt
    with every response labelled safe is benign; no label at all is unlabelled."""
    assert prompt_kind([pair("p", is_harmful=False, safe0=False)]) == (False, "is_harmful")  # own label wins
    assert prompt_kind([pair("p", is_harmful="true")]) == (True, "is_harmful")
    assert prompt_kind([pair("p", prompt_harm_label="harmful")]) == (True, "prompt_harm_label")
    assert prompt_kind([pair("p", prompt_harm_label="unharmful", safe1=False)]) == (False, "prompt_harm_label")
    assert prompt_kind([pair("p", prompt_label="unsafe")]) == (True, "prompt_label")
    assert prompt_kind([pair("p"), pair("p", safe1=False)]) == (True, UNSAFE_RULE)  # any pair of the prompt
    assert prompt_kind([pair("p"), pair("p")]) == (False, UNSAFE_RULE)
    assert prompt_kind([pair("p", is_harmful=False), pair("p", is_harmful=True)]) == (True, "is_harmful")
    unlabelled = {**pair("p"), "is_response_0_safe": None, "is_response_1_safe": "maybe"}
    assert prompt_kind([unlabelled]) == (None, "unlabelled")


def test_the_split_counts_the_prompts_each_rule_labelled_and_writes_the_kind_on_every_row() -> None:
    rows = ([pair(f"own {i}", is_harmful=i % 2 == 0) for i in range(10)]
            + [pair(f"wild {i}", prompt_harm_label="harmful" if i % 2 else "unharmful") for i in range(6)]
            + [pair(f"pku {i}", safe1=i % 2 == 0) for i in range(20)])
    split = split_pairs(rows, Sizes(dev=4, eval=4, test_fraction=0.1))
    assert split.rules == {"is_harmful": 10, "prompt_harm_label": 6, "prompt_label": 0, UNSAFE_RULE: 20,
                           "unlabelled": 0}
    assert list(split.rules) == list(HARM_RULES)
    for row in split.train + split.test + split.dev + split.eval:
        name, i = row["prompt"].split()
        expected = {"own": int(i) % 2 == 0, "wild": int(i) % 2 == 1, "pku": int(i) % 2 == 1}[name]
        assert row["is_harmful"] is expected, row


def test_dev_and_eval_hold_both_kinds_and_spread_the_categories() -> None:
    """36 harmful and 4 benign prompts in 4 categories: dev and eval each get a benign prompt, and the train part
    keeps every category."""
    rows = [pair(f"h{i}", safe1=False, category=f"c{i % 4}") for i in range(36)]
    rows += [pair(f"b{i}", category=f"c{i}") for i in range(4)]
    split = split_pairs(rows, Sizes(dev=5, eval=5, test_fraction=0.1))
    for part in (split.dev, split.eval):
        assert {p["is_harmful"] for p in part} == {True, False}
    assert {r["category"] for r in split.train} == {"c0", "c1", "c2", "c3"}
    assert quotas(5, {True: 36, False: 4}) == {True: 4, False: 1}
    assert quotas(2, {True: 1, False: 9, None: 3}) == {True: 1, False: 1, None: 0}


def test_small_parts_are_cautioned_and_large_ones_are_not() -> None:
    from midpo_cli.pipeline.new_recipe import audit_floor, small_split_cautions

    assert small_split_cautions(40, 40, 40) == [] and small_split_cautions(0, 20, 20) == []  # no test split: no audit
    assert [c.split(":")[1].split()[0] for c in small_split_cautions(4, 19, 30)] == ["4", "19"]
    preset = {"min_accuracy": 0.6}
    assert [audit_floor(preset, n) for n in (0, 4, 19, 20, 500)] == [0.6, 0.0, 0.0, 0.6, 0.6]


def test_too_few_prompts_for_the_parts_is_one_error_naming_the_flags() -> None:
    with pytest.raises(InputError, match="10 distinct prompts are too few .*--dev, --eval or --test-fraction"):
        split_pairs([pair(f"p{i}") for i in range(10)], Sizes(dev=5, eval=4))
    with pytest.raises(InputError, match="missing column 'safer_response_id'"):
        split_pairs([{k: v for k, v in pair("p").items() if k != "safer_response_id"}], Sizes())


# ------------------------------------------------------------------------------------------- recipe new


def new(tmp_path: Path, *flags: str, data: Path | None = None, capsys=None) -> int:
    data = data or write_jsonl(tmp_path / "pku.jsonl", pku_rows(60))
    return main(["recipe", "new", "--model", "embedded:tiny-llama", "--data", str(data),
                 "--to", str(tmp_path / "my.yaml"), *flags])


def test_recipe_new_writes_a_recipe_that_checks_and_the_same_bytes_again(tmp_path, capsys) -> None:
    assert new(tmp_path) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"midpo pipeline run {tmp_path / 'my.yaml'}"  # the one command, on stdout
    assert "59 by either response labelled unsafe" in err and "dev 5 prompts" in err
    said = " ".join(err.split())  # the console wraps at 80 columns
    assert "caution: 6 test pairs cannot audit the score models (one pair moves their accuracy by 17 %)" in said
    assert "caution: 5 dev and 5 eval prompts" in said
    written = {p.name: p.read_bytes() for p in [tmp_path / "my.yaml", *(tmp_path / "my-data").iterdir()]}
    assert set(written) == {"my.yaml", "train.jsonl", "test.jsonl", "dev.jsonl", "eval.jsonl"}
    recipe = load_recipe(tmp_path / "my.yaml")
    assert recipe.data.dev_prompts == str(tmp_path / "my-data" / "dev.jsonl") and recipe.stages.router.kind == "probe"
    assert recipe.stages.safety_expert.select == "dev" and recipe.stages.sft.answers == "better"  # no chat template
    assert recipe.stages.reward_model.min_accuracy == recipe.stages.cost_model.min_accuracy == 0  # 6 test pairs
    assert main(["recipe", "check", str(tmp_path / "my.yaml")]) == 0
    assert new(tmp_path) == 0  # same inputs: same files, nothing rewritten
    assert "every file was already up to date" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in [tmp_path / "my.yaml", *(tmp_path / "my-data").iterdir()]} == written
    assert new(tmp_path, "--seed", "1") == 2  # other content: refused, nothing changed
    assert "exist with other content; pass --force" in capsys.readouterr().err
    assert (tmp_path / "my.yaml").read_bytes() == written["my.yaml"]
    assert new(tmp_path, "--seed", "1", "--force") == 0
    assert (tmp_path / "my-data" / "dev.jsonl").read_bytes() != written["dev.jsonl"]


def test_recipe_new_reads_a_save_to_disk_folder_and_a_columns_mapping(tmp_path, capsys) -> None:
    """A hub-style dataset (save_to_disk, a DatasetDict) whose columns have other names."""
    from datasets import Dataset, DatasetDict

    names = {"prompt": "question", "response_0": "answer_a", "response_1": "answer_b"}
    rows = [{names.get(k, k): v for k, v in r.items()} for r in pku_rows(48)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hub"))
    code = new(tmp_path, "--columns", "prompt=question,response_0=answer_a,response_1=answer_b", "--sft", "off",
               data=tmp_path / "hub")
    assert code == 0, capsys.readouterr().err
    train = [json.loads(x) for x in (tmp_path / "my-data" / "train.jsonl").read_text().splitlines()]
    assert set(train[0]) == {*PAIR, "is_harmful"}  # midpo's names: the recipe needs no mapping
    recipe = load_recipe(tmp_path / "my.yaml")
    assert recipe.data.columns == {} and recipe.stages.sft.enabled is False and recipe.data.sft is None
    assert main(["recipe", "check", str(tmp_path / "my.yaml")]) == 0


def test_sft_is_off_for_a_model_with_a_chat_template(tmp_path) -> None:
    from midpo_cli.assets import resolve_embedded
    from midpo_cli.modeling.files import has_chat_template

    model = tmp_path / "chat-model"
    model.mkdir()
    for f in resolve_embedded("embedded:tiny-llama").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    (model / "model.safetensors").write_bytes(b"")  # a weight file: not refused as weightless
    assert has_chat_template(str(model)) is True and has_chat_template("embedded:tiny-llama") is False
    from midpo_cli.pipeline.new_recipe import NewOptions, sft_setting

    opts = NewOptions(model=str(model), data="x", to=tmp_path / "r.yaml")
    assert sft_setting(opts, tmp_path / "t.jsonl")[0] == "off"
    assert sft_setting(NewOptions(model="org/not-downloaded", data="x", to=tmp_path / "r.yaml"),
                       tmp_path / "t.jsonl")[0] == "pairs"


def test_a_dev_set_of_one_kind_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    data = write_jsonl(tmp_path / "all-safe.jsonl", [pair(f"p{i}") for i in range(30)])
    assert new(tmp_path, data=data) == 2
    assert "needs harmful and benign prompts" in capsys.readouterr().err
    assert not (tmp_path / "my.yaml").exists()


# --------------------------------------------------------------------------------------- roles and preflight


def test_prompt_sets_by_role_are_what_generate_answers_and_the_dev_set_every_choice_reads(tmp_path) -> None:
    from midpo_cli.pipeline.graph import stage_config
    from midpo_cli.stages.kit.dev_set import dev_prompt_spec, dev_set_name

    r = load_recipe(None, ["data.dev_prompts=d/mine.jsonl", "data.eval_prompts=e/report.jsonl",
                           "stages.generate.prompts=[x/extra.jsonl]"])
    assert r.prompt_sets() == ["d/mine.jsonl", "e/report.jsonl", "x/extra.jsonl"]
    assert dev_prompt_spec(r) == "d/mine.jsonl" and dev_set_name(r) == "mine"
    assert load_recipe(None).prompt_sets() == ["embedded:toy-safety/eval-prompts"]  # no set named: as before
    with pytest.raises(InputError, match="select_on 'other' is not data.dev_prompts"):
        dev_prompt_spec(load_recipe(None, ["data.dev_prompts=d/mine.jsonl", "stages.score.select_on=other"]))
    # a role counts for the stages that read it only, and an unset role leaves every fingerprint as it was
    assert "dev_prompts" not in stage_config(r, "reward_model")["data"]
    assert stage_config(r, "generate")["data"]["eval_prompts"] == ["e/report.jsonl"]
    assert "dev_prompts" not in stage_config(load_recipe(None), "generate")["data"]


def broken_recipe(tmp_path: Path) -> list[str]:
    """A run whose early stages are fine and whose later ones name two missing prompt files."""
    return [f"run_dir={tmp_path / 'run'}", "data.train=embedded:toy-safety/train@64",
            "data.eval=embedded:toy-safety/test@32", "data.sft=embedded:toy-safety/sft@64",
            f"data.dev_prompts={tmp_path / 'nope' / 'dev.jsonl'}", f"data.eval_prompts=[{tmp_path / 'eval.jsonl'}]",
            "stages.safety_expert.select=dev", "stages.safety_expert.select_every=2"]


def test_run_plan_and_check_report_each_missing_file_of_a_later_stage_before_any_stage_starts(tmp_path,
                                                                                               capsys) -> None:
    sets = [a for s in broken_recipe(tmp_path) for a in ("--set", s)]
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    assert main(["pipeline", "run", recipe, *sets]) == 2
    err = capsys.readouterr().err
    assert f"safety_expert: data.dev_prompts: file not found: {tmp_path / 'nope' / 'dev.jsonl'}" in err
    assert f"data.eval_prompts: file not found: {tmp_path / 'eval.jsonl'}" in err  # generate's second set too
    assert not (tmp_path / "run" / "sft").exists()  # nothing trained, no stage folder touched
    assert main(["pipeline", "plan", recipe, *sets, "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    assert rows["sft"]["status"] == "will run" and rows["reward_model"]["status"] == "will run"
    assert rows["safety_expert"]["status"] == "will fail" and "nope/dev.jsonl" in rows["safety_expert"]["why"]
    assert rows["generate"]["status"] == "will fail" and "file not found" in rows["generate"]["why"]
    assert main(["recipe", "check", recipe, *sets]) == 2
    err = capsys.readouterr().err
    assert "problems with what the run needs" in err and "safety_expert: data.dev_prompts" in err
    (tmp_path / "nope").mkdir()
    write_jsonl(tmp_path / "nope" / "dev.jsonl", [{"prompt": "a", "is_harmful": True}, {"prompt": "b",
                                                                                        "is_harmful": False}])
    assert main(["recipe", "check", recipe, *sets]) == 2  # the eval set is still missing, and said
    assert f"data.eval_prompts: file not found: {tmp_path / 'eval.jsonl'}" in capsys.readouterr().err


def test_local_model_cpu_resolves_with_only_base_model_set(capsys) -> None:
    """Its toy slices ship with midpo: every file it names exists, and the whole run passes its preflight."""
    recipe = load_recipe(REPO / "recipes" / "local-model-cpu.yaml", ["base_model=embedded:tiny-llama"])
    assert recipe.data.train == "embedded:toy-safety/train@400" and len(recipe.prompt_sets()) == 3
    assert main(["recipe", "check", "local-model-cpu", "--set", "base_model=embedded:tiny-llama"]) == 0
    header = (REPO / "recipes" / "local-model-cpu.yaml").read_text().split("run_dir:")[0]
    assert "(`use:`, below)" not in header  # it promised `use:` lines the recipe lacks; it shows them now
    assert "--set stages.reward_model.use=" in header and "--set stages.cost_model.use=" in header


def test_embedded_slices_are_balanced_and_checked() -> None:
    from midpo_cli.data.readers import load_rows

    rows = load_rows("embedded:toy-safety/dev-prompts@10").rows
    assert [r["is_harmful"] for r in rows] == [True, False] * 5
    with pytest.raises(InputError, match="has only 160 rows"):
        load_rows("embedded:toy-safety/dev-prompts@161")
    with pytest.raises(InputError, match="written NAME@N"):
        load_rows("embedded:toy-safety/dev-prompts@x")


# ------------------------------------------------------------------------------------------------ audits


def test_a_failed_audit_fails_its_own_stage_with_exit_4_and_status_says_why(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    sets = [f"run_dir={run}", "stages.sft.enabled=false", "data.train=embedded:toy-safety/train@32",
            "data.eval=embedded:toy-safety/test@16", "stages.cost_model.max_steps=1", "stages.cost_model.lr=1e-6",
            "stages.cost_model.batch_size=8", "stages.cost_model.min_accuracy=0.99", "stages.cost_model.epochs=1",
            "train.eval_each_epoch=false", "stages.safety_expert.batch_size=4"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), "--only", "sft", "--only",
                 "cost_model", "--only", "safety_expert", *args]) == 4
    err = capsys.readouterr().err
    assert "audit pair_accuracy = " in err and "is below stages.cost_model.min_accuracy = 0.99" in err
    assert not (run / "cost_model" / "manifest.json").exists() and not (run / "safety_expert").exists()
    assert main(["pipeline", "status", str(run), "--json"]) == 0
    state = {r["stage"]: r for r in json.loads(capsys.readouterr().out)["stages"]}["cost_model"]
    assert state["state"] == "failed" and "audit pair_accuracy" in state["why"]
    assert "stages.cost_model.min_accuracy" in state["why"]


# ------------------------------------------------------------------------------------ what users type


@pytest.mark.parametrize(("typed", "suggested"), [
    ("train.per_device_train_batch_size", "'batch_size'"), ("learning_rate", "'train.lr'"),
    ("output_dir", "'run_dir'"), ("model_name_or_path", "'base_model'"),
    ("stages.sft.gradient_accumulation_steps", "'grad_accum'"), ("train.num_train_epochs", "'epochs'"),
    ("stages.safety_expert.lora_r", "'lora.r'"), ("data.dataset_name", "'train'"),
])
def test_hugging_face_and_trl_key_names_suggest_midpos(typed: str, suggested: str) -> None:
    from midpo_cli.recipe import RecipeError

    with pytest.raises(RecipeError, match=rf"{typed}: unknown key \(did you mean {suggested}\?\)"):
        load_recipe(None, [f"{typed}=1"])


def test_pipeline_commands_take_a_shipped_recipe_by_name(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "plan", "quickstart", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == "runs/quickstart"
    assert main(["pipeline", "plan", "nosuch"]) == 2
    assert "shipped recipes, by name: " in capsys.readouterr().err
