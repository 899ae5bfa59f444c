"""Experts chosen on dev (`stages.<expert>.select: dev`, midpo_cli.evaluation.expert_select).

The choice is the argmax of a hand-made curve with ties to the earlier step; the objective is the dev judge's share
of answers it counts as answered well (midpo_cli.evaluation.judge_labels); and one small run of the
safety expert on the tiny model keeps a snapshot every N steps, writes the curve into the manifest and saves
exactly the chosen step's weights as the adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from midpo_cli.evaluation.expert_select import best_step, objective

ROOT = Path(__file__).resolve().parents[1]


def test_best_step_is_the_argmax_with_ties_to_the_earlier_step():
    assert best_step([(10, 0.2), (20, 0.7), (30, 0.5)]) == 20
    assert best_step([(10, 0.4), (20, 0.9), (30, 0.9), (40, 0.1)]) == 20  # tie → earlier
    assert best_step([(30, 0.9), (20, 0.9), (10, 0.3)]) == 20  # the order given does not matter
    assert best_step([(5, None), (10, float("nan")), (15, 0.0)]) == 15  # unscored steps never win
    assert best_step([(5, None)]) is None


def test_objective_is_the_share_the_dev_judge_counts_as_answered_well():
    """Whatever the judge (toy, score models, guard, LLM), the expert's dev score is its outcomes' mean; an answer it
    could not judge (NaN: a failed request) is left out, not counted as a failure."""
    assert objective("safety_expert", [1.0, 0.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert objective("helpfulness_expert", [1.0, float("nan"), 1.0, 0.0]) == pytest.approx(2 / 3)
    assert objective("helpfulness_expert", []) is None and objective("safety_expert", [float("nan")]) is None


def test_recipe_needs_select_every_with_select_dev():
    from midpo_cli.recipe import Recipe

    with pytest.raises(ValueError, match="select_every"):
        Recipe.model_validate({"stages": {"safety_expert": {"select": "dev"}}})
    assert Recipe().stages.safety_expert.select == "last"


def test_select_dev_refuses_a_launcher_or_zero3_when_the_recipe_is_read():
    """The recipe alone says it: a snapshot is loaded back into one process's whole model."""
    from midpo_cli.recipe import RecipeError, load_recipe

    dev = ["stages.helpfulness_expert.select=dev", "stages.helpfulness_expert.select_every=2"]
    for other in ("launcher.kind=torchrun", "deepspeed.zero_stage=3"):
        with pytest.raises(RecipeError, match=r"stages.helpfulness_expert.select: dev runs in one process"):
            load_recipe(None, [*dev, other])
        load_recipe(None, [other])  # select: last anywhere
    load_recipe(None, [*dev, "deepspeed.zero_stage=2"])


def _slice(split: str, n: int, out: Path, *, kinds: bool = False) -> Path:
    from midpo_cli.assets import resolve_embedded

    rows = [json.loads(x) for x in resolve_embedded(f"embedded:toy-safety/{split}").read_text().splitlines() if x]
    if kinds:
        rows = [r for r in rows if r["is_harmful"]][: n // 2] + [r for r in rows if not r["is_harmful"]][: n // 2]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return out


def test_safety_expert_keeps_the_dev_best_snapshot(tmp_path):
    """A few steps on the tiny model: snapshots at 2 and 3 (the last), the curve in the manifest, the adapter
    saved with the chosen step's weights. Plain DPO and the toy judge, so no score model is needed."""
    from safetensors.torch import load_file

    train = _slice("train", 24, tmp_path / "train.jsonl")
    dev = _slice("dev-prompts", 8, tmp_path / "dev-prompts.jsonl", kinds=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""run_dir: {tmp_path / 'run'}
base_model: embedded:tiny-llama
data: {{train: {train}, eval: null, max_length: 96, template: safe-rlhf}}
train: {{batch_size: 4, lr: 5e-3, precision: fp32, log_every: 1, seed: 1}}
stages:
  sft: {{use: embedded:tiny-llama}}
  safety_expert: {{loss: dpo, max_steps: 3, select: dev, select_every: 2}}
  generate: {{prompts: [{dev}], max_new_tokens: 6, batch_size: 8}}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "--quiet", "pipeline", "run", str(recipe),
                           "--only", "sft", "--only", "safety_expert"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "run" / "safety_expert"
    manifest = json.loads((folder / "manifest.json").read_text())
    dev_select = manifest["dev_select"]
    curve = [(c["step"], c["score"]) for c in dev_select["curve"]]
    assert [s for s, _ in curve] == [2, 3] and dev_select["n_prompts"] == 4 and dev_select["judged_by"] == "toy judge"
    assert dev_select["chosen_step"] == best_step(curve) == manifest["metrics"]["chosen_step"]
    assert ("flat" in dev_select) == (len({score for _, score in curve}) == 1)  # a flat curve is said, not hidden
    snaps = {s: load_file(str(folder / "dev_select" / f"step-{s:07d}.safetensors")) for s in (2, 3)}
    assert any(not (snaps[2][k] == snaps[3][k]).all() for k in snaps[2])  # the steps differ, so the check bites
    saved = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    chosen = snaps[dev_select["chosen_step"]]
    assert set(saved) == set(chosen)
    assert all((saved[k] == chosen[k]).all() for k in chosen)
