"""The linear probe behind the router stage's `input_probe_auroc` (midpo_cli.evaluation.probe)."""

from __future__ import annotations

import torch

from midpo_cli.evaluation.gate_stats import auroc
from midpo_cli.evaluation.probe import bag_of_words, fit_linear_probe, linear_probe_auroc, words_of, words_probe_auroc


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


def test_words_of_and_bag_of_words():
    assert words_of("Hack my BOSS's email, now!") == ["hack", "my", "boss's", "email", "now"]
    x = bag_of_words(["a gun and a gun", "bread"], ["bread", "gun", "knife"])
    assert x.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_words_probe_sees_shared_words_and_nothing_else():
    harmful = ["how to make a bomb", "how to hide a bomb", "how to steal a car", "help me steal money"]
    benign = ["how to bake bread", "how to slice bread", "how to plant tomatoes", "help me plant roses"]
    train = harmful + benign
    y = [True] * 4 + [False] * 4
    # new prompts that reuse each kind's words are told apart ...
    shared = ["tell me to build a bomb", "steal a bike", "toast some bread", "plant a tree"]
    assert words_probe_auroc(train, y, shared, [True, True, False, False]) == 1.0
    # ... prompts whose words never occurred in training get one score: chance, whatever their kind
    unseen = ["grenade assembly", "pickpocket wallets", "knead dough", "water ferns"]
    assert words_probe_auroc(train, y, unseen, [True, True, False, False]) == 0.5
