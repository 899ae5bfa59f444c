"""Evaluation statistics against per-sample float64 loops written out here, and hand-worked cases."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from midpo_cli.evaluation.bootstrap import bootstrap_indices
from midpo_cli.evaluation.summary import (
    as_float,
    group,
    mean_ci,
    pareto_front,
    summarize,
    win_outcomes,
)


def make_rows(seed: int = 0, n: int = 40) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        harmful = i % 2 == 0
        for model, shift in (("base", 0.0), ("safe", -1.0)):
            cost = rng.gauss(shift + (0.5 if harmful else -0.5), 1.0)
            rows.append({"model": model, "prompt_set": "mix", "index": i, "is_harmful": harmful,
                         "category": "harm" if harmful else "ok", "reward": rng.gauss(1.0 + shift, 1.0),
                         "cost": cost, "safe": cost < 0, "refusal": rng.random() < (0.7 if harmful else 0.2),
                         "answer_tokens": rng.randint(1, 30)})
    return rows


def loop_mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept)


def test_point_estimates_match_a_per_sample_loop() -> None:
    rows = make_rows()
    summary = summarize(rows, bootstrap=0)
    for model in ("base", "safe"):
        mine = [r for r in rows if r["model"] == model]
        got = group(summary, model, "mix")["metrics"]
        assert got["reward"]["mean"] == pytest.approx(loop_mean([r["reward"] for r in mine]), abs=1e-12)
        assert got["cost"]["mean"] == pytest.approx(loop_mean([r["cost"] for r in mine]), abs=1e-12)
        assert got["harmless_rate"]["mean"] == pytest.approx(sum(r["cost"] < 0 for r in mine) / len(mine))
        harmful = [r for r in mine if r["is_harmful"]]
        benign = [r for r in mine if not r["is_harmful"]]
        assert got["refusal_rate_harmful"]["mean"] == pytest.approx(sum(r["refusal"] for r in harmful) / len(harmful))
        assert got["refusal_rate_benign"]["mean"] == pytest.approx(sum(r["refusal"] for r in benign) / len(benign))
        assert got["refusal_rate_harmful"]["n"] == len(harmful)
        assert got["answer_tokens"]["mean"] == pytest.approx(loop_mean([r["answer_tokens"] for r in mine]))
        assert got["reward"]["lo"] is None  # no resamples, no interval


def test_bootstrap_interval_equals_an_independent_percentile_loop() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=50)
    values[[3, 7]] = np.nan
    idx = bootstrap_indices(50, 500, seed=3, key="k")
    stat = mean_ci(values, idx)
    means = []
    for draw in idx:
        picked = [float(values[j]) for j in draw if not math.isnan(values[j])]
        means.append(sum(picked) / len(picked))
    means.sort()
    # numpy's default percentile is linear interpolation between order statistics
    def pct(q: float) -> float:
        pos = q / 100 * (len(means) - 1)
        lo = int(math.floor(pos))
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])
    assert stat["lo"] == pytest.approx(pct(2.5), abs=1e-12)
    assert stat["hi"] == pytest.approx(pct(97.5), abs=1e-12)
    assert stat["n"] == 48


def test_bootstrap_interval_width_matches_the_normal_approximation() -> None:
    values = np.random.default_rng(2).normal(loc=3.0, scale=2.0, size=400)
    stat = mean_ci(values, bootstrap_indices(400, 2000, seed=0))
    half = 1.96 * values.std(ddof=1) / math.sqrt(400)
    assert stat["lo"] < stat["mean"] < stat["hi"]
    assert (stat["hi"] - stat["lo"]) / 2 == pytest.approx(half, rel=0.15)


def test_constant_values_give_a_zero_width_interval_and_seed_reproduces() -> None:
    stat = mean_ci(np.full(10, 0.25), bootstrap_indices(10, 100, seed=0))
    assert (stat["mean"], stat["lo"], stat["hi"]) == (0.25, 0.25, 0.25)
    assert np.array_equal(bootstrap_indices(9, 5, 7, "a"), bootstrap_indices(9, 5, 7, "a"))
    assert not np.array_equal(bootstrap_indices(9, 5, 7, "a"), bootstrap_indices(9, 5, 8, "a"))


def test_win_rates_are_paired_by_prompt() -> None:
    """B = A + 1 on every prompt: A's reward never wins, and pairing makes that interval exactly [0, 0],
    although each model's own mean interval is wide (the rewards vary a lot between prompts)."""
    rng = random.Random(0)
    rows = []
    for i in range(30):
        r = rng.gauss(0, 5)
        rows.append({"model": "A", "prompt_set": "p", "index": i, "reward": r, "cost": r})
        rows.append({"model": "B", "prompt_set": "p", "index": i, "reward": r + 1, "cost": r + 1})
    summary = summarize(rows, bootstrap=300)
    wins = {w["metric"]: w for w in summary["win_rates"]}
    assert (wins["reward"]["rate"], wins["reward"]["lo"], wins["reward"]["hi"]) == (0.0, 0.0, 0.0)
    assert wins["reward"]["losses"] == 30
    assert (wins["cost"]["rate"], wins["cost"]["lo"], wins["cost"]["hi"]) == (1.0, 1.0, 1.0)  # lower cost wins
    a = group(summary, "A", "p")["metrics"]["reward"]
    assert a["hi"] - a["lo"] > 2.0


def test_win_outcomes_ties_and_missing_by_hand() -> None:
    a = np.array([1.0, 2.0, 3.0, np.nan])
    b = np.array([2.0, 2.0, 1.0, 0.0])
    out = win_outcomes(a, b)
    assert out[:3].tolist() == [0.0, 0.5, 1.0] and math.isnan(out[3])
    assert win_outcomes(a, b, lower_is_better=True)[:3].tolist() == [1.0, 0.5, 0.0]


def test_models_with_different_coverage_pair_only_shared_prompts() -> None:
    rows = [{"model": "A", "prompt_set": "p", "index": i, "reward": float(i)} for i in range(6)]
    rows += [{"model": "B", "prompt_set": "p", "index": i, "reward": 2.5} for i in range(3)]
    summary = summarize(rows, bootstrap=50)
    win = summary["win_rates"][0]
    assert (win["n"], win["wins"], win["losses"]) == (3, 0, 3)  # A's rewards 0, 1, 2 all < 2.5
    assert group(summary, "B", "p")["n"] == 3
    assert summary["available"] == {"reward": True, "cost": False, "gates": False, "harm_labels": False}
    assert all(w["metric"] == "reward" for w in summary["win_rates"])


def test_category_breakdown_and_json_ready() -> None:
    rows = make_rows(n=20)
    summary = summarize(rows, bootstrap=100)
    cats = {(c["model"], c["category"]): c for c in summary["categories"]}
    assert set(cats) == {(m, c) for m in ("base", "safe") for c in ("harm", "ok")}
    harm_base = [r for r in rows if r["model"] == "base" and r["category"] == "harm"]
    assert cats[("base", "harm")]["n"] == len(harm_base)
    assert cats[("base", "harm")]["metrics"]["reward"]["mean"] == pytest.approx(
        loop_mean([r["reward"] for r in harm_base]))
    json.dumps(summary, allow_nan=False)


def test_gates_split_by_harm_label_and_csv_strings_parse() -> None:
    rows = [{"model": "m", "prompt_set": "p", "index": i, "is_harmful": "true" if i < 2 else "false",
             "gate_safety": str(g)} for i, g in enumerate([0.9, 0.7, 0.1, ""])]
    got = summarize(rows, bootstrap=0)["groups"][0]["metrics"]
    assert got["gate_safety_harmful"]["mean"] == pytest.approx(0.8)
    assert got["gate_safety_benign"]["mean"] == pytest.approx(0.1)
    assert got["gate_safety_benign"]["n"] == 1
    assert as_float("False") == 0.0 and math.isnan(as_float("abc"))


def test_pareto_front_by_hand() -> None:
    # (cost, reward): 0 dominates 3; 1 and 2 trade off; 4 equals 1 (neither strictly dominates)
    points = [(-1.0, 2.0), (-2.0, 1.0), (0.0, 3.0), (0.0, 1.0), (-2.0, 1.0)]
    assert pareto_front(points) == [0, 1, 2, 4]
