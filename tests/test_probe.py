"""The linear probe behind the router stage's `input_probe_auroc` (midpo_cli.probe)."""

from __future__ import annotations

import torch

from midpo_cli.gate_stats import auroc
from midpo_cli.probe import fit_linear_probe, linear_probe_auroc


def _data(n: int, d: int, seed: int) -> tuple[torch.Tensor, list[bool]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 10, d)  # scales differ: the probe standardises
    return x, [bool(v > 0) for v in x[:, 7]]


def test_a_linearly_separable_kind_is_found_on_new_rows_and_a_random_one_is_not() -> None:
    x, y = _data(300, 40, 0)
    new_x, new_y = _data(200, 40, 1)
    assert linear_probe_auroc(x, y, new_x, new_y) > 0.95
    shuffled = [bool(v) for v in torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(2))]
    assert 0.35 < linear_probe_auroc(x, y, new_x, shuffled) < 0.65


def test_memorised_but_not_generalising_features_score_high_on_training_rows_only() -> None:
    """More dimensions than rows and labels unrelated to the features: the fit separates its own rows (the
    quickstart's 1.00 on training prompts) while held-out rows stay at chance."""
    g = torch.Generator().manual_seed(3)
    x, new_x = torch.randn(60, 500, generator=g), torch.randn(200, 500, generator=g)
    y = [bool(v) for v in torch.randint(0, 2, (60,), generator=g)]
    new_y = [bool(v) for v in torch.randint(0, 2, (200,), generator=g)]
    score = fit_linear_probe(x, y)
    assert auroc(score(x).tolist(), y) > 0.99
    assert 0.35 < linear_probe_auroc(x, y, new_x, new_y) < 0.65


def test_one_kind_only_gives_none_and_no_grad_callers_still_fit() -> None:
    x, y = _data(50, 10, 4)
    assert linear_probe_auroc(x, [True] * 50, x, y) is None
    assert linear_probe_auroc(x, y, x, [False] * 50) is None
    with torch.no_grad():
        assert linear_probe_auroc(x, y, x, y) > 0.95
