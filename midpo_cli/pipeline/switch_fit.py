"""The probe switch inside the router stage (`stages.router.kind: probe`, or `probe_switch` among the generate
stage's models): fit the probe on D_dual's prompts or on every prompt rank scored (`switch_prompts`), choose
its threshold on the recipe's dev prompts, save it as a MidPO model folder that `generate`, `chat` and `export`
load like the router's (midpo_cli.modeling.switch).

The threshold (hard switch): both corners (1, 0) and (0, 1) answer every dev prompt, greedy, with the generate
stage's settings; each answer's outcome is the toy judge's where the set has one, else the score models'
(harmful prompts: c < 0; benign: r > 0); midpo_cli.evaluation.probe_switch.choose_threshold keeps the best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.evaluation.probe import fit_probe_parameters
from midpo_cli.evaluation.probe_switch import choose_threshold
from midpo_cli.modeling.switch import ProbeSwitch
from midpo_cli.pipeline.context import StageContext


def fit_switch(train_x: torch.Tensor, train_y: list[bool], mode: str) -> ProbeSwitch:
    if len(set(train_y)) < 2:
        raise ValueError("the probe switch needs harmful and benign training prompts")
    return ProbeSwitch(*fit_probe_parameters(train_x, train_y), mode=mode, threshold=0.5)


@torch.no_grad()
def prompt_text_features(model: Any, tokenizer: Any, template: str, texts: list[str],
                         batch_size: int = 32) -> torch.Tensor:
    """`MidpoModel.routed_input_means` of each prompt as generate will see it (template-encoded, no answer)."""
    from midpo_cli.data.tokenize import encode_prompts, pad_sequences

    ids, _ = encode_prompts(texts, tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(ids), batch_size):
        seqs = ids[start:start + batch_size]
        batch = pad_sequences(seqs, [len(s) for s in seqs], pad)
        mask = batch["attention_mask"].to(model.device)
        out.append(model.routed_input_means(batch["input_ids"].to(model.device), mask, mask.bool()))
    return torch.cat(out)


def prompt_probabilities(model: Any, switch: ProbeSwitch, tokenizer: Any, template: str, texts: list[str],
                         batch_size: int = 32) -> list[float]:
    """p(harmful) of each prompt as generate will see it (template-encoded, no answer)."""
    return switch.probability(prompt_text_features(model, tokenizer, template, texts, batch_size)).tolist()


def dev_threshold(ctx: StageContext, model: Any, switch: ProbeSwitch, tokenizer: Any, template: str
                  ) -> dict[str, Any]:
    """Choose switch.threshold on the recipe's dev prompts (module docstring); returns what the manifest keeps."""
    from midpo_cli.data.prompt_sets import load_prompt_set
    from midpo_cli.evaluation.toy_outcomes import toy_outcome_for
    from midpo_cli.modeling.scorer import default_scorer
    from midpo_cli.pipeline.dev_set import answer_rows, require_dev_prompts
    from midpo_cli.pipeline.inputs import score_model

    recipe, gen = ctx.recipe, ctx.recipe.stages.generate
    spec = require_dev_prompts(recipe, "stages.router probe switch (hard)")
    pset = load_prompt_set(spec, recipe.data.columns or None)
    prompts = [p for p in pset.prompts if p.get("is_harmful") is not None]
    texts = [p["prompt"] for p in prompts]
    harmful = [bool(p["is_harmful"]) for p in prompts]
    corners: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for gates in ((1.0, 0.0), (0.0, 1.0)):
        with model.fixed_gates(*gates):
            corners[gates] = answer_rows(model, tokenizer, prompts, template=template, settings=gen)
    judge = toy_outcome_for(pset.name)
    outcomes = {}
    for gates, rows in corners.items():
        if judge is not None:
            outcomes[gates] = [judge(r) for r in rows]
            continue
        scorer = default_scorer(batch_size=recipe.stages.score.batch_size, template=template,
                                trust_remote_code=recipe.trust_remote_code)
        answers = [r["answer"] for r in rows]
        cost = scorer(score_model(ctx, "cost_model"), "cost", texts, answers)
        reward = scorer(score_model(ctx, "reward_model"), "reward", texts, answers)
        outcomes[gates] = [float(c < 0) if h else float(r > 0) for c, r, h in zip(cost, reward, harmful, strict=True)]
    p = prompt_probabilities(model, switch, tokenizer, template, texts, gen.batch_size)
    threshold, curve = choose_threshold(p, harmful, outcomes[(1.0, 0.0)], outcomes[(0.0, 1.0)])
    switch.threshold = threshold
    best = max(c["score"] for c in curve if c["score"] is not None)
    console.log(f"router: probe switch threshold {threshold:.4f} chosen on {len(texts)} {pset.name} prompts "
                f"({'toy judge' if judge else 'score models'}): dev score {best:.3f}")
    return {"prompts": pset.name, "threshold": threshold, "dev_score": best, "curve": curve,
            "judged_by": "toy judge" if judge else "score models (harmful: c < 0, benign: r > 0)"}


def save_switch(ctx: StageContext, model: Any, switch: ProbeSwitch, tokenizer: Any, out: Path, *, policy: str,
                safety_dir: Path, help_dir: Path, template: str) -> None:
    """The MidPO folder with the switch (its routers stay as they are and are not used)."""
    from midpo_cli.modeling.midpo import save_midpo

    previous, model.switch = model.switch, switch
    try:
        save_midpo(model, tokenizer, out, base_model=policy, template=template, safety_adapter=str(safety_dir),
                   helpfulness_adapter=str(help_dir))
    finally:
        model.switch = previous
