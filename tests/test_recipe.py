"""Recipe schema: typed overrides, inheritance, and every error reported at once with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from midpo_cli.recipe import TRAINING_STAGES, Recipe, RecipeError, load_recipe, parse_value

BAD = """\
run_dir: runs/x
train:
  lr: 1e-4
  epochs: two
  learning_rat: 3
stages:
  router:
    granularity: sentence
"""


def test_three_mistakes_reported_together_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert problems == [
        f"{path}:4 train.epochs: must be an integer, got 'two'",
        f"{path}:5 train.learning_rat: unknown key; allowed: activation_checkpointing, batch_size, checkpoint, "
        "epochs, eval_batch_size, eval_each_epoch, eval_every, grad_accum, log_every, lr, max_grad_norm, max_steps, "
        "precision, scheduler, seed, share_prompt, warmup_ratio, weight_decay",
        f"{path}:8 stages.router.granularity: must be one of token, prompt, got 'sentence'",
    ]
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3e-5", 3e-5), ("1e-4", 1e-4), ("2", 2), ("true", True), ("[0, 1]", [0, 1]), ("token", "token"),
     ("null", None), ("0.5", 0.5)],
)
def test_override_values_are_typed(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_set_overrides_and_stage_inheritance() -> None:
    recipe = load_recipe(None, ["train.lr=3e-5", "stages.safety_expert.lr=3e-4", "train.epochs=3"])
    assert recipe.train.lr == 3e-5
    assert recipe.train_settings("safety_expert").lr == 3e-4
    assert recipe.train_settings("safety_expert").epochs == 3  # inherited
    assert recipe.train_settings("router").lr == 3e-5


def test_yaml_floats_without_dot_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 1e-4\nstages:\n  router:\n    lr: 1E-2\n")
    recipe = load_recipe(path)
    assert recipe.train.lr == 1e-4 and recipe.train_settings("router").lr == 1e-2


def test_bad_override_names_the_flag() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(None, ["stages.router.beta=0", "stages.rank.rule=vibes"])
    assert sorted(info.value.problems) == [
        "--set stages.rank.rule: must be one of joint, expert, models, labels, agree, got 'vibes'",
        "--set stages.router.beta: must be > 0.0, got 0",
    ]


def test_strings_are_not_coerced_to_numbers() -> None:
    with pytest.raises(RecipeError, match="train.lr: must be a number"):
        load_recipe(None, ["train.lr='0.1'"])


def test_gate_sweep_validated() -> None:
    with pytest.raises(RecipeError, match=r"stages.generate.gate_sweep"):
        load_recipe(None, ["stages.generate.gate_sweep=[[0, 1.5]]"])
    ok = load_recipe(None, ["stages.generate.gate_sweep=[[0, 1], [0.5, 0.5]]"])
    assert ok.stages.generate.gate_sweep == [[0, 1], [0.5, 0.5]]


def test_resolved_fills_every_training_stage() -> None:
    resolved = load_recipe(None, ["train.batch_size=4"]).resolved()
    for stage in TRAINING_STAGES:
        assert resolved["stages"][stage]["batch_size"] == 4
    assert Recipe.model_validate({}).base_model == "embedded:tiny-llama"


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(Exception, match=rf"{path}:\d+: invalid YAML"):
        load_recipe(path)


def test_missing_file() -> None:
    with pytest.raises(Exception, match="recipe file not found: nope.yaml"):
        load_recipe("nope.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(path: Path) -> None:
    recipe = load_recipe(path)
    for stage in TRAINING_STAGES:
        assert recipe.train_settings(stage).lr > 0


def test_paper_recipe_matches_the_paper_setting() -> None:
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "paper-alpaca7b.yaml")
    expert = recipe.stages.safety_expert
    assert (expert.lora.r, expert.lora.alpha, expert.lora.target_modules) == (16, 32.0, ["down_proj"])
    settings = recipe.train_settings("safety_expert")
    assert (settings.lr, settings.epochs, settings.batch_size, settings.precision) == (1e-5, 3, 4, "bf16")
    assert (recipe.deepspeed.zero_stage, recipe.launcher.kind, expert.beta) == (1, "deepspeed", 0.1)
    assert recipe.stages.reward_model.use == "PKU-Alignment/beaver-7b-unified-reward"


def test_one_list_of_training_settings() -> None:
    """TrainOverrides and EngineSettings are derived from TrainSettings: a key, a check or a default added to one
    and not the others fails here."""
    from midpo_cli.engine.settings import EngineSettings
    from midpo_cli.recipe import TrainOverrides, TrainSettings
    from midpo_cli.stages.kit.inputs import engine_settings

    train = TrainSettings.model_fields
    overrides = TrainOverrides.model_fields
    assert list(overrides) == list(train)
    for key, info in train.items():
        assert overrides[key].default is None and overrides[key].metadata == info.metadata, key
        assert overrides[key].annotation == info.annotation | None, key
    for stage in TRAINING_STAGES:  # every training stage takes every key
        assert set(train) <= set(type(getattr(Recipe().stages, stage)).model_fields), stage

    resolved, engine_only = {"precision"}, {"zero_stage", "deepspeed_config", "offload", "tensorboard", "report_to"}
    engine = EngineSettings.model_fields
    assert set(engine) == set(train) | engine_only
    for key in set(train) - resolved:
        assert engine[key].annotation == train[key].annotation and engine[key].metadata == train[key].metadata, key
    assert EngineSettings().model_dump(exclude=resolved | engine_only) == TrainSettings().model_dump(exclude=resolved)
    assert EngineSettings().warmup_ratio == 0.03  # the recipe's default, the one every stage has always used

    recipe = load_recipe(None, ["train.warmup_ratio=0.2", "stages.router.lr=3e-3",
                                "stages.router.checkpoint={every_steps: 5}", "deepspeed.zero_stage=2"])
    settings = engine_settings(recipe, "router")
    assert settings.model_dump(exclude=resolved | engine_only) == recipe.train_settings("router").model_dump(
        exclude=resolved)
    assert (settings.lr, settings.warmup_ratio, settings.checkpoint.every_steps, settings.zero_stage) == (
        3e-3, 0.2, 5, 2)
    with pytest.raises(RecipeError, match=r"stages.sft.warmup_ratio: must be < 1.0, got 1.5"):
        load_recipe(None, ["stages.sft.warmup_ratio=1.5"])


def test_reference_passes_batch_size() -> None:
    """Reference log-probs run at `eval_batch_size`, else twice the training batch, else (with activation
    checkpointing, memory before time) the training batch."""
    from midpo_cli.engine.settings import EngineSettings

    assert EngineSettings(batch_size=8).reference_batch_size == 16
    assert EngineSettings(batch_size=8, activation_checkpointing=True).reference_batch_size == 8
    assert EngineSettings(batch_size=8, eval_batch_size=3, activation_checkpointing=True).reference_batch_size == 3
