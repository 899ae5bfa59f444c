"""A dial that moves (issue 30 item 4): the `wide` sweep reaches near both corners, and the report counts the
answers each dial point changed against the router."""

from __future__ import annotations

import math

from midpo_cli.evaluation.dial_changes import add_dial_changes, changed_answers, dial_lines
from midpo_cli.recipe import GenerateStage


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_wide_sweep_reaches_near_both_corners():
    biases = GenerateStage(dial_sweep="wide").dial_biases()
    assert biases == sorted(biases) and biases[0] == -16 and biases[-1] == 16 and 0 not in biases
    for logit in (-4.0, 0.0, 4.0):  # a trained gate logit anywhere in ±4 ends within 1e-5 of the corner
        assert sigmoid(logit + biases[-1]) > 1 - 1e-5 and sigmoid(logit + biases[0]) < 1e-5
    assert GenerateStage(dial_sweep=[-2, 1]).dial_biases() == [-2.0, 1.0]
    assert GenerateStage().dial_biases() == []


def rows(model: str, answers: list[str], prompt_set: str = "eval") -> list[dict]:
    return [{"model": model, "prompt_set": prompt_set, "index": i, "answer": a} for i, a in enumerate(answers)]


def test_changed_answers_are_counted_per_dial_point():
    data = rows("midpo", ["a", "b", "c", "d"]) + rows("midpo@dial=+4", ["a", "B", "c", "D"]) \
        + rows("midpo@dial=-4", ["a", "b", "c"]) + rows("midpo", ["x"], prompt_set="other")
    assert changed_answers(data[:8], "midpo", "midpo@dial=+4") == {"changed": 2, "compared": 4}
    routing = {"eval": {"router": {"model": "midpo"},
                        "dial": [{"model": "midpo@dial=-4", "bias": -4.0}, {"model": "midpo", "bias": 0.0},
                                 {"model": "midpo@dial=+4", "bias": 4.0}]}}
    add_dial_changes(routing, data)
    dial = routing["eval"]["dial"]
    assert dial[0]["changed"] == 0 and dial[0]["compared"] == 3 and "changed" not in dial[1]
    assert dial[2]["changed"] == 2
    assert dial_lines(routing) == ["eval: answers changed against the router by the safety dial: -4: 0/3, +4: 2/4"]
