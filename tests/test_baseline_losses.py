"""losses/baselines.py against float64 per-sample loops (math module only), hand-worked numbers, and TRL's DPO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from midpo_cli.data.filters import safedpo_chosen
from midpo_cli.losses.baselines import dpo_loss, modpo_loss, safedpo_loss

TOL = 1e-9


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def pairs(seed: int, b: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, generator=g, dtype=torch.float64) * 4 - 20 for _ in range(4)]


def delta_of(pc, pr, rc, rr, i: int) -> float:
    return (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))


def test_dpo_is_trls_sigmoid_loss():
    """TRL's sigmoid DPO: −logsigmoid(β·((pc − pr) − (rc − rr))), label smoothing 0."""
    pc, pr, rc, rr = pairs(3)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, 0.1)
    assert torch.allclose(losses, -F.logsigmoid(0.1 * ((pc - pr) - (rc - rr))), atol=1e-12)
    for i in range(6):
        assert float(losses[i]) == pytest.approx(-log_sigmoid(0.1 * delta_of(pc, pr, rc, rr, i)), abs=TOL)
    assert torch.allclose(cr, 0.1 * (pc - rc)) and torch.allclose(rj, 0.1 * (pr - rr))


@pytest.mark.parametrize(("beta", "w_help", "w_safety"), [(0.1, 0.5, 0.5), (0.3, 0.8, 0.2), (0.1, 1.0, 0.0)])
def test_modpo_matches_loop(beta, w_help, w_safety):
    pc, pr, rc, rr = pairs(1)
    g = torch.Generator().manual_seed(7)
    cost_c, cost_r = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(2))
    losses, cr, rj = modpo_loss(pc, pr, rc, rr, -cost_c, -cost_r, beta=beta, w_help=w_help, w_safety=w_safety)
    for i in range(6):
        r_s_w, r_s_l = -float(cost_c[i]), -float(cost_r[i])
        logit = (beta / w_help) * delta_of(pc, pr, rc, rr, i) - (w_safety / w_help) * (r_s_w - r_s_l)
        assert float(losses[i]) == pytest.approx(-log_sigmoid(logit), abs=TOL)
        assert float(cr[i]) == pytest.approx(beta / w_help * (float(pc[i]) - float(rc[i])), abs=TOL)
        assert float(rj[i]) == pytest.approx(beta / w_help * (float(pr[i]) - float(rr[i])), abs=TOL)


def test_modpo_worked_example_margin_sign_and_weights():
    """The docstring's example: β 0.1, w 0.5/0.5, Δ = 2, cost(y_w) = −1, cost(y_l) = +2."""
    pc, pr, rc, rr = f64(-10.0), f64(-12.0), f64(-11.0), f64(-11.0)  # Δ = 1 − (−1) = 2
    safe_winner, _, _ = modpo_loss(pc, pr, rc, rr, f64(1.0), f64(-2.0), beta=0.1, w_help=0.5, w_safety=0.5)
    assert float(safe_winner[0]) == pytest.approx(math.log1p(math.exp(2.6)), abs=1e-12)  # logit −2.6
    assert float(safe_winner[0]) == pytest.approx(2.671645, abs=1e-6)
    no_safety, _, _ = modpo_loss(pc, pr, rc, rr, f64(1.0), f64(-2.0), beta=0.1, w_help=0.5, w_safety=0.0)
    assert float(no_safety[0]) == pytest.approx(0.513015, abs=1e-6)  # plain DPO at β/w_h = 0.2: logit 0.4
    unsafe_winner, _, _ = modpo_loss(pc, pr, rc, rr, f64(-2.0), f64(1.0), beta=0.1, w_help=0.5, w_safety=0.5)
    assert float(unsafe_winner[0]) == pytest.approx(0.032828, abs=1e-6)  # logit 0.4 + 3 = 3.4
    # the sign: a safer winner asks the policy for a larger Δ than DPO does, an unsafer winner for a smaller one
    assert float(unsafe_winner[0]) < float(no_safety[0]) < float(safe_winner[0])


def test_safedpo_matches_loop():
    pc, pr, rc, rr = pairs(2)
    chosen_unsafe, rejected_unsafe = f64(0, 0, 0, 1, 0, 1), f64(1, 0, 1, 0, 0, 1)
    losses, _, _ = safedpo_loss(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, beta=0.1, delta=2.5)
    for i in range(6):
        offset = (float(rejected_unsafe[i]) - float(chosen_unsafe[i])) * 2.5
        assert float(losses[i]) == pytest.approx(-log_sigmoid(0.1 * delta_of(pc, pr, rc, rr, i) - offset), abs=TOL)
    zero, _, _ = safedpo_loss(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, beta=0.1, delta=0.0)
    assert torch.allclose(zero, dpo_loss(pc, pr, rc, rr, 0.1)[0], atol=1e-12)


# (better, safe_0, safe_1) → SafeDPO's y_w (None: dropped)
SAFEDPO_TABLE = [
    (0, True, True, 0),     # both safe: the helpfulness label stands
    (1, True, True, 1),
    (0, True, False, 0),    # the better answer is the safe one: kept
    (1, False, True, 1),
    (0, False, True, 1),    # the better answer is unsafe, the other safe: swapped
    (1, True, False, 0),
    (0, False, False, None),  # both unsafe: dropped
    (1, False, False, None),
]


@pytest.mark.parametrize(("better", "safe_0", "safe_1", "chosen"), SAFEDPO_TABLE)
def test_safedpo_reordering_table(better, safe_0, safe_1, chosen):
    assert safedpo_chosen(better, (safe_0, safe_1)) == chosen


def test_safedpo_reordering_through_the_data_filter():
    """The `safedpo` pair filter applies the same table to canonical rows, and counts the dropped pairs."""
    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.readers import Table

    rows = [{"prompt": f"p{i}", "response_0": f"a{i}", "response_1": f"b{i}", "better_response_id": b,
             "safer_response_id": 0 if s0 else 1, "is_response_0_safe": s0, "is_response_1_safe": s1}
            for i, (b, s0, s1, _) in enumerate(SAFEDPO_TABLE)]
    selection = select_pairs(Table(rows=rows, source="table"), "safedpo")
    want = [(i, c) for i, (_, _, _, c) in enumerate(SAFEDPO_TABLE) if c is not None]
    assert [(p.row, p.chosen) for p in selection.pairs] == [(i, ("a", "b")[c] + str(i)) for i, c in want]
    assert all(p.chosen_safe for p in selection.pairs)
    assert [p.rejected_safe for p in selection.pairs] == [True, True, False, False, False, False]
    assert selection.counts["dropped:both_unsafe"] == 2
