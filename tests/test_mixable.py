"""Experts that mix (docs/design.md §2.12): `lora.shared_a` freezes lora_A at its seeded init, so the two experts
share one A and differ in B alone; the recipe refuses a shared_a that cannot give equal A's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from midpo_cli.cli import main
from midpo_cli.modeling.loading import load_causal_lm
from midpo_cli.modeling.lora import adapter_off, add_lora, freeze_lora_a, lora_config
from midpo_cli.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_a_frozen_a_stays_at_its_init_while_b_trains() -> None:
    model = add_lora(load_causal_lm("embedded:tiny-llama", seed=0), lora_config(r=4, alpha=8), seed=7)
    frozen = freeze_lora_a(model)
    a_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}
    assert frozen == len(a_before) > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(".lora_B." in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if ".lora_A." in n:
            assert torch.equal(p, a_before[n]), n
        elif ".lora_B." in n:
            assert p.abs().sum() > 0, n  # B starts at zero; it moved


def test_the_reference_pass_leaves_a_frozen_a_frozen() -> None:
    """peft's disable_adapter marks the whole adapter trainable on exit; adapter_off (the experts' π_ref) restores
    what it found, so a shared A stays out of the gradients and the checkpoints."""
    model = add_lora(load_causal_lm("embedded:tiny-llama", seed=0), lora_config(r=4, alpha=8), seed=7)
    freeze_lora_a(model)
    with adapter_off(model):
        pass
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_A." in n)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_B." in n)
    with model.disable_adapter():  # the behaviour adapter_off exists for
        pass
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_A." in n)


def test_freezing_a_model_without_lora_a_is_an_error() -> None:
    with pytest.raises(ValueError, match="no lora_A"):
        freeze_lora_a(load_causal_lm("embedded:tiny-llama", seed=0))


SHARED = ["stages.safety_expert.lora.shared_a=true", "stages.helpfulness_expert.lora.shared_a=true"]


@pytest.mark.parametrize(("extra", "culprit"), [
    (["stages.helpfulness_expert.lora.shared_a=false"], "lora.shared_a"),
    (["stages.safety_expert.lora.r=8"], "lora.r"),
    (["stages.safety_expert.lora.target_modules=[q_proj]"], "lora.target_modules"),
    (["stages.helpfulness_expert.seed=3"], "seeds differ"),
])
def test_shared_a_that_cannot_give_equal_a_is_refused(extra: list[str], culprit: str) -> None:
    with pytest.raises(RecipeError, match=culprit):
        load_recipe(None, [*SHARED, *extra])


def test_shared_a_on_both_experts_with_the_same_seed_is_accepted() -> None:
    recipe = load_recipe(None, [*SHARED, "train.seed=5"])
    assert recipe.stages.safety_expert.lora.shared_a and recipe.stages.helpfulness_expert.lora.shared_a


def test_the_two_experts_trained_with_shared_a_hold_one_a_and_different_b(tmp_path) -> None:
    run = tmp_path / "run"
    sets = [f"run_dir={run}", "stages.sft.enabled=false", "data.train=embedded:toy-safety/train@32", *SHARED,
            "data.eval=embedded:toy-safety/test@16", "train.eval_each_epoch=false"]
    for expert in ("safety_expert", "helpfulness_expert"):
        sets += [f"stages.{expert}.{key}" for key in ("loss=dpo", "select=last", "batch_size=4", "max_steps=2")]
    sets.append("stages.helpfulness_expert.precompute_ref=false")  # a reference pass inside every step
    args = [a for s in sets for a in ("--set", s)]
    only = [a for s in ("sft", "safety_expert", "helpfulness_expert") for a in ("--only", s)]
    assert main(["pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), *only, *args]) == 0
    safety, helpful = (load_file(run / e / "adapter" / "adapter_model.safetensors")
                       for e in ("safety_expert", "helpfulness_expert"))
    a_keys = [k for k in safety if ".lora_A." in k]
    assert a_keys and all(torch.equal(safety[k], helpful[k]) for k in a_keys)
    assert any(not torch.equal(safety[k], helpful[k]) for k in safety if ".lora_B." in k)
