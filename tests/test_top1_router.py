"""The top-1 router (`stages.router.decision: top1`, docs/design.md §2.8): each layer's router picks one expert, so
no layer mixes them; its gradient is the sigmoid's (straight-through). And supervision on every prompt rank scored
(`supervision.prompts: ranked`), which trains the per-layer routers on prompts alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from midpo_cli.modeling.midpo import RouterSettings, load_midpo, save_midpo, top1_gates
from midpo_cli.recipe import RecipeError, load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_midpo_model import build, ids_batch, randomise_router, routed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_top1_gates_are_one_hot_with_the_sigmoid_s_gradient() -> None:
    logits = torch.tensor([[2.0, -1.0], [-0.5, 0.5], [0.3, 0.3]], requires_grad=True)
    soft = torch.sigmoid(logits)
    gates = top1_gates(logits, soft)
    assert gates.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]  # a tie goes to the safety expert
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    (gates * weights).sum().backward()
    expected = weights * soft.detach() * (1 - soft.detach())  # d sigmoid(z) / dz, straight through
    assert torch.allclose(logits.grad, expected)
    with torch.no_grad():  # no graph: the hard gates alone
        assert top1_gates(logits, torch.sigmoid(logits)).tolist() == gates.tolist()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build(tmp_path_factory.mktemp("llama-top1"))


@pytest.mark.parametrize("granularity", ["token", "prompt"])
def test_every_layer_picks_one_expert_and_the_output_is_that_corner_s(llama, granularity) -> None:
    """Routers biased toward one expert give exactly that expert's model (the fixed corner); random routers give
    one-hot gates at every layer and token."""
    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity=granularity, decision="top1"))
    ids = ids_batch()
    kw = {"prompt_mask": torch.ones_like(ids, dtype=torch.bool)} if granularity == "prompt" else {}
    for corner in ((1.0, 0.0), (0.0, 1.0)):
        with torch.no_grad():
            for mod in model.routed.values():
                mod.router.net.weight.zero_()
                mod.router.net.bias.copy_(torch.tensor([1.0, -1.0]) * (1 if corner[0] else -1))
            got = model(input_ids=ids, **kw).logits
            with model.fixed_gates(*corner):
                want = model(input_ids=ids).logits
        assert torch.equal(got, want)
    randomise_router(model, scale=2.0)
    with torch.no_grad():
        model(input_ids=ids, **kw)
    for g in model.gates():
        assert set(g.unique().tolist()) <= {0.0, 1.0} and torch.equal(g.sum(-1), torch.ones(g.shape[:-1]))
    picks = torch.stack([g[..., 0] for g in model.gates()])
    assert 0 < picks.mean() < 1  # both experts are picked somewhere: the decision reads h


def test_the_vote_serves_one_expert_at_every_layer_by_the_mean_of_the_layers_logits(llama) -> None:
    """decision: vote — layer 0 leans to safety by 3, layer 1 to helpfulness by 1: the mean (+1) picks safety at
    both layers, so the output is the safety corner's exactly; with the leans swapped, the helpfulness corner's.
    The prompt's decision is held while generating: cached greedy decoding equals teacher forcing at that corner."""
    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity="prompt", decision="vote"))
    ids = ids_batch(seed=4)
    mask = torch.ones_like(ids, dtype=torch.bool)
    layers = list(model.routed.values())
    for leans, corner in (((3.0, -1.0), (1.0, 0.0)), ((-3.0, 1.0), (0.0, 1.0))):
        with torch.no_grad():
            for mod, lean in zip(layers, leans, strict=True):
                mod.router.net.weight.zero_()
                mod.router.net.bias.copy_(torch.tensor([lean, -lean]))
            got = model(input_ids=ids, prompt_mask=mask).logits
            assert all(torch.equal(g[0, 0], torch.tensor(corner)) for g in model.gates())
            with model.fixed_gates(*corner):
                want = model(input_ids=ids).logits
                fixed = model.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False)
            voted = model.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False)
        assert torch.equal(got, want) and torch.equal(voted, fixed)


def test_the_decision_survives_save_and_load(tmp_path, llama) -> None:
    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity="prompt", decision="top1"))
    randomise_router(model, scale=2.0)
    save_midpo(model, None, tmp_path / "m", base_model=str(base_dir), safety_adapter=str(adapters["safety"]),
               helpfulness_adapter=str(adapters["helpfulness"]))
    loaded, _ = load_midpo(tmp_path / "m")
    assert loaded.settings.decision == "top1" and loaded.state.decision == "top1"
    ids = ids_batch(seed=3)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        want = model(input_ids=ids, prompt_mask=mask).logits
        assert torch.equal(loaded(input_ids=ids, prompt_mask=mask).logits, want)
    config = json.loads((tmp_path / "m" / "midpo_config.json").read_text())
    config["router"].pop("decision")  # a folder saved before `decision` existed loads as the soft router it was
    (tmp_path / "m" / "midpo_config.json").write_text(json.dumps(config))
    assert load_midpo(tmp_path / "m")[0].settings.decision == "soft"


def test_prompt_supervision_alone_sends_each_kind_to_its_expert(llama) -> None:
    """The loss of `supervision.prompts: ranked` on a tiny routed LLaMA, through hard gates: Adam steps from the
    zero-initialised router (which picks safety everywhere on a tie) make every layer pick the safety expert on
    harmful prompts and the helpfulness expert on benign ones; the kind is written in the first token."""
    from midpo_cli.stages.router import collate_prompts, make_prompt_supervision_loss

    base_dir, adapters = llama
    model = routed(base_dir, adapters, RouterSettings(granularity="prompt", decision="top1"))
    rows = [{"input_ids": [5 if i % 2 else 6, *range(7 + i // 2, 10 + i // 2 + i % 3)], "is_harmful": float(i % 2)}
            for i in range(8)]
    batch = collate_prompts(rows, pad_id=0)
    assert batch["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows]
    loss_fn = make_prompt_supervision_loss("inverse")
    opt = torch.optim.Adam(model.router_parameters(), lr=0.5)  # the kinds' features differ by a few hundredths
    first = None
    for _ in range(120):
        opt.zero_grad()
        loss, metrics = loss_fn(model, batch)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first
    with torch.no_grad():
        loss_fn(model, batch)
    picks = torch.stack([g[:, 0, 0] for g in model.gates()])  # (layers, B): safety picked at the prompt
    assert picks.tolist() == [[r["is_harmful"] for r in rows]] * len(model.routed)


def test_a_probe_folded_into_a_router_gives_the_probe_s_logit_in_float64() -> None:
    from midpo_cli.evaluation.probe import fit_probe_parameters
    from midpo_cli.stages.router import probe_router_weights

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 5, 0.1, 2, 3, 1]) + 4
    kinds = [bool(v > 4) for v in x[:, 0].tolist()]
    mu, sd, w, b = fit_probe_parameters(x, kinds)
    weight, bias = probe_router_weights(mu, sd, w, b)
    want = ((x - mu) / sd) @ w + b  # the probe switch's logit (midpo_cli.modeling.switch.ProbeSwitch)
    got = x @ weight.T + bias
    assert torch.allclose(got[:, 0], want, atol=1e-9) and torch.allclose(got[:, 1], -want, atol=1e-9)
    assert ((want >= 0) == torch.tensor(kinds)).double().mean() > 0.9


def test_the_lbfgs_solver_needs_supervision_alone_on_prompt_gates() -> None:
    ok = ["stages.router.solver=lbfgs", "stages.router.dpo_weight=0", "stages.router.supervision.weight=1",
          "stages.router.granularity=prompt"]
    assert load_recipe(None, ok).stages.router.solver == "lbfgs"
    for bad in ("stages.router.granularity=token", "stages.router.hidden=8", "stages.router.dpo_weight=1"):
        with pytest.raises(RecipeError, match="solver: lbfgs"):
            load_recipe(None, [*ok, bad])


def test_the_vote_needs_the_per_layer_fit() -> None:
    base = ["stages.router.decision=vote", "stages.router.granularity=prompt", "stages.router.dpo_weight=0",
            "stages.router.supervision.weight=1"]
    with pytest.raises(RecipeError, match="solver: lbfgs"):
        load_recipe(None, base)
    assert load_recipe(None, [*base, "stages.router.solver=lbfgs"]).stages.router.decision == "vote"


def test_ranked_supervision_needs_supervision_alone() -> None:
    base = ["stages.router.supervision.prompts=ranked"]
    with pytest.raises(RecipeError, match="dpo_weight: 0"):
        load_recipe(None, [*base, "stages.router.supervision.weight=1"])
    with pytest.raises(RecipeError, match="supervision.weight > 0|nothing to learn"):
        load_recipe(None, [*base, "stages.router.dpo_weight=0"])
    ok = load_recipe(None, [*base, "stages.router.dpo_weight=0", "stages.router.supervision.weight=1",
                            "stages.router.decision=top1"])
    assert ok.stages.router.decision == "top1"
    assert load_recipe(None, []).stages.router.decision == "soft"  # the paper's router stays the default


def test_the_router_stage_trains_a_top1_router_on_every_ranked_prompt(tmp_path, capfd) -> None:
    """The stage end to end on the tiny model: supervision alone on the prompts rank scored, hard gates, a saved
    MidPO folder that reloads as top1 and routes generate's prompts with one-hot gates."""
    from test_user_trips import _small_world

    from midpo_cli.cli import main

    sets = [*_small_world(tmp_path), "stages.router.decision=top1", "stages.router.granularity=prompt",
            "stages.router.dpo_weight=0", "stages.router.supervision.weight=1",
            "stages.router.supervision.prompts=ranked", "stages.router.supervision.scope=prompt"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), "--until", "router", *args]) == 0
    run = tmp_path / "run"
    manifest = json.loads((run / "router" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2 and manifest["router"]["decision"] == "top1"
    logged = [json.loads(x) for x in (run / "router" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert any("supervision" in r and "gate_safety_harmful" in r for r in logged)
    model, _ = load_midpo(run / "router" / "model")
    assert model.state.decision == "top1" and model.settings.granularity == "prompt"
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        model(input_ids=ids, prompt_mask=torch.ones_like(ids, dtype=torch.bool))
    assert all(set(g.unique().tolist()) <= {0.0, 1.0} for g in model.gates())

    # the same supervision solved per layer (solver: lbfgs): only the router stage re-runs, with no optimizer step,
    # and each layer's router is the logistic probe of its own input on those prompts
    from midpo_cli.data.ranked import ranked_prompt_kinds
    from midpo_cli.evaluation.probe import fit_probe_parameters
    from midpo_cli.modeling.switch import prompt_text_features

    args += ["--set", "stages.router.solver=lbfgs"]
    assert main(["pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), "--until", "router", *args]) == 0
    assert json.loads((run / "router" / "manifest.json").read_text())["metrics"]["steps"] == 0
    model, tokenizer = load_midpo(run / "router" / "model")
    texts, kinds = ranked_prompt_kinds(run / "rank" / "scored.jsonl")
    template = json.loads((run / "router" / "model" / "midpo_config.json").read_text())["template"]
    features = prompt_text_features(model, tokenizer, template, texts).double()
    layers = list(model.routed.values())
    width = features.shape[1] // len(layers)
    for i, layer in enumerate(layers):
        x = features[:, i * width:(i + 1) * width]
        mu, sd, w, b = fit_probe_parameters(x, kinds)
        z = layer.router.net(x.float()).double()
        assert torch.allclose(z[:, 0], ((x - mu) / sd) @ w + b, atol=1e-3) and torch.allclose(z[:, 1], -z[:, 0])

    # the routers' vote: one decision per prompt for every layer, at a threshold chosen on dev as the switch's is
    args += ["--set", "stages.router.decision=vote"]
    capfd.readouterr()
    assert main(["pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), "--until", "router", *args]) == 0
    err = capfd.readouterr().err
    # the quickstart builds its switch too: both thresholds are chosen on one set of corner answers, shown once
    assert "routers' vote threshold" in err and "probe switch threshold" in err
    assert err.count("router: switch threshold: dev answers") == 1 and "router: vote threshold" not in err
    # no switch: the corners answer for the vote alone (generate.models is not in the router's fingerprint, so a
    # router setting changes too, to re-run it)
    args += ["--set", "stages.generate.models=[base, midpo]", "--set", "stages.router.max_steps=3"]
    assert main(["pipeline", "run", str(REPO / "recipes" / "quickstart.yaml"), "--until", "router", *args]) == 0
    err = capfd.readouterr().err
    assert err.count("router: vote threshold: dev answers") == 1 and "probe switch threshold" not in err
    manifest = json.loads((run / "router" / "manifest.json").read_text())
    model, _ = load_midpo(run / "router" / "model")
    assert model.settings.decision == "vote" and manifest["router"]["decision"] == "vote"
    assert model.router_kind == f"learned routers' vote (threshold {model.settings.threshold:.4g})"
    assert model.settings.threshold == manifest["vote"]["threshold"] == manifest["metrics"]["vote_threshold"]
    assert manifest["vote"]["dev_score"] == max(c["score"] for c in manifest["vote"]["curve"])


def test_the_option_paper_alpaca7b_documents_is_a_valid_router() -> None:
    """The recipe keeps the paper's router and documents the vote as a commented option: that option, uncommented,
    must be a router the recipe schema accepts."""
    import yaml

    text = (REPO / "recipes" / "paper-alpaca7b.yaml").read_text()
    lines = text[text.index("#   router: {"):].splitlines()[:2]
    option = yaml.safe_load("\n".join(line.replace("#", "", 1)[2:] for line in lines))["router"]
    recipe = load_recipe(REPO / "recipes" / "paper-alpaca7b.yaml", [])
    assert recipe.stages.router.kind == "learned" and recipe.stages.router.decision == "soft"  # the paper's
    merged = recipe.stages.router.model_validate({**recipe.stages.router.model_dump(), **option,
                                                  "supervision": option["supervision"]})
    assert merged.decision == "vote" and merged.solver == "lbfgs" and merged.supervision.prompts == "ranked"


def test_a_vote_without_dev_prompts_is_refused_naming_the_vote() -> None:
    from midpo_cli.errors import InputError
    from midpo_cli.pipeline.preflight import check_dev_set

    sets = ["stages.router.decision=vote", "stages.router.granularity=prompt", "stages.router.dpo_weight=0",
            "stages.router.supervision.weight=1", "stages.router.solver=lbfgs", "data.dev_prompts=null",
            "stages.generate.prompts=[embedded:toy-safety/eval-prompts]"]
    with pytest.raises(InputError, match=r"the routers' vote \(stages.router.decision: vote\) chooses on the dev"):
        check_dev_set(load_recipe(None, sets), "router")
