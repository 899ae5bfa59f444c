"""losses/preference.py against float64 per-sample loops (math module, no torch maths) and hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from midpo_cli.losses.preference import (
    cost_model_loss,
    preference_margin,
    reward_model_loss,
    router_penalty,
    sequence_logps,
    sft_loss,
    spe_dpo_loss,
)

TOL = 1e-6


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def randn(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, generator=g, dtype=torch.float64)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_token_logp(row: list[float], token: int) -> float:
    top = max(row)
    return row[token] - (top + math.log(sum(math.exp(v - top) for v in row)))


def ref_sequence_logps(logits, labels, mask) -> list[float]:
    out = []
    for b in range(logits.shape[0]):
        total = 0.0
        for t in range(1, logits.shape[1]):
            if mask[b, t]:
                total += ref_token_logp(logits[b, t - 1].tolist(), int(labels[b, t]))
        out.append(total)
    return out


def random_batch(seed: int, b: int = 4, t: int = 7, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, (start, end) in enumerate([(2, 7), (1, 4), (3, 6), (6, 7)][:b]):
        mask[i, start:end] = 1  # prompt before start, padding after end
    return logits, labels, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequence_logps_matches_loop(seed):
    logits, labels, mask = random_batch(seed)
    got = sequence_logps(logits, labels, mask)
    assert got.shape == (4,)
    assert got.tolist() == pytest.approx(ref_sequence_logps(logits, labels, mask), abs=TOL)


def test_sequence_logps_ignores_masked_labels_and_hand_value():
    """V = 2, logits at t=0 are (0, ln 3): p(token 1) = 3/4, so log p = ln 0.75 ≈ −0.287682.

    Row 1 masks that position, so its sum is 0; the label there is −100 (ignore index), which must
    not break the gather.
    """
    logits = torch.tensor([[[0.0, math.log(3)], [5.0, 5.0]]] * 2, dtype=torch.float64)
    labels = torch.tensor([[0, 1], [0, -100]])
    mask = torch.tensor([[0, 1], [0, 0]])
    got = sequence_logps(logits, labels, mask)
    assert got.tolist() == pytest.approx([math.log(0.75), 0.0], abs=1e-12)


def test_sft_loss_is_mean_token_nll():
    logits, labels, mask = random_batch(3)
    per_seq = ref_sequence_logps(logits, labels, mask)
    n_tokens = int(mask[:, 1:].sum())
    got = sft_loss(logits, labels, mask)
    assert got.dim() == 0
    assert float(got) == pytest.approx(-sum(per_seq) / n_tokens, abs=TOL)
    # and it is what cross_entropy over the response tokens gives
    flat = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           reduction="none")
    assert float(got) == pytest.approx(float(flat[mask[:, 1:].reshape(-1).bool()].mean()), abs=TOL)


def test_sft_loss_gradient_flows():
    logits, labels, mask = random_batch(4)
    logits.requires_grad_(True)
    sft_loss(logits, labels, mask).backward()
    assert logits.grad[:, -1].abs().sum() == 0  # last position predicts nothing
    assert logits.grad.abs().sum() > 0


def pairs(seed: int, b: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, generator=g, dtype=torch.float64) * 4 - 20 for _ in range(4)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_spe_dpo_matches_loop(seed, beta):
    pc, pr, rc, rr = pairs(seed)
    g = torch.Generator().manual_seed(seed + 9)
    s_c, s_r = randn(g, 6), randn(g, 6)
    margin = preference_margin(s_c, s_r, scale=1.5)
    assert (margin == 0).any() and (margin > 0).any()  # some margins clipped, some not
    losses, cr, rj = spe_dpo_loss(pc, pr, rc, rr, margin, beta)
    for i in range(6):
        m = max(0.0, 1.5 * (float(s_c[i]) - float(s_r[i])))
        assert float(margin[i]) == pytest.approx(m, abs=TOL)
        delta = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        assert float(losses[i]) == pytest.approx(-log_sigmoid(beta * delta - m), abs=TOL)
        assert float(cr[i]) == pytest.approx(beta * (float(pc[i]) - float(rc[i])), abs=TOL)
        assert float(rj[i]) == pytest.approx(beta * (float(pr[i]) - float(rr[i])), abs=TOL)


def test_spe_dpo_margin_zero_is_trl_sigmoid_dpo():
    """TRL's sigmoid DPO: logits = (pc − pr) − (rc − rr); loss = −logsigmoid(β·logits) (label smoothing 0)."""
    pc, pr, rc, rr = pairs(5)
    beta = 0.1
    trl_logits = (pc - pr) - (rc - rr)
    trl = -F.logsigmoid(beta * trl_logits)
    for margin in (0.0, torch.zeros(6, dtype=torch.float64)):
        losses, _, _ = spe_dpo_loss(pc, pr, rc, rr, margin, beta)
        assert torch.allclose(losses, trl, atol=1e-12)


def test_spe_dpo_hand_worked():
    """β = 0.5; log-probs: policy chosen −10, rejected −12; reference chosen −11, rejected −11.

    Δ = (−10 + 11) − (−12 + 11) = 1 − (−1) = 2; β·Δ = 1.
    m = 0 → loss = −log σ(1) = log(1 + e^−1) = 0.313262; m = 1 → −log σ(0) = ln 2 = 0.693147.
    Rewards: chosen 0.5·1 = 0.5, rejected 0.5·(−1) = −0.5.
    """
    losses, cr, rj = spe_dpo_loss(f64(-10.0), f64(-12.0), f64(-11.0), f64(-11.0), 0.0, 0.5)
    assert float(losses[0]) == pytest.approx(0.313262, abs=1e-6)
    assert (float(cr[0]), float(rj[0])) == pytest.approx((0.5, -0.5))
    losses, _, _ = spe_dpo_loss(f64(-10.0), f64(-12.0), f64(-11.0), f64(-11.0), f64(1.0), 0.5)
    assert float(losses[0]) == pytest.approx(0.693147, abs=1e-6)


def test_spe_dpo_rewards_are_detached_and_loss_has_grad():
    pc, pr, rc, rr = (x.clone().requires_grad_(True) for x in pairs(6))
    losses, cr, rj = spe_dpo_loss(pc, pr, rc, rr, 0.3, 0.1)
    assert not cr.requires_grad and not rj.requires_grad
    losses.sum().backward()
    assert pc.grad is not None and (pc.grad < 0).all()  # raising the chosen log-prob lowers the loss


def test_reward_model_loss_matches_loop():
    g = torch.Generator().manual_seed(11)
    rw, rl = randn(g, 8) * 2, randn(g, 8)
    lam = 0.01
    losses, metrics = reward_model_loss(rw, rl, lam)
    for i in range(8):
        a, b = float(rw[i]), float(rl[i])
        assert float(losses[i]) == pytest.approx(-log_sigmoid(a - b) + lam * (a * a + b * b) / 2, abs=TOL)
    wins = sum(float(a) > float(b) for a, b in zip(rw, rl, strict=True))
    assert float(metrics["accuracy"]) == pytest.approx(wins / 8)
    assert float(metrics["chosen_mean"]) == pytest.approx(sum(rw.tolist()) / 8, abs=TOL)
    assert float(metrics["rejected_mean"]) == pytest.approx(sum(rl.tolist()) / 8, abs=TOL)
    assert float(metrics["margin"]) == pytest.approx((sum(rw.tolist()) - sum(rl.tolist())) / 8, abs=TOL)
    assert all(not v.requires_grad for v in metrics.values())


def test_reward_model_loss_hand_worked():
    """r_w = 1, r_l = −1, λ = 0.1: −log σ(2) = 0.126928; λ·(1 + 1)/2 = 0.1 → 0.226928."""
    losses, _ = reward_model_loss(f64(1.0), f64(-1.0), 0.1)
    assert float(losses[0]) == pytest.approx(0.226928, abs=1e-6)


def test_cost_model_loss_matches_loop():
    g = torch.Generator().manual_seed(12)
    cs, cu = randn(g, 8) * 2, randn(g, 8) * 2
    safe_s = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    safe_u = torch.tensor([0, 0, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    lam = 0.02
    losses, metrics = cost_model_loss(cs, cu, safe_s, safe_u, lam)
    sign_hits = 0
    for i in range(8):
        a, b = float(cs[i]), float(cu[i])
        s_s = -1.0 if safe_s[i] else 1.0
        s_u = -1.0 if safe_u[i] else 1.0
        ref = -log_sigmoid(b - a) - log_sigmoid(s_u * b) - log_sigmoid(s_s * a) + lam * (a * a + b * b) / 2
        assert float(losses[i]) == pytest.approx(ref, abs=TOL)
        sign_hits += (a < 0) == bool(safe_s[i])
        sign_hits += (b < 0) == bool(safe_u[i])
    ordered = sum(float(u) > float(s) for s, u in zip(cs, cu, strict=True))
    assert float(metrics["accuracy"]) == pytest.approx(ordered / 8)
    assert float(metrics["sign_accuracy"]) == pytest.approx(sign_hits / 16)
    # float 0/1 labels give the same losses as bools
    losses_f, _ = cost_model_loss(cs, cu, safe_s.double(), safe_u.double(), lam)
    assert torch.allclose(losses, losses_f, atol=1e-12)


def test_cost_model_loss_hand_worked():
    """Safer answer safe with c_s = −1, other unsafe with c_u = 1, λ = 0:
    −log σ(2) − log σ(1·1) − log σ(−1·−1) = 0.126928 + 2·0.313262 = 0.753452."""
    losses, _ = cost_model_loss(f64(-1.0), f64(1.0), torch.tensor([True]), torch.tensor([False]), 0.0)
    assert float(losses[0]) == pytest.approx(0.753452, abs=1e-6)


def ref_router_penalty(gs, gh, mask, lam_s, lam_h) -> float:
    layers = []
    for layer in range(gs.shape[0]):
        cells = [(float(gs[layer, b, t]), float(gh[layer, b, t]))
                 for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]
        layers.append(lam_s * sum(abs(s) for s, _ in cells) / len(cells)
                      + lam_h * sum(abs(h - 1) for _, h in cells) / len(cells))
    return sum(layers) / len(layers)


def gates(seed: int, n_layers: int = 3, b: int = 3, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    gs = torch.rand(n_layers, b, t, generator=g, dtype=torch.float64)
    gh = torch.rand(n_layers, b, t, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    return gs, gh, mask


def test_router_penalty_matches_loop_tensor_and_list():
    gs, gh, mask = gates(0)
    ref = ref_router_penalty(gs, gh, mask, 0.7, 1.3)
    assert float(router_penalty(gs, gh, mask, 0.7, 1.3)) == pytest.approx(ref, abs=TOL)
    assert float(router_penalty(list(gs), list(gh), mask, 0.7, 1.3)) == pytest.approx(ref, abs=TOL)


def test_router_penalty_is_layer_mean_not_sum():
    """Two layers with the same gates give the same penalty as one layer (summing would double it)."""
    gs, gh, mask = gates(1, n_layers=1)
    one = router_penalty(gs, gh, mask)
    two = router_penalty(torch.cat([gs, gs]), torch.cat([gh, gh]), mask)
    assert float(two) == pytest.approx(float(one), abs=1e-12)


def test_router_penalty_ignores_padding():
    gs, gh, mask = gates(2)
    before = router_penalty(gs, gh, mask)
    pad = ~mask.bool()
    gs2, gh2 = gs.clone(), gh.clone()
    gs2[:, pad] = 0.999
    gh2[:, pad] = float("nan")
    assert float(router_penalty(gs2, gh2, mask)) == pytest.approx(float(before), abs=1e-12)


def test_router_penalty_hand_worked():
    """One layer, tokens (g_s, g_h) = (0.2, 0.9), (0.6, 0.5), padding (1, 0):
    mean g_s = 0.4, mean |g_h − 1| = (0.1 + 0.5)/2 = 0.3; λ_s = 1, λ_h = 2 → 0.4 + 0.6 = 1.0."""
    gs = torch.tensor([[[0.2, 0.6, 1.0]]], dtype=torch.float64)
    gh = torch.tensor([[[0.9, 0.5, 0.0]]], dtype=torch.float64)
    got = router_penalty(gs, gh, torch.tensor([[1, 1, 0]]), lam_safety=1.0, lam_help=2.0)
    assert float(got) == pytest.approx(1.0, abs=1e-12)


def test_router_penalty_gradient_only_at_real_tokens():
    gs, gh, mask = gates(3)
    gs.requires_grad_(True)
    router_penalty(gs, gh, mask).backward()
    assert (gs.grad[:, ~mask.bool()] == 0).all()
    assert (gs.grad[:, mask.bool()] > 0).all()
