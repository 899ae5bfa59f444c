"""The method table's arithmetic (midpo_cli/evaluation/methods.py) on hand-made scored answers."""

from __future__ import annotations

import pytest

from midpo_cli.evaluation.methods import method_tables

# prompt index → (is_harmful, category)
PROMPTS = {0: (True, "a"), 1: (True, "b"), 2: (False, "c"), 3: (False, "d")}


def rows(model: str, prompt_set: str, *, ok: list[int], reward: list[float], cost: list[float],
         refusal: list[int], tokens: list[int]) -> list[dict]:
    """`ok` is the judge's verdict per prompt, carried in the answer text (`good` / `bad`)."""
    out = []
    for i, (harmful, cat) in PROMPTS.items():
        out.append({"model": model, "prompt_set": prompt_set, "index": i, "is_harmful": harmful, "category": cat,
                    "prompt": f"p{i}", "answer": "good" if ok[i] else "bad", "reward": reward[i], "cost": cost[i],
                    "safe": cost[i] < 0, "refusal": refusal[i], "answer_tokens": tokens[i]})
    return out


def judge(prompt_set: str):
    return lambda row: float(row["answer"] == "good")


def test_values_and_deltas_by_hand() -> None:
    data = rows("midpo", "eval-prompts", ok=[1, 0, 1, 1], reward=[0, 1, 2, 3], cost=[-1, 1, -1, -1],
                refusal=[1, 0, 0, 0], tokens=[4, 8, 12, 16])
    data += rows("baseline", "eval-prompts", ok=[1, 1, 0, 1], reward=[1, 1, 1, 1], cost=[-2, -2, 0, 0],
                 refusal=[1, 1, 1, 0], tokens=[2, 2, 2, 2])
    table = method_tables(data, outcome_for=judge, bootstrap=200, seed=1)["eval-prompts"]
    assert table["reference"] == "midpo" and table["judge"] and table["n"] == 4
    midpo, base = table["methods"]
    assert midpo["method"] == "midpo" and "delta" not in midpo
    # midpo: harmful safe 1/2, benign helpful 2/2, score ¾; reward 1.5, cost 0 / 4 = −0.5, refusal ¼, length 10
    assert (midpo["harmful_safe"], midpo["benign_helpful"], midpo["score"]) == (0.5, 1.0, 0.75)
    assert (midpo["reward"], midpo["cost"], midpo["refusal"], midpo["length"]) == (1.5, -0.5, 0.25, 10.0)
    # baseline: 2/2, 1/2, ¾; reward 1, cost −1, refusal ¾, length 2
    assert (base["harmful_safe"], base["benign_helpful"], base["score"]) == (1.0, 0.5, 0.75)
    d = base["delta"]
    assert d["score"]["prompts"]["mean"] == pytest.approx(0.0)
    assert d["harmful_safe"]["prompts"]["mean"] == pytest.approx(0.5)
    assert d["benign_helpful"]["prompts"]["mean"] == pytest.approx(-0.5)
    assert d["reward"]["prompts"]["mean"] == pytest.approx(-0.5)
    assert d["cost"]["prompts"]["mean"] == pytest.approx(-0.5)
    assert d["refusal"]["prompts"]["mean"] == pytest.approx(0.5)
    assert d["length"]["prompts"]["mean"] == pytest.approx(-8.0)
    for key in ("reward", "length", "score"):
        for level in ("prompts", "categories"):
            ci = d[key][level]
            assert ci["lo"] <= ci["mean"] + 1e-12 and ci["mean"] <= ci["hi"] + 1e-12
    # the length Δ per prompt is −2, −6, −10, −14: every resample's mean lies inside [−14, −2]
    assert -14 <= d["length"]["prompts"]["lo"] and d["length"]["prompts"]["hi"] <= -2


def test_without_a_judge_safe_is_the_cost_model_and_helpful_is_not_refused() -> None:
    data = rows("midpo", "s", ok=[0, 0, 0, 0], reward=[0] * 4, cost=[-1, 1, -1, -1], refusal=[0, 0, 1, 0],
                tokens=[1] * 4)
    data += rows("dpo_helpful", "s", ok=[0, 0, 0, 0], reward=[0] * 4, cost=[1, 1, 1, 1], refusal=[0] * 4,
                 tokens=[1] * 4)
    table = method_tables(data, outcome_for=None, bootstrap=0)["s"]
    midpo, dpo = table["methods"]
    assert not table["judge"] and midpo["score"] is None
    assert (midpo["harmful_safe"], midpo["benign_helpful"]) == (0.5, 0.5)
    assert (dpo["harmful_safe"], dpo["benign_helpful"]) == (0.0, 1.0)
    assert dpo["delta"]["harmful_safe"]["prompts"] == {"mean": -0.5, "lo": None, "hi": None, "n": 2}


def test_the_merge_is_chosen_on_dev_and_reported_elsewhere() -> None:
    data = []
    for s in ("dev-prompts", "eval-prompts"):
        data += rows("midpo", s, ok=[1, 1, 1, 1], reward=[0] * 4, cost=[0] * 4, refusal=[0] * 4, tokens=[1] * 4)
    data += rows("ties@gates=0.5,0.5", "dev-prompts", ok=[1, 0, 0, 0], reward=[0] * 4, cost=[0] * 4,
                 refusal=[0] * 4, tokens=[1] * 4)
    data += rows("ties@gates=1,1", "dev-prompts", ok=[1, 1, 1, 0], reward=[0] * 4, cost=[0] * 4,
                 refusal=[0] * 4, tokens=[1] * 4)
    # on eval the other candidate would win: the table must still report the dev-chosen one
    data += rows("ties@gates=0.5,0.5", "eval-prompts", ok=[1, 1, 1, 1], reward=[0] * 4, cost=[0] * 4,
                 refusal=[0] * 4, tokens=[1] * 4)
    data += rows("ties@gates=1,1", "eval-prompts", ok=[0, 0, 0, 0], reward=[0] * 4, cost=[0] * 4,
                 refusal=[0] * 4, tokens=[1] * 4)
    tables = method_tables(data, outcome_for=judge, bootstrap=0)
    eval_table = tables["eval-prompts"]
    assert eval_table["merge"] == {"label": "ties@gates=1,1", "chosen_on": "dev-prompts", "candidates": 2,
                                   "weights": [1.0, 1.0]}
    ties = next(m for m in eval_table["methods"] if m["method"] == "ties")
    assert ties["model"] == "ties@gates=1,1" and ties["score"] == 0.0
    assert ties["delta"]["score"]["prompts"]["mean"] == pytest.approx(-1.0)
    assert [m["method"] for m in eval_table["methods"]] == ["midpo", "ties"]  # candidates are not methods


def test_no_reference_model_gives_no_table() -> None:
    data = rows("dpo_helpful", "s", ok=[1] * 4, reward=[0] * 4, cost=[0] * 4, refusal=[0] * 4, tokens=[1] * 4)
    assert method_tables(data, outcome_for=judge) == {}


def test_report_section_and_figure_point() -> None:
    from midpo_cli.evaluation.methods import add_merge_points, methods_html

    data = []
    for s in ("dev-prompts", "eval-prompts"):
        data += rows("midpo", s, ok=[1, 0, 1, 1], reward=[0] * 4, cost=[0] * 4, refusal=[0] * 4, tokens=[1] * 4)
        data += rows("<b>x</b>", s, ok=[1, 1, 1, 1], reward=[0] * 4, cost=[0] * 4, refusal=[0] * 4, tokens=[1] * 4)
        for w in ("0.5,0.5", "1,1"):
            data += rows(f"ties@gates={w}", s, ok=[1, 1, 0, int(w == "1,1")], reward=[0] * 4, cost=[0] * 4,
                         refusal=[0] * 4, tokens=[1] * 4)
    summary = {"methods": method_tables(data, outcome_for=judge, bootstrap=50),
               "routing": {"eval-prompts": {"models": []}}}
    add_merge_points(summary)
    assert summary["routing"]["eval-prompts"]["models"] == [
        {"model": "ties (1,1)", "n": 4, "score": 0.75, "harmful_safe": 1.0, "benign_helpful": 0.5, "reward": 0.0,
         "cost": 0.0}]
    page = methods_html(summary)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # names from data are escaped
    assert "ties (ties@gates=1,1)" in page and page.count("<h3>") == 2


def test_a_single_merge_candidate_is_one_method_named_ties() -> None:
    data = rows("midpo", "s", ok=[1, 1, 1, 1], reward=[0] * 4, cost=[0] * 4, refusal=[0] * 4, tokens=[1] * 4)
    data += rows("ties", "s", ok=[1, 1, 0, 0], reward=[0] * 4, cost=[0] * 4, refusal=[0] * 4, tokens=[1] * 4)
    table = method_tables(data, outcome_for=judge, bootstrap=0)["s"]
    assert [(m["method"], m["model"]) for m in table["methods"]] == [("midpo", "midpo"), ("ties", "ties")]
    assert table["methods"][1]["delta"]["score"]["prompts"]["mean"] == pytest.approx(-0.5)
