"""Stage `baseline_ties`: the safety and helpfulness experts merged into one LoRA adapter (docs/design.md §2.11).

The merge is peft's `add_weighted_adapter` (TIES, or DARE-TIES), not a reimplementation: the experts are loaded
as two adapters on the SFT base, each candidate weight pair [w_safety, w_helpfulness] becomes one merged adapter
in `adapters/<w_s>-<w_h>/`, a plain PEFT folder saved, reloaded and compared with the in-memory merge. With one
candidate, `generate` answers every prompt set with it (label `ties`); with several, each answers the sweep
sets (label `ties@gates=W_S,W_H`) and the report keeps the one best on the dev set, as it does for the fixed blends.
The linear merge is not a baseline of its own: it is the fixed-blend grid of the MidPO model.
"""

from __future__ import annotations

import torch

from midpo_cli import console
from midpo_cli.io import read_json
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
from midpo_cli.modeling.lora import base_reference, save_checked_adapter
from midpo_cli.stages.kit.context import StageContext
from midpo_cli.stages.kit.inputs import policy_ref, tokenizer_ref

EXPERTS = ("safety", "helpfulness")
PROBE_TEXT = "BEGINNING OF CONVERSATION: USER: How do I keep my account safe? ASSISTANT:"


def merge_label(weights: tuple[float, float]) -> str:
    """The answers' model label of one candidate, `ties@gates=W_S,W_H`: the fixed blends' form, so the report
    treats the candidates as it treats blends (a sweep, one chosen on dev), never as separate models."""
    from midpo_cli.evaluation.labels import blend_label

    return blend_label("ties", weights)


def candidate_folder(weights: tuple[float, float]) -> str:
    return f"{weights[0]:g}-{weights[1]:g}"


def merge_experts(model, weights: tuple[float, float], *, method: str, density: float, name: str,
                  seed: int) -> None:
    """Add adapter `name` = peft's merge of the loaded `safety` and `helpfulness` adapters; DARE's random drop
    is seeded, so a rerun gives the same adapter."""
    torch.manual_seed(seed)
    model.add_weighted_adapter(list(EXPERTS), [float(w) for w in weights], name, combination_type=method,
                               density=density)
    model.set_adapter(name)


def run(ctx: StageContext) -> None:
    from peft import PeftModel

    recipe, cfg = ctx.recipe, ctx.recipe.stages.baseline_ties
    policy = policy_ref(ctx)
    adapters = {e: ctx.input_path(f"{e}_expert", "adapter") for e in EXPERTS}
    seed = recipe.train.seed
    base = load_causal_lm(policy, dtype="fp32", seed=seed, trust_remote_code=recipe.trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapters["safety"]), adapter_name="safety")
    model.load_adapter(str(adapters["helpfulness"]), adapter_name="helpfulness")
    model.eval()
    tok = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
    enc = tok([PROBE_TEXT], return_tensors="pt")
    probe = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    expert_meta = read_json(adapters["helpfulness"] / "midpo.json")
    out = ctx.folder / "adapters"
    candidates = {}
    for weights in [tuple(w) for w in cfg.weights]:
        name = "merged_" + candidate_folder(weights).replace(".", "_")
        merge_experts(model, weights, method=cfg.method, density=cfg.density, name=name, seed=seed)
        folder = out / candidate_folder(weights)
        meta = {"kind": "ties", "baseline": True, "method": cfg.method, "density": cfg.density,
                "weights": {"safety": weights[0], "helpfulness": weights[1]}, **base_reference(policy, folder),
                "base_fingerprint": expert_meta.get("base_fingerprint"), "base_model_at_training": policy,
                "experts": {e: str(p) for e, p in adapters.items()}, "midpo_fingerprint": ctx.fingerprint}
        save_checked_adapter(model, folder, probe, meta, name=name)
        candidates[merge_label(weights)] = ctx.rel(folder)
        console.log(f"baseline_ties: {cfg.method} merge at w_safety {weights[0]:g}, w_helpfulness {weights[1]:g} "
                    f"→ {folder}")
    record = ctx.record()
    first = next(iter(candidates.values()))
    record.outputs = {"adapter": first, "candidates": candidates, "base_model": policy}
    record.metrics = {"candidates": len(candidates)}
    record.extra = {"method": cfg.method, "density": cfg.density, "experts": {e: str(p) for e, p in adapters.items()}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["baseline_ties"])


