"""Stage `router`: learn the per-layer gates that mix the two experts inside the base (docs/design.md §2).

Only router parameters train — the base, both LoRA experts and lm_head are frozen, and the stage
asserts it before the first step. The reference policy is the same model with routing disabled
(the base), so there is one copy of the base weights. Loss = DPO(β) + λ_s·mean|g_s| +
λ_h·mean|g_h − 1| over real tokens of every layer (averaged over layers).

The probe switch is built here too (`stages.router.kind: probe`, or `probe_switch` among the generate stage's
models): a probe fit on the router's input (midpo_cli.modeling.switch), its hard threshold chosen on the dev
prompts (`switch_threshold`), saved as a MidPO model folder that generate, chat and export load like the router's.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.data.filters import harmful_from_labels, select_pairs
from midpo_cli.data.ranked import check_switch_kinds, ranked_prompt_kinds
from midpo_cli.data.readers import load_rows
from midpo_cli.data.tokenize import collate_pairs, encode_pairs, encode_prompts, pad_sequences, with_columns
from midpo_cli.engine.artifacts import logits_on, precision_of, save_checked
from midpo_cli.engine.loop import train
from midpo_cli.engine.preference import concatenated_logps, reference_logps
from midpo_cli.engine.shared_prompt import to_rows
from midpo_cli.errors import InputError
from midpo_cli.evaluation.gate_stats import MIN_AUROC, collapse_warnings, separation
from midpo_cli.evaluation.probe import fit_probe_parameters, linear_probe_auroc, words_probe_auroc
from midpo_cli.evaluation.probe_switch import choose_threshold
from midpo_cli.judges.panel import judged_by
from midpo_cli.losses.preference import gate_supervision_loss, router_penalty, spe_dpo_loss
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
from midpo_cli.modeling.lora import check_adapter_base, read_adapter
from midpo_cli.modeling.midpo import RouterSettings, count_router_parameters, load_midpo, save_midpo, wrap
from midpo_cli.modeling.switch import ProbeSwitch, fit_switch, prompt_probabilities, prompt_text_features
from midpo_cli.stages.kit.context import StageContext
from midpo_cli.stages.kit.dev_choice import DevPrompts, judge_on_dev
from midpo_cli.stages.kit.dev_set import HARD_SWITCH, chooses_switch_threshold, load_dev_set, threshold_chooser
from midpo_cli.stages.kit.inputs import (
    dev_judge,
    encoded_pairs,
    engine_settings,
    policy_ref,
    ref_cache,
    stage_template,
    tokenizer_ref,
)

EXTRAS = ("ref_chosen_logps", "ref_rejected_logps", "is_harmful")
CORNERS = ((1.0, 0.0), (0.0, 1.0))  # the hard switch's two answers: the safety expert's, the helpfulness expert's


def run(ctx: StageContext) -> None:
    recipe = ctx.recipe
    kind = recipe.stages.router.kind  # learned: the trained routers; probe: the probe switch is the model
    settings = engine_settings(recipe, "router")
    if settings.activation_checkpointing:  # a recomputed forward would record every layer's gates twice
        console.warn("router: activation_checkpointing is not supported for the router (its gates are recorded "
                     "during the forward); training without it")
        settings = settings.model_copy(update={"activation_checkpointing": False})
    dev = switch_dev_prompts(ctx)  # before any model loads
    policy = policy_ref(ctx)
    tokenizer = load_tokenizer(tokenizer_ref(recipe, policy), trust_remote_code=recipe.trust_remote_code)
    template = stage_template(ctx, tokenizer)  # `auto` in data.template resolves to this same tokenizer's
    # the router trains on rank's D_dual, always: choosing the pairs is part of the method (stages.rank.rule)
    selection, train_feats = encoded_pairs(str(ctx.input_path("rank", "dual")), "router", tokenizer, template,
                                           recipe.data.max_length, stage="router")

    check_prompt_kinds(ctx, selection.pairs, train_feats)
    safety_dir = ctx.input_path("safety_expert", "adapter")
    help_dir = ctx.input_path("helpfulness_expert", "adapter")
    model, router_settings = routed_policy(ctx, policy, settings, safety_dir, help_dir)
    trainable = model.router_parameters()
    n_router = count_router_parameters(model)

    def collate(features):
        return collate_pairs(features, tokenizer.pad_token_id, extras=tuple(k for k in EXTRAS if k in features[0]),
                             share_prompt=settings.share_prompt)

    result = None
    if kind == "learned":
        model, result, train_feats = learn_routers(ctx, model, settings, tokenizer, template, collate, selection,
                                                   train_feats, trainable)
    model.eval()
    corners, vote_info = dev_thresholds(ctx, model, tokenizer, template, dev)

    outputs, switch_info = {}, None
    if recipe.builds_switch:
        switch, switch_info = build_switch(ctx, model, tokenizer, template, collate, train_feats, selection.pairs,
                                           dev, corners)
        save_switch(model, switch, tokenizer, ctx.folder / "switch", policy=policy, safety_dir=safety_dir,
                    help_dir=help_dir, template=template, probe_batch=collate(train_feats[:4]))
        outputs["switch"] = ctx.rel(ctx.folder / "switch")
        if kind == "probe":  # the model is the switch: its gates are what the separation measures
            model.switch = switch
    separation = held_out_separation(model, ctx, tokenizer, template, collate, train=(train_feats, selection.pairs))
    out = ctx.folder / ("switch" if kind == "probe" else "model")
    if kind == "learned":
        save_routed(model, tokenizer, out, policy, safety_dir, help_dir, collate(train_feats[:4]), template)
    record = ctx.record()
    record.outputs = {"model": ctx.rel(out), **outputs}
    record.metrics = router_metrics(result, separation, n_router if kind == "learned" else 0, len(train_feats),
                                    switch_info, vote_info)
    shipped = model.settings if kind == "learned" else router_settings  # the vote's threshold is the model's
    record.extra = {"template": template, "resumed_from_step": result.resumed_from_step if result else None,
                    "data": selection.counts, "router": shipped.to_dict(), "kind": kind,
                    **({"probe_switch": switch_info} if switch_info else {}),
                    **({"vote": vote_info} if vote_info else {})}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["router"])


def check_prompt_kinds(ctx: StageContext, pairs: list, train_feats: list) -> None:
    """Before any model loads: the prompts a switch is fit on, and those the routers are supervised on alone
    (`supervision.prompts: ranked`), hold both kinds — a fit that cannot happen must not cost a trained router."""
    cfg = ctx.recipe.stages.router
    if ctx.recipe.builds_switch:
        check_switch_prompts(ctx, pairs, train_feats)
    if cfg.kind == "learned" and cfg.supervision.prompts == "ranked":
        scored = ctx.input_path("rank", "scored")
        check_switch_kinds(list(ranked_prompt_kinds(scored)[1]), str(scored), "ranked")


def learn_routers(ctx: StageContext, model, settings, tokenizer, template: str, collate, selection,
                  train_feats: list, trainable: list):
    """(the model, the engine's result or None, the features): the routers fit per layer (`solver: lbfgs`) or
    trained by the engine (`adam`)."""
    if ctx.recipe.stages.router.solver == "lbfgs":
        fit_routers(ctx, model, tokenizer, template, collate, train_feats, selection.pairs)
        return model, None, train_feats
    result, train_feats = train_router(ctx, model, settings, collate, selection, train_feats, template, trainable,
                                       tokenizer)
    return result.model, result, train_feats


def train_router(ctx: StageContext, model, settings, collate, selection, train_feats: list, template: str,
                 trainable: list, tokenizer):
    """(the engine's result, the features with their reference log-probs): DPO on D_dual (+ gate supervision), or
    supervision alone on every prompt rank scored (`supervision.prompts: ranked`; the features come back as given)."""
    cfg = ctx.recipe.stages.router
    if cfg.supervision.prompts == "ranked":
        rows = ranked_prompt_rows(ctx, tokenizer, template)
        pad_id = tokenizer.pad_token_id
        result = train(model=model, train_data=rows, collate=lambda batch: collate_prompts(batch, pad_id),
                       loss_fn=make_prompt_supervision_loss(cfg.supervision.helpfulness), settings=settings,
                       out_dir=ctx.folder, trainable=trainable, resume=ctx.resume, stage_name="router")
        return result, train_feats
    if cfg.supervision.weight > 0:  # the prompt's kind per pair, the supervision's target (rank decided it)
        train_feats = with_columns(train_feats, is_harmful=pair_kinds(selection.pairs, train_feats, "dual.jsonl"))
    train_feats = reference_logps(model, train_feats, selection, collate, ref_cache(ctx, template),
                                  batch_size=settings.reference_batch_size, reference=model.routing_disabled,
                                  stage="router")
    loss_fn = make_router_loss(cfg.beta, cfg.penalty.safety, cfg.penalty.helpfulness, cfg.penalty.scope,
                               supervision=cfg.supervision, dpo_weight=cfg.dpo_weight)
    result = train(model=model, train_data=train_feats, collate=collate, loss_fn=loss_fn, settings=settings,
                   out_dir=ctx.folder, trainable=trainable, resume=ctx.resume, stage_name="router")
    return result, train_feats


def supervised_prompts(ctx: StageContext, model, tokenizer, template: str, collate, train_feats: list, pairs: list
                       ) -> tuple[torch.Tensor, list[bool]]:
    """(routed_input_means of the supervised prompts, routing off; their kinds): every prompt rank scored
    (`supervision.prompts: ranked`) or D_dual's (`dual`) — what gate supervision reads."""
    if ctx.recipe.stages.router.supervision.prompts == "ranked":
        texts, kinds = ranked_prompt_kinds(ctx.input_path("rank", "scored"))
        return prompt_text_features(model, tokenizer, template, texts, 32), kinds
    return prompt_features(model, train_feats, collate, 32), pair_kinds(pairs, train_feats, where="dual.jsonl")


def probe_router_weights(mu: torch.Tensor, sd: torch.Tensor, w: torch.Tensor, b: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A probe's logit ((x − μ)/σ)·w + b as a router's linear map (weight (2, d), bias (2,), float64): row 0 the
    safety logit, row 1 its negation (g_h = 1 − g_s, the inverse target of supervision)."""
    scaled = w / sd
    bias = b.reshape(1) - (mu * scaled).sum()
    return torch.stack([scaled, -scaled]), torch.cat([bias, -bias])


@torch.no_grad()
def fit_routers(ctx: StageContext, model, tokenizer, template: str, collate, train_feats: list, pairs: list) -> None:
    """`solver: lbfgs`: gate supervision solved exactly, layer by layer. Each layer's router becomes the logistic
    probe (midpo_cli.evaluation.probe.fit_probe_parameters: standardised features, L2, L-BFGS) of its own input
    on the supervised prompts, folded into its linear map: z_s = x·(w/σ) + b − μ·(w/σ), z_h = −z_s, so g_h = 1 − g_s
    and top1 picks the safety expert where p(harmful) ≥ ½. Why: 60 Adam steps on raw, unscaled hidden states
    left the supervision loss near chance on Gemma (benchmarks/RESULTS.md), where the switch's probe, fit exactly,
    separates the kinds; this gives the per-layer routers the same fit, each reading its own layer."""
    features, kinds = supervised_prompts(ctx, model, tokenizer, template, collate, train_feats, pairs)
    layers = list(model.routed.values())
    width = features.shape[1] // len(layers)
    accuracy = []
    for i, layer in enumerate(layers):
        x = features[:, i * width:(i + 1) * width].double()
        weight, bias = probe_router_weights(*fit_probe_parameters(x, kinds))
        layer.router.net.weight.copy_(weight)
        layer.router.net.bias.copy_(bias)
        logits = x @ weight[0] + bias[0]
        accuracy.append(float(((logits >= 0) == torch.tensor(kinds)).double().mean()))
    console.log(f"router: {len(layers)} per-layer routers fit on {len(kinds)} prompts ({sum(kinds)} harmful), "
                f"routing off; training accuracy per layer {min(accuracy):.3f}–{max(accuracy):.3f}")


def ranked_prompt_rows(ctx: StageContext, tokenizer, template: str) -> list[dict]:
    """Every distinct prompt rank scored, encoded as generate will see it (template, no answer), with its kind
    (midpo_cli.data.ranked.ranked_prompt_kinds: the labels, else the cost model): what the probe switch is fit on
    with `switch_prompts: ranked`, here the per-layer routers' supervision."""
    texts, kinds = ranked_prompt_kinds(ctx.input_path("rank", "scored"))
    ids, _ = encode_prompts(texts, tokenizer, template, ctx.recipe.data.max_length)
    console.log(f"router: supervision on {len(ids)} prompts rank scored ({sum(kinds)} harmful), prompt tokens only")
    return [{"input_ids": seq, "is_harmful": float(kind)} for seq, kind in zip(ids, kinds, strict=True)]


def collate_prompts(rows: list[dict], pad_id: int) -> dict:
    """Right-padded prompts (every real token is a prompt token) and their kinds (B,)."""
    batch = pad_sequences([r["input_ids"] for r in rows], [len(r["input_ids"]) for r in rows], pad_id)
    batch["is_harmful"] = torch.tensor([r["is_harmful"] for r in rows], dtype=torch.float32)
    return batch


def make_prompt_supervision_loss(helpfulness: str):
    """Gate supervision alone on prompts (`supervision.prompts: ranked`): every routed layer's gate logits, over
    the prompt's tokens, toward its kind (midpo_cli.losses.preference.gate_supervision_loss). Only the last
    position's vocabulary logits are computed: the loss reads the gates, and a 262k vocabulary over every
    position would cost more than the backbone."""
    def loss_fn(model, batch):
        mask = batch["attention_mask"]
        model(input_ids=batch["input_ids"], attention_mask=mask, prompt_mask=mask.bool(), logits_to_keep=1)
        z_s, z_h = model.gate_logit_tensors()
        sup = gate_supervision_loss(z_s, z_h if helpfulness == "inverse" else None, mask, batch["is_harmful"])
        with torch.no_grad():
            g_s = torch.stack([g.float() for g in model.gate_tensors()[0]]).mean(0)  # (B, T) over layers
            per_row = (g_s * mask).sum(1) / mask.sum(1).clamp(min=1)
            harmful = batch["is_harmful"].bool()
            metrics = {"supervision": sup.detach(),
                       "gate_safety_harmful": per_row[harmful].mean() if harmful.any() else per_row.new_tensor(0.0),
                       "gate_safety_benign": per_row[~harmful].mean() if (~harmful).any() else per_row.new_tensor(0.0)}
        return sup, metrics

    return loss_fn


def router_metrics(result, separation: dict, n_router: int, pairs: int, switch_info: dict | None,
                   vote_info: dict | None = None) -> dict:
    """The manifest's metrics: the last training window's, the gate separation, the switch's and the vote's
    thresholds."""
    last = result.last_metrics if result is not None else {}
    return {
        "train_loss": last.get("loss"),
        "gate_safety_chosen": last.get("gate_safety_chosen"),
        "gate_safety_rejected": last.get("gate_safety_rejected"),
        "gate_help_chosen": last.get("gate_help_chosen"),
        "gate_separation_auroc": separation.get("auroc"),
        "gate_separation_gap": separation.get("gap"),
        "input_probe_auroc": separation.get("input_probe_auroc"),
        "words_probe_auroc": separation.get("words_probe_auroc"),
        "router_parameters": n_router,
        "pairs": pairs,
        "steps": result.global_step if result is not None else 0,
        **({"switch_threshold": switch_info["threshold"], "switch_dev_score": switch_info["dev_score"]}
           if switch_info and "threshold" in switch_info else {}),
        **({"vote_threshold": vote_info["threshold"], "vote_dev_score": vote_info["dev_score"]} if vote_info else {}),
    }


def check_switch_prompts(ctx: StageContext, pairs: list, train_feats: list) -> None:
    """The prompts the switch will be fit on (`build_switch`) hold both kinds: checked before any model loads."""
    fit_on = ctx.recipe.stages.router.switch_prompts
    if fit_on == "ranked":
        scored = ctx.input_path("rank", "scored")
        check_switch_kinds(list(ranked_prompt_kinds(scored)[1]), str(scored), fit_on)
    else:
        check_switch_kinds(list(pair_kinds(pairs, train_feats, where="dual.jsonl")),
                           str(ctx.input_path("rank", "dual")), fit_on)


def build_switch(ctx: StageContext, model, tokenizer, template: str, collate, train_feats: list, pairs: list,
                 dev: DevPrompts | None, corners: list | None = None):
    """The probe fit on D_dual's prompts or every prompt rank scored (`switch_prompts`; the router's input,
    routing off); hard: its threshold chosen on `dev`."""
    cfg = ctx.recipe.stages.router
    if cfg.switch_prompts == "ranked":
        texts, kinds = ranked_prompt_kinds(ctx.input_path("rank", "scored"))
        features = prompt_text_features(model, tokenizer, template, texts, 32)
    else:
        kinds = pair_kinds(pairs, train_feats, where="dual.jsonl")
        features = prompt_features(model, train_feats, collate, 32)
    switch = fit_switch(features, kinds, cfg.switch)
    info: dict[str, Any] = {"mode": cfg.switch, "fit_on": cfg.switch_prompts, "fit_on_prompts": len(kinds),
                            "fit_on_harmful": sum(kinds)}
    if dev is not None:
        info.update(switch_threshold(model, switch, tokenizer, template, dev, ctx.recipe.stages.generate, corners))
    return switch, info


def switch_dev_prompts(ctx: StageContext) -> DevPrompts | None:
    """The hard switch's dev prompts (every labelled one) and their judge (stages.kit.inputs.dev_judge), read once
    before any model loads; None when the stage chooses no threshold."""
    if not chooses_switch_threshold(ctx.recipe):
        return None
    pset = load_dev_set(ctx.recipe, threshold_chooser(ctx.recipe))
    prompts = [p for p in pset.prompts if p.get("is_harmful") is not None]
    return DevPrompts(pset.name, prompts, dev_judge(ctx, pset.name, prompts))


def dev_thresholds(ctx: StageContext, model, tokenizer, template: str, dev: DevPrompts | None):
    """(both corners' dev outcomes or None, the vote's threshold record or None): the corners answer the dev prompts
    once, for every threshold the stage chooses (the hard switch's, the routers' vote's)."""
    if dev is None:
        return None, None
    cfg = ctx.recipe.stages.router
    label = "router: switch threshold" if threshold_chooser(ctx.recipe) == HARD_SWITCH else "router: vote threshold"
    corners = dev_corners(model, tokenizer, template, dev, ctx.recipe.stages.generate, label=label)
    vote = cfg.kind == "learned" and cfg.decision == "vote"
    return corners, vote_threshold(model, tokenizer, template, dev, corners) if vote else None


def dev_corners(model, tokenizer, template: str, dev: DevPrompts, gen, label: str = "router: switch threshold"
                ) -> list[list[float]]:
    """Each corner's outcome on every dev prompt: both corners answer each of them, greedy, with the generate
    stage's settings `gen` (midpo_cli.stages.kit.dev_choice); an answer's outcome is the dev judge's
    (midpo_cli.evaluation.judge_labels: harmful answered safely, benign helped and not refused)."""
    judged = judge_on_dev(model, {gates: partial(model.fixed_gates, *gates) for gates in CORNERS}, dev,
                          tokenizer=tokenizer, template=template, settings=gen, label=label)
    return [judged[gates].outcomes for gates in CORNERS]


def threshold_on_dev(p: list[float], dev: DevPrompts, corners: list, what: str) -> dict[str, Any]:
    """midpo_cli.evaluation.probe_switch.choose_threshold on the dev prompts' p(harmful) and the corners'
    outcomes; what the manifest keeps."""
    threshold, curve = choose_threshold(p, [bool(q["is_harmful"]) for q in dev.prompts], *corners)
    best = max(c["score"] for c in curve if c["score"] is not None)
    how = judged_by(dev.judge)
    console.log(f"router: {what} threshold {threshold:.4f} chosen on {len(p)} {dev.name} prompts ({how}): dev "
                f"score {best:.3f}")
    return {"prompts": dev.name, "threshold": threshold, "dev_score": best, "curve": curve, "judged_by": how}


def switch_threshold(model, switch: ProbeSwitch, tokenizer, template: str, dev: DevPrompts, gen,
                     corners: list | None = None) -> dict[str, Any]:
    """Choose the hard switch's threshold on the dev prompts (`dev_corners`, unless given, and
    `threshold_on_dev`). Sets `switch.threshold`; returns what the manifest keeps."""
    corners = corners if corners is not None else dev_corners(model, tokenizer, template, dev, gen)
    p = prompt_probabilities(model, switch, tokenizer, template, [q["prompt"] for q in dev.prompts], gen.batch_size)
    info = threshold_on_dev(p, dev, corners, "probe switch")
    switch.threshold = info["threshold"]
    return info


def vote_threshold(model, tokenizer, template: str, dev: DevPrompts, corners: list) -> dict[str, Any]:
    """`decision: vote`: the vote's threshold on p(harmful) chosen on dev exactly as the hard switch's is, so the
    two compare as equals; set in the model's router settings (saved with it)."""
    texts = [q["prompt"] for q in dev.prompts]
    p = model.vote_probability(prompt_text_features(model, tokenizer, template, texts, 32)).tolist()
    info = threshold_on_dev(p, dev, corners, "routers' vote")
    model.settings = replace(model.settings, threshold=info["threshold"])
    return info


def save_switch(model, switch: ProbeSwitch, tokenizer, out: Path, *, policy: str, safety_dir: Path, help_dir: Path,
                template: str, probe_batch: dict) -> None:
    """The MidPO folder with the switch (its routers stay as they are and are not used), saved through the
    verified save like the router's: reloaded, and its logits on `probe_batch` (the switch choosing each prompt's
    gates), its probabilities and its threshold compared with the in-memory switch's before it is renamed into
    place (hard gates alone would hide a switch that reloads with other weights)."""
    probe = {k: probe_batch[k] for k in ("input_ids", "attention_mask")}
    prompt_mask = probe_batch["attention_mask"].bool() & ~probe_batch["response_mask"].bool()
    logits = logits_on({**probe, "prompt_mask": prompt_mask})

    def forward(m) -> torch.Tensor:
        p = m.switch.probability(m.routed_input_means(probe["input_ids"], probe["attention_mask"], prompt_mask))
        kind = torch.tensor([float(m.switch.threshold), float(m.switch.mode == "hard")]).expand(len(p), 2)
        return torch.cat([logits(m), p.float().unsqueeze(1).cpu(), kind], dim=1)

    previous, model.switch = model.switch, switch
    try:
        save_checked(model, out,
                     save_fn=lambda path: save_midpo(model, tokenizer, path, base_model=policy, template=template,
                                                     safety_adapter=str(safety_dir), helpfulness_adapter=str(help_dir)),
                     load_fn=lambda path: load_midpo(path, dtype=precision_of(model))[0], forward=forward)
    finally:
        model.switch = previous


def routed_policy(ctx: StageContext, policy: str, settings, safety_dir, help_dir):
    """(the base with both experts and fresh routers of recipe stages.router, its RouterSettings); everything
    but the routers is frozen (asserted), and experts trained on another base are refused."""
    recipe, cfg = ctx.recipe, ctx.recipe.stages.router
    base = load_causal_lm(policy, dtype=settings.precision, seed=settings.seed,
                          trust_remote_code=recipe.trust_remote_code)
    router_settings = RouterSettings(granularity=cfg.granularity, input=cfg.input, hidden=cfg.hidden,
                                     decision=cfg.decision)
    for adapter_dir in (safety_dir, help_dir):  # refuse experts trained on another base
        check_adapter_base(adapter_dir, base, base_name=policy, source=policy, seed=settings.seed,
                           trust_remote_code=recipe.trust_remote_code)
    model = wrap(base, read_adapter(safety_dir), read_adapter(help_dir), router_settings)
    frozen_trainable = [n for n, p in model.named_parameters() if p.requires_grad and "router" not in n]
    assert not frozen_trainable, f"non-router parameters are trainable: {frozen_trainable[:3]}"
    console.log(f"router: {count_router_parameters(model):,} router parameters over {len(model.routed)} routed "
                f"layers ({sum(p.numel() for p in model.parameters()):,} in the whole model)")
    return model, router_settings


def held_out_pairs(recipe, limit: int = 256) -> tuple[list, list[bool]]:
    """Up to `limit` pairs of data.eval with a known prompt kind (is_harmful, else "an answer is labelled
    unsafe"), half harmful and half benign where possible; ([], []) when there is no such data."""
    if not recipe.data.eval:
        return [], []
    selection = select_pairs(load_rows(recipe.data.eval, columns=recipe.data.columns), "reward_model",
                             allow_empty=True)
    kinds: dict[bool, list] = {True: [], False: []}
    for pair in selection.pairs:
        harmful = harmful_from_labels(pair.meta.get("is_harmful"), pair.chosen_safe, pair.rejected_safe)
        if harmful is not None:
            kinds[bool(harmful)].append(pair)
    per_kind = limit // 2
    pairs = kinds[True][:per_kind] + kinds[False][:per_kind]
    return pairs, [True] * min(per_kind, len(kinds[True])) + [False] * min(per_kind, len(kinds[False]))


@torch.no_grad()
def held_out_separation(model, ctx: StageContext, tokenizer, template: str, collate, batch_size: int = 32,
                        train: tuple[list, list] | None = None) -> dict:
    """Does the trained router route? Mean safety gate over each held-out pair's answer tokens (both answers,
    every routed layer), harmful vs benign prompts: AUROC and gap (midpo_cli.evaluation.gate_stats); warns on collapse.
    With `train` (the router's features and pairs): also the ceiling, `input_probe_auroc` (`input_probe`)."""
    pairs, harmful = held_out_pairs(ctx.recipe)
    if not pairs:
        console.log("router: no held-out pairs with a known prompt kind (data.eval); gate separation not measured")
        return {}
    recipe = ctx.recipe
    feats, _ = encode_pairs(pairs, tokenizer, template, recipe.data.max_length)
    model.eval()
    gates: list[float] = []
    for start in range(0, len(feats), batch_size):
        batch = collate(feats[start:start + batch_size])
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **prompt_kwargs(model, batch))
        g_s = torch.stack([g.float() for g in model.gate_tensors()[0]]).mean(0)  # (2B, T)
        resp = batch["response_mask"].float()
        per_row = (g_s * resp).sum(1) / resp.sum(1).clamp(min=1)
        half = per_row.shape[0] // 2
        gates += ((per_row[:half] + per_row[half:]) / 2).tolist()
    flags = [harmful[f["pair_index"]] for f in feats]
    sep = separation(gates, flags)
    if sep["auroc"] is not None:
        console.log(f"router: held-out gate separation: AUROC {sep['auroc']:.3f}, mean g_s harmful "
                    f"{sep['mean_harmful']:.3f} vs benign {sep['mean_benign']:.3f} (gap {sep['gap']:+.3f}; "
                    f"{sep['n_harmful']} + {sep['n_benign']} pairs of {recipe.data.eval})")
    for why in collapse_warnings(sep):
        console.warn(f"router: the gates look collapsed: {why}")
    if train is not None:
        held_prompts = [pairs[f["pair_index"]].prompt for f in feats]
        sep.update(input_probe(model, *train, feats, held_prompts, flags, collate, batch_size))
    return sep


def input_probe(model, train_feats: list, train_pairs: list, held_feats: list, held_prompts: list[str],
                held_flags: list[bool], collate, batch_size: int = 32) -> dict[str, float]:
    """Held-out AUROC of a linear probe on the router's input with routing off (midpo_cli.evaluation.probe): how
    well any router on this base could separate the prompt kinds; and of the same probe on the prompts' words alone,
    which says whether a low value is the base's fault or the data's. Logged, and warned about when the
    base's is below MIN_AUROC."""
    rows = [train_pairs[f["pair_index"]] for f in train_feats]
    kinds = [harmful_from_labels(p.meta.get("is_harmful"), p.chosen_safe, p.rejected_safe) for p in rows]
    keep = [i for i, k in enumerate(kinds) if k is not None]
    train_y = [bool(kinds[i]) for i in keep]
    train_x = prompt_features(model, [train_feats[i] for i in keep], collate, batch_size)
    value = linear_probe_auroc(train_x, train_y, prompt_features(model, held_feats, collate, batch_size), held_flags)
    if value is None:
        return {}
    words = words_probe_auroc([rows[i].prompt for i in keep], train_y, held_prompts, held_flags)
    console.log(f"router: a linear probe on the router's input (routing off), fit on the {len(keep)} training "
                f"pairs' prompts, separates the held-out ones with AUROC {value:.3f}: the ceiling of any router "
                f"here (on the training prompts' words alone: {words:.3f})")
    if value < MIN_AUROC:
        console.warn(f"router: the base's hidden states barely separate held-out harmful and benign prompts "
                     f"(probe AUROC {value:.2f} < {MIN_AUROC}; words alone {words:.2f}); no router on them can "
                     "route (docs/design.md §8)")
    return {"input_probe_auroc": value, "words_probe_auroc": words}


def prompt_features(model, feats: list, collate, batch_size: int) -> torch.Tensor:
    """`MidpoModel.routed_input_means` of each pair's prompt (its chosen row; the rejected one shares it)."""
    out = []
    for start in range(0, len(feats), batch_size):
        batch = collate(feats[start:start + batch_size])
        half = batch["input_ids"].shape[0] // 2
        mask = batch["attention_mask"][:half]
        out.append(model.routed_input_means(batch["input_ids"][:half], mask,
                                            mask.bool() & ~batch["response_mask"][:half].bool()))
    return torch.cat(out)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def prompt_kwargs(model, batch) -> dict:
    """`prompt_mask` for routers that read the prompt (granularity prompt, input token+prompt)."""
    if not model.state.needs_prompt and getattr(model, "switch", None) is None:
        return {}
    return {"prompt_mask": batch["attention_mask"].bool() & ~batch["response_mask"].bool()}


def pair_kinds(pairs: list, feats: list, where: str) -> list[bool]:
    """Each feature's prompt kind (harmful_from_labels); an error naming the pair when rank left it unknown."""
    kinds = []
    for f in feats:
        pair = pairs[f["pair_index"]]
        kind = harmful_from_labels(pair.meta.get("is_harmful"), pair.chosen_safe, pair.rejected_safe)
        if kind is None:
            raise InputError(f"{where}: pair {f['pair_index']} has no is_harmful (nor safety labels); gate "
                             "supervision and the probe switch need every pair's prompt kind; re-run rank")
        kinds.append(bool(kind))
    return kinds


def scope_mask(batch: dict, scope: str) -> torch.Tensor:
    """(2B, T) cells a gate term averages over: answer tokens (incl. EOS), prompt tokens, or both/all."""
    if scope == "answer":
        return batch["response_mask"]
    if scope == "prompt":
        return batch["attention_mask"].bool() & ~batch["response_mask"].bool()
    return batch["attention_mask"]


def make_router_loss(beta: float, lam_safety: float, lam_help: float, scope: str, *,
                     supervision: Any = None, dpo_weight: float = 1.0):
    """dpo_weight·DPO(β) on the routed model + the gate penalty over answer tokens (`scope: answer`) or all real
    tokens + λ·gate supervision (`supervision`, recipe `stages.router.supervision`; its weight 0 adds nothing).

    Why answer tokens by default: the router is judged by the answers it produces; penalising prompt tokens'
    gates pulls the routers towards the helpfulness expert on text whose gates only matter through the KV
    cache, and long prompts would outweigh short answers. Why supervision exists: DPO on D_dual can be
    satisfied by gates that read the teacher-forced answer without choosing the expert from the prompt
    (docs/design.md §8); MoGU and H3Fusion tell the gates the prompt's kind.
    """
    sup_weight = float(supervision.weight) if supervision is not None else 0.0

    def loss_fn(model, batch):
        response = batch["response_mask"].bool()
        chosen, rejected = concatenated_logps(model, batch, **prompt_kwargs(model, batch))
        half = chosen.shape[0]
        losses, chosen_r, rejected_r = spe_dpo_loss(chosen, rejected, batch["ref_chosen_logps"],
                                                    batch["ref_rejected_logps"], 0.0, beta)
        g_s, g_h = ([to_rows(g, batch) for g in gates] for gates in model.gate_tensors())  # (2B, T) each
        penalty_mask = batch["response_mask"] if scope == "answer" else batch["attention_mask"]
        penalty = router_penalty(g_s, g_h, penalty_mask, lam_safety, lam_help)
        total = (losses.mean() if dpo_weight == 1 else dpo_weight * losses.mean()) + penalty
        extra = {}
        if sup_weight > 0:  # skipped at weight 0: the router of the paper, bit for bit
            z_s, z_h = ([to_rows(z, batch) for z in logits] for logits in model.gate_logit_tensors())
            harmful = batch["is_harmful"].repeat(2)  # (2B,): chosen rows, then rejected rows of the same pairs
            sup = gate_supervision_loss(z_s, z_h if supervision.helpfulness == "inverse" else None,
                                        scope_mask(batch, supervision.scope), harmful)
            total = total + sup_weight * sup
            extra["supervision"] = sup.detach()
        with torch.no_grad():
            mean_s = torch.stack([g.float() for g in g_s]).mean(0)  # (2B, T) averaged over layers
            mean_h = torch.stack([g.float() for g in g_h]).mean(0)
            resp = response.float()
            metrics = {
                "dpo_loss": losses.mean().detach(),
                "penalty": penalty.detach(),
                "rewards/chosen": chosen_r.mean(),  # TRL's names for what TRL's DPOTrainer logs
                "rewards/rejected": rejected_r.mean(),
                "rewards/margins": (chosen_r - rejected_r).mean(),
                "rewards/accuracies": (chosen_r > rejected_r).float().mean(),
                "gate_safety_chosen": _masked_mean(mean_s[:half], resp[:half]),
                "gate_safety_rejected": _masked_mean(mean_s[half:], resp[half:]),
                "gate_help_chosen": _masked_mean(mean_h[:half], resp[:half]),
                "gate_help_rejected": _masked_mean(mean_h[half:], resp[half:]),
                **extra,
            }
        return total, metrics

    return loss_fn


def save_routed(model, tokenizer, out, policy: str, safety_dir, help_dir, probe_batch: dict,
                template: str | None = None) -> None:
    probe = {k: probe_batch[k] for k in ("input_ids", "attention_mask")}
    probe.update(prompt_kwargs(model, probe_batch))
    save_checked(model, out,
                 save_fn=lambda path: save_midpo(model, tokenizer, path, base_model=policy, template=template,
                                                 safety_adapter=str(safety_dir), helpfulness_adapter=str(help_dir)),
                 load_fn=lambda path: load_midpo(path, dtype=precision_of(model))[0], forward=logits_on(probe))
