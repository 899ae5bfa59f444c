"""A new user's two commands, end to end on the embedded tiny model: a 60-row file in PKU-SafeRLHF's seven
columns (no is_harmful, no category) → `midpo recipe new` → `midpo pipeline run` of the recipe it wrote, with no
other flag → exit 0 and a report. (The save_to_disk and data.columns inputs stop after the split and `recipe
check`: tests/test_own_data.py.)"""

from __future__ import annotations

import json

import pytest

from midpo_cli.cli import main

pytestmark = pytest.mark.slow  # a whole pipeline; runs in CI (plain `pytest`)

PAIR = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id", "is_response_0_safe",
        "is_response_1_safe")


def test_one_pairs_file_to_a_report_in_two_commands(tmp_path, monkeypatch, capsys) -> None:
    from midpo_cli.data.readers import load_rows

    monkeypatch.chdir(tmp_path)
    rows = [{c: r[c] for c in PAIR} for r in load_rows("embedded:toy-safety/train@60").rows]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    assert main(["recipe", "new", "--model", "embedded:tiny-llama", "--data", "pairs.jsonl", "--to", "my.yaml"]) == 0
    command = capsys.readouterr().out.strip()
    assert command == "midpo pipeline run my.yaml"

    assert main(command.split()[1:]) == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "runs" / "my"
    assert (run / "score" / "report.html").is_file()
    summary = json.loads((run / "score" / "summary.json").read_text())
    answers = [json.loads(x) for x in (run / "generate" / "answers.jsonl").read_text().splitlines()]
    assert {a["prompt_set"] for a in answers} == {"dev", "eval"}  # the role sets, named by their files
    dev = {json.loads(x)["prompt"] for x in (tmp_path / "my-data" / "dev.jsonl").read_text().splitlines()}
    train = {json.loads(x)["prompt"].strip() for x in (tmp_path / "my-data" / "train.jsonl").read_text().splitlines()}
    assert dev and not dev & train
    assert summary["verdict"] is not None  # the report opens with a verdict line per reported set
    capsys.readouterr()
    assert main(["pipeline", "status", "runs/my", "--json"]) == 0
    states = {r["stage"]: r["state"] for r in json.loads(capsys.readouterr().out)["stages"]}
    assert set(states.values()) == {"done"}, states
