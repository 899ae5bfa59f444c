"""The recipe names its dev prompt set once (midpo_cli.stages.kit.dev_set): blend, switch threshold and expert
step all read the set resolved here, and score chooses the best blend on the same name."""

from __future__ import annotations

from pathlib import Path

import pytest

from midpo_cli.errors import InputError
from midpo_cli.recipe import load_recipe
from midpo_cli.stages.kit.dev_set import dev_prompt_spec, dev_set_name, require_dev_prompts

ROOT = Path(__file__).resolve().parents[1]


def recipe(*sets: str):
    return load_recipe(None, list(sets))


def test_the_set_ending_in_dev_prompts_is_the_dev_set():
    r = recipe()
    assert dev_prompt_spec(r) is None  # the default generate prompts: eval only
    r = recipe("stages.generate.prompts=[embedded:toy-safety/eval-prompts, embedded:toy-safety/dev-prompts]")
    assert dev_prompt_spec(r) == "embedded:toy-safety/dev-prompts" == dev_set_name(r)
    r = recipe("stages.generate.prompts=[runs/x/data/dev-prompts.jsonl, runs/x/data/eval-prompts.jsonl]")
    assert dev_prompt_spec(r) == "runs/x/data/dev-prompts.jsonl" and dev_set_name(r) == "dev-prompts"
    r = recipe("stages.generate.prompts=[mydev=a/b.jsonl, b/c.jsonl]", "stages.score.select_on=mydev")
    assert dev_prompt_spec(r) == "mydev=a/b.jsonl" and dev_set_name(r) == "mydev"


def test_ambiguous_or_missing_dev_sets_are_named():
    r = recipe("stages.generate.prompts=[a/dev-prompts.jsonl, b/dev-prompts.jsonl]")
    with pytest.raises(InputError, match="2 sets end in dev-prompts"):
        dev_prompt_spec(r)
    r = recipe("stages.score.select_on=nosuch")
    with pytest.raises(InputError, match="select_on 'nosuch': no entry"):
        dev_prompt_spec(r)
    with pytest.raises(InputError, match="stages.safety_expert.select: dev chooses on the dev prompt set"):
        require_dev_prompts(recipe(), "stages.safety_expert.select: dev")


def test_shipped_recipes_name_their_dev_set():
    assert dev_set_name(load_recipe(ROOT / "recipes/quickstart.yaml")) == "embedded:toy-safety/dev-prompts"
    assert dev_set_name(load_recipe(ROOT / "recipes/local-model-cpu.yaml")) == "dev-prompts"


def test_preflight_names_a_dev_choice_without_a_dev_set():
    from midpo_cli.pipeline.preflight import check_dev_set

    bare = recipe("stages.safety_expert.select=dev", "stages.safety_expert.select_every=5")
    with pytest.raises(InputError, match="stages.safety_expert.select: dev chooses on the dev prompt set"):
        check_dev_set(bare, "safety_expert")
    check_dev_set(bare, "helpfulness_expert")  # select: last there
    with pytest.raises(InputError, match="hard probe switch"):
        check_dev_set(recipe("stages.router.kind=probe"), "router")
    check_dev_set(recipe("stages.router.kind=probe", "stages.router.switch=soft"), "router")
    check_dev_set(recipe("stages.router.kind=probe", "stages.generate.prompts=[embedded:toy-safety/dev-prompts]"),
                  "router")
    # a dev set that looks like a file but is missing is reported now, not left to a hub lookup at the stage
    with pytest.raises(InputError, match="stages.generate.prompts: file not found: x/dev-prompts.jsonl"):
        check_dev_set(recipe("stages.router.kind=probe", "stages.generate.prompts=[x/dev-prompts.jsonl]"), "router")


def test_the_hard_switch_needs_both_kinds_in_the_dev_set_before_anything_runs(tmp_path):
    """A dev slice of one kind made the router stage fail after training (ValueError, exit 1): preflight says
    so first, naming the set; with both kinds it passes."""
    from midpo_cli.pipeline.preflight import check_dev_set

    src = (ROOT / "midpo_cli/assets/toy-safety/dev-prompts.jsonl").read_text(encoding="utf-8").splitlines()
    harmful = [ln for ln in src if '"is_harmful": true' in ln]
    benign = [ln for ln in src if '"is_harmful": false' in ln]
    one_kind, both = tmp_path / "one" / "dev-prompts.jsonl", tmp_path / "both" / "dev-prompts.jsonl"
    for path, lines in ((one_kind, harmful[:4]), (both, harmful[:2] + benign[:2])):
        path.parent.mkdir()
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    models = "stages.generate.models=[base, midpo, probe_switch]"
    with pytest.raises(InputError, match=r"need both harmful and benign prompts .*they have: harmful$"):
        check_dev_set(recipe(models, f"stages.generate.prompts=[{one_kind}]"), "router")
    check_dev_set(recipe(models, f"stages.generate.prompts=[{both}]"), "router")
    check_dev_set(recipe(f"stages.generate.prompts=[{one_kind}]"), "router")  # no switch: nothing to choose


def test_preflight_needs_the_experts_kind_in_a_local_dev_set(tmp_path):
    """`select: dev` judges the safety expert on the harmful dev prompts: a local set without one is refused before
    the stage folder is touched, naming the set; the helpfulness expert (benign prompts) passes on it."""
    from midpo_cli.pipeline.preflight import check_dev_set

    src = (ROOT / "midpo_cli/assets/toy-safety/dev-prompts.jsonl").read_text(encoding="utf-8").splitlines()
    benign = tmp_path / "dev-prompts.jsonl"
    benign.write_text("\n".join([ln for ln in src if '"is_harmful": false' in ln][:3]) + "\n", encoding="utf-8")
    on = [f"stages.generate.prompts=[{benign}]"]
    for stage in ("safety_expert", "helpfulness_expert"):
        on += [f"stages.{stage}.select=dev", f"stages.{stage}.select_every=5"]
    with pytest.raises(InputError, match=r"dev-prompts.jsonl: no harmful prompts .*stages.safety_expert.select: dev"):
        check_dev_set(recipe(*on), "safety_expert")
    check_dev_set(recipe(*on), "helpfulness_expert")
