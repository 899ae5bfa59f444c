"""Gate supervision (docs/design.md §2.8): BCE with logits on the gate logits toward the prompt's kind.

The loss is checked against a float64 per-cell loop (value and gradient, with the token mask and an unknown
row), weight 0 against the router loss as it was before supervision existed (bit for bit, loss and router
gradients), and the loss through the packed shared-prompt rows against two rows per pair.
"""

from __future__ import annotations

import math

import pytest
import torch

from midpo_cli.losses.preference import gate_supervision_loss, router_penalty, spe_dpo_loss
from midpo_cli.recipe import RouterSupervision

TOL = 1e-10


def bce_logit(z: float, y: float) -> float:
    """−[y·log σ(z) + (1−y)·log(1−σ(z))], written out."""
    p = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def ref_supervision(zs, zh, mask, harmful) -> float:
    zs, zh = zs.detach(), zh.detach() if zh is not None else None
    cells = [(layer, b, t) for layer in range(zs.shape[0]) for b in range(mask.shape[0])
             for t in range(mask.shape[1]) if mask[b, t] and not math.isnan(float(harmful[b]))]
    total = 0.0
    for layer, b, t in cells:
        y = float(harmful[b])
        total += bce_logit(float(zs[layer, b, t]), y)
        if zh is not None:
            total += bce_logit(float(zh[layer, b, t]), 1 - y)
    return total / len(cells)


def logits(seed: int, n_layers: int = 3, b: int = 4, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    zs = (3 * torch.randn(n_layers, b, t, generator=g, dtype=torch.float64)).requires_grad_()
    zh = (3 * torch.randn(n_layers, b, t, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    harmful = torch.tensor([1.0, 0.0, 1.0, float("nan")], dtype=torch.float64)
    return zs, zh, mask, harmful


@pytest.mark.parametrize("inverse", [True, False])
def test_supervision_matches_a_float64_loop_value_and_gradient(inverse):
    zs, zh, mask, harmful = logits(0)
    got = gate_supervision_loss(zs, zh if inverse else None, mask, harmful)
    assert float(got.detach()) == pytest.approx(ref_supervision(zs, zh if inverse else None, mask, harmful), abs=TOL)
    got.backward()
    # d/dz BCE(z, y) = σ(z) − y, divided by the number of (layer, token-in-scope) cells of known rows
    n = 3 * sum(int(mask[b].sum()) for b in range(3))
    for layer in range(3):
        for b in range(4):
            for t in range(5):
                inside = bool(mask[b, t]) and b < 3
                y = float(harmful[b]) if b < 3 else 0.0
                want_s = (torch.sigmoid(zs[layer, b, t]).item() - y) / n if inside else 0.0
                want_h = (torch.sigmoid(zh[layer, b, t]).item() - (1 - y)) / n if inside and inverse else 0.0
                assert zs.grad[layer, b, t].item() == pytest.approx(want_s, abs=TOL)
                assert (zh.grad[layer, b, t].item() if zh.grad is not None else 0.0) == pytest.approx(want_h, abs=TOL)


def test_supervision_takes_lists_of_layers_and_is_zero_on_an_empty_scope():
    zs, zh, mask, harmful = logits(1)
    assert float(gate_supervision_loss(list(zs), list(zh), mask, harmful)) == pytest.approx(
        float(gate_supervision_loss(zs, zh, mask, harmful)), abs=TOL)
    assert float(gate_supervision_loss(zs, zh, torch.zeros_like(mask), harmful)) == 0.0


def test_supervision_pulls_safety_gates_toward_the_prompt_kind():
    """Targets: g_s → 1 on harmful rows, → 0 on benign; g_h the other way round ("inverse")."""
    zs, zh, mask, harmful = logits(2)
    gate_supervision_loss(zs, zh, mask, harmful).backward()
    inside = mask.bool()
    assert (zs.grad[:, 0][inside[0].expand(3, -1)] < 0).all()  # harmful: descending the loss raises z_s
    assert (zs.grad[:, 1][inside[1].expand(3, -1)] > 0).all()  # benign: lowers z_s
    assert (zh.grad[:, 0][inside[0].expand(3, -1)] > 0).all()  # harmful: lowers z_h
    assert (zh.grad[:, 1][inside[1].expand(3, -1)] < 0).all()


def test_recipe_defaults_leave_supervision_off():
    from midpo_cli.recipe import Recipe

    cfg = Recipe().stages.router
    assert cfg.supervision == RouterSupervision() and cfg.supervision.weight == 0 and cfg.dpo_weight == 1
    with pytest.raises(ValueError, match="nothing to learn"):
        Recipe.model_validate({"stages": {"router": {"dpo_weight": 0.0}}})
    ok = Recipe.model_validate({"stages": {"router": {"dpo_weight": 0.0, "supervision": {"weight": 2.0}}}})
    assert ok.stages.router.supervision.scope == "answer"


# -- through the router stage's loss, on a tiny routed LLaMA (two rows per pair and packed shared-prompt rows) ----

def _model_and_feats(settings):
    from test_chunked_logps import routed
    from test_shared_prompt import features

    feats = features()
    for i, f in enumerate(feats):
        f["is_harmful"] = bool(i % 2)  # pairs 1 and 3 harmful
    return routed(torch.float64, settings), feats


EXTRAS = ("ref_chosen_logps", "ref_rejected_logps", "is_harmful")
SETTINGS = {"token": dict(), "prompt": dict(granularity="prompt"), "both": dict(input="token+prompt", hidden=8)}


def paper_router_loss(model, batch, beta=0.1, lam_s=0.3, lam_h=0.2):
    """The router loss as it was before supervision existed: DPO + the gate penalty over answer tokens."""
    from midpo_cli.engine.preference import concatenated_logps
    from midpo_cli.engine.shared_prompt import to_rows
    from midpo_cli.stages.router import prompt_kwargs

    chosen, rejected = concatenated_logps(model, batch, **prompt_kwargs(model, batch))
    losses, _, _ = spe_dpo_loss(chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"], 0.0, beta)
    g_s, g_h = ([to_rows(g, batch) for g in gates] for gates in model.gate_tensors())
    return losses.mean() + router_penalty(g_s, g_h, batch["response_mask"], lam_s, lam_h)


@pytest.mark.parametrize("share", [True, False], ids=["packed", "two-rows"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_weight_zero_is_the_paper_router_bit_for_bit(name, share):
    from midpo_cli.data.tokenize import collate_pairs
    from midpo_cli.modeling.midpo import RouterSettings
    from midpo_cli.stages.router import make_router_loss

    model, feats = _model_and_feats(RouterSettings(**SETTINGS[name]))
    batch = collate_pairs(feats, 0, extras=EXTRAS, share_prompt=share)
    want = paper_router_loss(model, batch)
    want_grads = torch.autograd.grad(want, model.router_parameters())
    for sup in (None, RouterSupervision(weight=0.0, scope="both", helpfulness="free")):
        got, metrics = make_router_loss(0.1, 0.3, 0.2, "answer", supervision=sup)(model, batch)
        assert torch.equal(got, want) and "supervision" not in metrics
        for g, w in zip(torch.autograd.grad(got, model.router_parameters()), want_grads, strict=True):
            assert torch.equal(g, w)


def two_row_supervision(model, feats, sup: RouterSupervision) -> torch.Tensor:
    """Independent of the stage's code path: the gate logits of every sequence alone (no padding, no packing),
    recomputed from the router on each routed layer's input, and the BCE written out per cell in float64."""
    cells: list[float] = []
    for side in ("chosen", "rejected"):
        for f in feats:
            ids = torch.tensor([f[f"{side}_input_ids"]])
            n_prompt = f[f"{side}_prompt_len"]
            answer = torch.zeros_like(ids, dtype=torch.bool)
            answer[0, n_prompt:] = True
            inputs: list[torch.Tensor] = []
            hooks = [m.register_forward_pre_hook(lambda _m, a, seen=inputs: seen.append(a[0]))
                     for m in model.routed.values()]
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_mask=~answer)
            finally:
                for h in hooks:
                    h.remove()
            in_scope = {"answer": answer[0], "prompt": ~answer[0], "both": torch.ones_like(answer[0])}[sup.scope]
            y = float(f["is_harmful"])
            for mod, h in zip(model.routed.values(), inputs, strict=True):
                mean = h[0, :n_prompt].mean(0, keepdim=True)
                if mod.state.granularity == "prompt":
                    z = mod.router.logits(mean).expand(h.shape[1], 2)
                elif mod.state.router_input == "token+prompt":
                    z = mod.router.logits(torch.cat([h[0], mean.expand(h.shape[1], -1)], -1))
                else:
                    z = mod.router.logits(h[0])
                for t in torch.nonzero(in_scope).flatten().tolist():
                    term = bce_logit(float(z[t, 0]), y)
                    if sup.helpfulness == "inverse":
                        term += bce_logit(float(z[t, 1]), 1 - y)
                    cells.append(term)
    return torch.tensor(sum(cells) / len(cells), dtype=torch.float64)


@pytest.mark.parametrize("scope", ["answer", "prompt", "both"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_supervised_router_loss_packed_and_two_rows_agree_with_each_sequence_alone(name, scope):
    """λ·supervision is added to DPO + penalty; packed rows (prompt gates gathered back to both rows) and two
    rows per pair give the same loss and router gradients, and the term equals the per-sequence computation."""
    from test_shared_prompt import MET_AT_THE_PROMPT, assert_close

    from midpo_cli.data.tokenize import collate_pairs
    from midpo_cli.modeling.midpo import RouterSettings
    from midpo_cli.stages.router import make_router_loss

    model, feats = _model_and_feats(RouterSettings(**SETTINGS[name]))
    helpfulness = "free" if scope == "prompt" else "inverse"
    sup = RouterSupervision(weight=2.0, scope=scope, helpfulness=helpfulness)
    loss_fn = make_router_loss(0.1, 0.3, 0.2, "answer", supervision=sup)
    runs = []
    for share in (True, False):
        batch = collate_pairs(feats, 0, extras=EXTRAS, share_prompt=share)
        loss, metrics = loss_fn(model, batch)
        base = paper_router_loss(model, batch)
        assert_close(loss, base + 2.0 * metrics["supervision"].double(), MET_AT_THE_PROMPT)
        runs.append((loss, metrics["supervision"], torch.autograd.grad(loss, model.router_parameters())))
    (loss_p, sup_p, grad_p), (loss_r, sup_r, grad_r) = runs
    assert_close(loss_p, loss_r, MET_AT_THE_PROMPT)
    # the routers run in float32, whose rounding depends on the batch's shape: within 1e-6 of the largest
    # gradient entry of all router parameters (a layer's small bias gradient sums terms of that size)
    scale = max(float(w.abs().max()) for w in grad_r)
    for g, w in zip(grad_p, grad_r, strict=True):
        assert float((g - w).abs().max()) <= MET_AT_THE_PROMPT * scale
    assert_close(sup_r.double(), two_row_supervision(model, feats, sup), MET_AT_THE_PROMPT)


def test_supervision_only_drops_the_dpo_term():
    from midpo_cli.data.tokenize import collate_pairs
    from midpo_cli.modeling.midpo import RouterSettings
    from midpo_cli.stages.router import make_router_loss

    model, feats = _model_and_feats(RouterSettings())
    batch = collate_pairs(feats, 0, extras=EXTRAS, share_prompt=True)
    sup = RouterSupervision(weight=1.5)
    loss, metrics = make_router_loss(0.1, 0.0, 0.0, "answer", supervision=sup, dpo_weight=0.0)(model, batch)
    assert float(loss) == pytest.approx(1.5 * float(metrics["supervision"]), rel=1e-6)  # float32 routers


def test_supervision_alone_separates_the_gates_by_prompt_kind():
    """The whole chain (recorded logits with grad, packed rows gathered back, the mask, the targets): a few
    Adam steps of supervision only on the tiny routed LLaMA open g_s on harmful prompts and close it on benign
    ones, which the zero-initialised router starts with equal (0.5)."""
    from midpo_cli.data.tokenize import collate_pairs
    from midpo_cli.modeling.midpo import RouterSettings
    from midpo_cli.stages.router import make_router_loss

    model, feats = _model_and_feats(RouterSettings(granularity="prompt"))
    for f in feats:  # the kind is written in the prompt's first token: 5 harmful, 6 benign
        f["chosen_input_ids"][0] = f["rejected_input_ids"][0] = 5 if f["is_harmful"] else 6
    with torch.no_grad():
        for p in model.router_parameters():
            p.zero_()
    batch = collate_pairs(feats, 0, extras=EXTRAS, share_prompt=True)
    loss_fn = make_router_loss(0.1, 0.0, 0.0, "answer", supervision=RouterSupervision(weight=1.0, scope="answer"),
                               dpo_weight=0.0)
    opt = torch.optim.Adam(model.router_parameters(), lr=0.5)  # the features differ by ~0.04

    def mean_gates() -> tuple[float, float]:
        with torch.no_grad():
            loss_fn(model, batch)
            g_s = torch.stack(model.gate_tensors()[0]).mean(0)[:, 0]  # (pairs,) packed rows, first token
        harmful = batch["is_harmful"].bool()
        return float(g_s[harmful].mean()), float(g_s[~harmful].mean())

    assert mean_gates() == pytest.approx((0.5, 0.5), abs=1e-6)
    for _ in range(120):
        opt.zero_grad()
        loss_fn(model, batch)[0].backward()
        opt.step()
    harmful, benign = mean_gates()
    assert harmful > 0.8 and benign < 0.2
