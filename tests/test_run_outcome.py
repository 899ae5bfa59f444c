"""The end of `midpo pipeline run` (midpo_cli.pipeline.outcome): the stage table's key numbers per stage and the next
steps, on hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

from test_verdict import SET, ci, summary  # noqa: I001  (tests/ is on sys.path under pytest)

from midpo_cli.evaluation.verdict import verdicts
from midpo_cli.pipeline.outcome import next_steps, print_next_steps, stage_lines


def _run(tmp_path: Path, s: dict) -> Path:
    """A run folder whose score stage wrote `s` (with its verdict, as the score stage writes it)."""
    s = {**s, "model_specs": {"midpo": str(tmp_path / "router" / "model"),
                              "probe_switch": str(tmp_path / "router" / "switch")}}
    s["verdict"] = verdicts(s)
    (tmp_path / "score").mkdir(parents=True, exist_ok=True)
    (tmp_path / "score" / "summary.json").write_text(json.dumps(s))
    return tmp_path


def test_the_score_row_shows_the_verdict_and_the_router_against_the_blends(tmp_path) -> None:
    s = summary(diff=ci(0.14, 0.06, 0.21))
    s["routing"][SET]["oracle"] = {"score": 0.84}
    s["routing"]["toy/traps"] = {**s["routing"][SET]}
    s["gates"].append({**s["gates"][0], "prompt_set": "toy/traps"})
    run = _run(tmp_path, s)
    metrics = {"base/dev-prompts/cost": -0.39}  # what the table showed before: the first metric keys
    assert stage_lines("score", metrics, run) == ["eval-prompts: routes and wins",
                                                  "router 0.64 · best blend 0.50 (1,0)",
                                                  "Δ +0.14 [+0.06,+0.21] · oracle 0.84", "traps: routes and wins"]
    assert stage_lines("score", metrics, tmp_path / "no-run") == ["base/dev-prompts/cost=-0.39"]
    assert all(len(line) <= 40 for line in stage_lines("score", metrics, run))  # the cell of an 80-column table


def test_the_router_row_shows_the_switch_and_the_probe_not_the_first_keys() -> None:
    metrics = {"gate_help_chosen": None, "gate_safety_chosen": None, "gate_separation_auroc": 0.38,
               "input_probe_auroc": 0.355, "router_parameters": 0, "steps": 0, "switch_threshold": 0.8904,
               "switch_dev_score": 0.456, "train_loss": None}
    assert stage_lines("router", metrics, Path(".")) == ["switch_threshold=0.89", "switch_dev_score=0.456",
                                                         "input_probe_auroc=0.355", "gate_separation_auroc=0.38"]
    assert stage_lines("sft", {"a": 1, "b": 2.0, "c": 3, "d": 4, "e": 5}, Path(".")) == ["a=1", "b=2", "c=3", "d=4"]


def test_next_steps_chat_export_and_serve_what_the_verdict_recommends(tmp_path) -> None:
    report = tmp_path / "score" / "report.html"
    blend = _run(tmp_path / "a", summary(hind=ci(-0.01, -0.02, 0.0)))
    steps = {s["what"]: s["command"] for s in next_steps(blend, json.loads((blend / "score" / "summary.json")
                                                                          .read_text())["verdict"], report=report)}
    model = blend / "router" / "model"
    assert steps == {"chat with it": f"midpo chat {model} --gates 0.5,1",
                     "export it": f"midpo export {model} --merged --gates 0.5,1 --to {blend / 'export/blend-0.5-1'}",
                     "serve it": f"midpo serve {blend / 'export/blend-0.5-1'}", "read the report": str(report)}
    router = _run(tmp_path / "b", summary())
    steps = {s["what"]: s["command"] for s in next_steps(router, verdicts(json.loads(
        (router / "score" / "summary.json").read_text())))}
    assert steps == {"chat with it": f"midpo chat {router / 'router/model'}",
                     "export it": f"midpo export {router / 'router/model'} --midpo --to {router / 'export/midpo'}",
                     "serve it": f"midpo serve {router / 'router/model'}"}


def test_without_a_verdict_the_next_steps_use_the_runs_router(tmp_path, capsys) -> None:
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "manifest.json").write_text(json.dumps({"stage": "router", "outputs": {
        "model": "router/switch"}}))
    steps = next_steps(tmp_path, None)
    switch = tmp_path / "router" / "switch"
    assert [s["command"] for s in steps] == [f"midpo chat {switch}",
                                             f"midpo export {switch} --midpo --to {tmp_path / 'export/midpo'}",
                                             f"midpo serve {switch}"]
    assert next_steps(tmp_path / "nothing", None) == []
    print_next_steps(steps)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "next steps:" and err[1] == f"  chat with it: midpo chat {tmp_path / 'router/switch'}"
    assert err[3].startswith("  serve it:     midpo serve ")
