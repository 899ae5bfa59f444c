"""Rank's D_dual rules against direct pandas computations, parsed labels from CSV, and the router penalty scope."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from midpo_cli.data.ranked import ranked_rows
from midpo_cli.data.readers import load_rows
from midpo_cli.errors import InputError
from midpo_cli.losses.preference import router_penalty
from midpo_cli.stages.rank import dual_pairs

HELP = {"H": 2.0, "S": 1.0, "W": 1.0, "C": 1.5, "R": 0.0}  # a reward model that likes compliance
COST = {"C": 2.0, "H": -0.5, "W": -0.5, "S": -1.0, "R": -1.5}


def scored_train() -> list[dict]:
    """The toy train split with synthetic score-model outputs: type-driven, noisy, rounded so ties occur."""
    rows, _ = ranked_rows(load_rows("embedded:toy-safety/train"))
    rng = random.Random(0)
    for r in rows:
        for i in (0, 1):
            kind = r[f"response_{i}_type"]
            r[f"reward_{i}"] = round(HELP[kind] + rng.gauss(0, 0.4), 1)
            r[f"cost_{i}"] = round(COST[kind] + rng.gauss(0, 0.4), 1)
    return rows


@pytest.fixture(scope="module")
def scored() -> tuple[list[dict], pd.DataFrame]:
    rows = scored_train()
    return rows, pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])


def test_joint_by_models_matches_pandas(scored):
    rows, df = scored
    win0 = (df.reward_0 > df.reward_1) & (df.cost_0 < df.cost_1)
    win1 = (df.reward_1 > df.reward_0) & (df.cost_1 < df.cost_0)
    ties = (df.reward_0 == df.reward_1) | (df.cost_0 == df.cost_1)
    assert ties.sum() > 0  # the synthetic scores do tie, so dropping ties is exercised
    kept = df[win0 | win1].assign(chosen=lambda d: d.response_0.where(win0[d.index], d.response_1))
    n_harmful, n_benign = int(kept.is_harmful.sum()), int((~kept.is_harmful).sum())

    dual, steps = dual_pairs(rows, "joint", by="models", balance="none")
    assert steps["wins_both_axes_by_models"] == len(kept) == len(dual)
    expected = {(p, c) for p, c in zip(kept.prompt, kept.chosen, strict=True)}
    assert {(d["prompt"], d["chosen"]) for d in dual} <= expected
    assert sorted((d["prompt"], d["chosen"]) for d in dual) == sorted(zip(kept.prompt, kept.chosen, strict=True))

    balanced, steps = dual_pairs(rows, "joint", by="models", balance="kinds", seed=3)
    n = min(n_harmful, n_benign)
    assert steps["balanced_kinds"] == 2 * n == len(balanced)
    assert sum(d["is_harmful"] for d in balanced) == n
    assert {(d["prompt"], d["chosen"], d["rejected"]) for d in balanced} <= {
        (d["prompt"], d["chosen"], d["rejected"]) for d in dual}
    again, _ = dual_pairs(rows, "joint", by="models", balance="kinds", seed=3)
    assert again == balanced  # seeded

    # cells: harmful pairs split by whether the rejected answer is labelled unsafe; all three cells equal
    rejected_unsafe = ~kept.apply(lambda r: r[f"is_response_{0 if r.chosen == r.response_1 else 1}_safe"], axis=1)
    cells = {(True, True): int((kept.is_harmful & rejected_unsafe).sum()),
             (True, False): int((kept.is_harmful & ~rejected_unsafe).sum()), (False, None): n_benign}
    m = min(cells.values())
    by_cell, steps = dual_pairs(rows, "joint", by="models", balance="cells", seed=3)
    assert steps["balanced_cells"] == 3 * m == len(by_cell)
    got = {(True, True): 0, (True, False): 0, (False, None): 0}
    for d in by_cell:
        got[(d["is_harmful"], (not d["is_rejected_safe"]) if d["is_harmful"] else None)] += 1
    assert got == {k: m for k in got}


def test_joint_by_labels_and_the_papers_rules_match_pandas(scored):
    rows, df = scored
    agree = df.better_response_id == df.safer_response_id
    dual, _ = dual_pairs(rows, "joint", by="labels", balance="none")
    assert len(dual) == int(agree.sum())
    chosen = df[agree].apply(lambda r: r[f"response_{r.better_response_id}"], axis=1)
    assert sorted(d["chosen"] for d in dual) == sorted(chosen)
    # the joint rule keeps harmful pairs with a compliant answer rejected; the paper's rules never do
    assert any(d["is_harmful"] and not d["is_rejected_safe"] for d in dual)
    both_safe = df.is_response_0_safe & df.is_response_1_safe
    labels, _ = dual_pairs(rows, "labels")
    assert len(labels) == int((both_safe & agree).sum())
    assert all(d["is_rejected_safe"] for d in labels)
    strict = (df.reward_0 != df.reward_1) & (df.cost_0 != df.cost_1)
    order = (df.reward_0 > df.reward_1) == (df.cost_0 < df.cost_1)
    models, _ = dual_pairs(rows, "models")
    assert len(models) == int(((df.cost_0 < 0) & (df.cost_1 < 0) & order & strict).sum())


def test_expert_rule_and_contrast_balance_match_pandas(scored):
    """`expert`: on a harmful prompt the safer answer wins, on a benign one the better (labels), or the lower cost /
    higher reward (models, ties dropped); `contrast` keeps harmful pairs with an unsafe rejected answer and as many
    benign pairs."""
    rows, df = scored
    safer = df.apply(lambda r: r[f"response_{r.safer_response_id}"], axis=1)
    better = df.apply(lambda r: r[f"response_{r.better_response_id}"], axis=1)
    by_labels = safer.where(df.is_harmful, better)
    dual, steps = dual_pairs(rows, "expert", by="labels", balance="none")
    assert steps["expert_axis_winner_by_labels"] == len(df) == len(dual)
    assert sorted((d["prompt"], d["chosen"]) for d in dual) == sorted(zip(df.prompt, by_labels, strict=True))
    # the rule keeps harmful pairs the helpfulness annotators got wrong: compliance rejected, a refusal chosen
    assert any(d["is_harmful"] and d["chosen"].startswith(("Sorry", "No,", "Unfortunately")) and not
               d["is_rejected_safe"] for d in dual)

    cost_win = (df.cost_0 != df.cost_1) & df.is_harmful
    reward_win = (df.reward_0 != df.reward_1) & ~df.is_harmful
    pick = df.apply(lambda r: r.response_0 if ((r.cost_0 < r.cost_1) if r.is_harmful else (r.reward_0 > r.reward_1))
                    else r.response_1, axis=1)
    keep = cost_win | reward_win
    by_models, _ = dual_pairs(rows, "expert", by="models", balance="none")
    assert sorted((d["prompt"], d["chosen"]) for d in by_models) == sorted(zip(df.prompt[keep], pick[keep],
                                                                              strict=True))

    chosen_id = df.apply(lambda r: r.safer_response_id if r.is_harmful else r.better_response_id, axis=1)
    rejected_safe = df.apply(lambda r: r[f"is_response_{1 - chosen_id[r.name]}_safe"], axis=1)
    n_contrast = int((df.is_harmful & ~rejected_safe).sum())
    m = min(n_contrast, int((~df.is_harmful).sum()))
    contrast, steps = dual_pairs(rows, "expert", by="labels", balance="contrast", seed=1)
    assert steps["balanced_contrast"] == 2 * m == len(contrast)
    assert sum(d["is_harmful"] for d in contrast) == m
    assert all(not d["is_rejected_safe"] for d in contrast if d["is_harmful"])


def test_equal_costs_do_not_count_as_agreeing_orders():
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "_better": 0, "_safer": 0, "_safe_0": True,
           "_safe_1": True, "_harmful_label": False, "reward_0": 2.0, "reward_1": 1.0, "cost_0": -1.0, "cost_1": -1.0}
    assert dual_pairs([row], "models")[0] == []
    assert dual_pairs([row], "joint", by="models")[0] == []  # a cost tie is no win on the safety axis


def test_rank_reads_csv_labels_as_booleans_and_float_ids(tmp_path):
    """Issue: a CSV's "false" read as truthy kept pairs 'labelled safe'; an id written 0.0 crashed rank."""
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,response_0,response_1,better_response_id,safer_response_id,"
                    "is_response_0_safe,is_response_1_safe\n"
                    "q1,a,b,0,0,true,false\n"
                    "q2,c,d,1.0,1.0,true,true\n"
                    "q3,e,f,0,1,False,TRUE\n")
    rows, valid = ranked_rows(load_rows(str(path)))
    assert [(r["_better"], r["_safer"], r["_safe_0"], r["_safe_1"]) for r in rows] == [
        (0, 0, True, False), (1, 1, True, True), (0, 1, False, True)]
    for r in rows:
        r.update(reward_0=0.0, reward_1=1.0, cost_0=0.0, cost_1=-1.0)
    labels, steps = dual_pairs(rows, "labels")
    assert steps["both_labelled_safe"] == 1 and [d["prompt"] for d in labels] == ["q2"]


def test_labels_rule_without_safety_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 0}\n')
    rows, _ = ranked_rows(load_rows(str(path)))
    rows[0].update(reward_0=1.0, reward_1=0.0, cost_0=-1.0, cost_1=0.0)
    with pytest.raises(InputError, match="is_response_0_safe"):
        dual_pairs(rows, "labels")
    assert len(dual_pairs(rows, "joint", by="models")[0]) == 1  # joint by models needs no labels


def test_router_penalty_over_answer_tokens_ignores_prompt_and_padding():
    """scope answer: the router stage passes response_mask; prompt and padding gates must not matter."""
    torch.manual_seed(0)
    g_s, g_h = torch.rand(3, 2, 6), torch.rand(3, 2, 6)
    response = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]])
    base = router_penalty(g_s, g_h, response, 0.7, 0.3)
    moved_s, moved_h = g_s.clone(), g_h.clone()
    moved_s[:, response == 0] = torch.rand_like(moved_s[:, response == 0])
    moved_h[:, response == 0] = 0.0
    torch.testing.assert_close(router_penalty(moved_s, moved_h, response, 0.7, 0.3), base)
    sel = response.bool()
    expected = 0.7 * g_s[:, sel].abs().mean() + 0.3 * (g_h[:, sel] - 1).abs().mean()
    torch.testing.assert_close(base, expected)
