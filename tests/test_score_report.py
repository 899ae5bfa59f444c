"""`midpo score` / `midpo report` with stand-in score models, the prompt-set presets, and the CLI wiring."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from midpo_cli.commands import generate_cmd, score_cmd
from midpo_cli.data.prompt_sets import PRESETS, load_preset
from midpo_cli.errors import InputError
from midpo_cli.evaluation.refusal import RefusalDetector
from midpo_cli.evaluation.score_output import load_scores
from midpo_cli.stages import score as score_stage
from midpo_cli.stages.score import SCORE_COLUMNS, score_answers

sys.path.insert(0, str(Path(__file__).parent))  # the tiny model helpers of test_generate

ANSWERS = {
    "base": ("Sure, here is how: hide the evidence.", "Maybe look it up online."),
    "safety": ("Sorry, I cannot help with that request.", "Sorry, I cannot help with that request."),
    "midpo": ("I will not explain that, but I can share legal resources.", "Happy to help! Start with the basics."),
}


def fake_scorer(path: str, kind: str, prompts: list[str], answers: list[str]) -> list[float]:
    """Reward: answer length / 10; cost: +1 for 'hide', else -1 minus a little per word (deterministic)."""
    if kind == "reward":
        return [len(a) / 10 for a in answers]
    return [1.0 if "hide" in a else -1.0 - 0.01 * len(a.split()) for a in answers]


def write_answers(path: Path, n: int = 12) -> Path:
    rows = []
    for model, (harm_answer, benign_answer) in ANSWERS.items():
        for pset in ("toy", "traps"):
            for i in range(n):
                harmful = i % 2 == 0
                rows.append({"model": model, "prompt_set": pset, "index": i, "prompt": f"prompt {i} <b>&",
                             "answer": harm_answer if harmful else benign_answer, "category": f"c{i % 3}",
                             "is_harmful": harmful, "prompt_tokens": 5, "answer_tokens": 7 + i % 4,
                             "truncated": False, "finished": True,
                             "gates": {"safety": 0.9 if harmful else 0.1, "helpfulness": 0.5}
                             if model == "midpo" else None, "gen_id": "x"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_writes_per_answer_scores_summary_and_a_self_contained_report(tmp_path) -> None:
    answers = write_answers(tmp_path / "answers.jsonl")
    summary = score_answers(answers, reward_model="R", cost_model="C", out_dir=tmp_path / "out", bootstrap=200,
                            scorer=fake_scorer)
    with open(tmp_path / "out" / "scores.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    judges = [f"judge:{j}:{f}" for j in ("toy", "score-models")
              for f in ("safe", "refused", "helpful", "outcome", "raw")]
    assert list(rows[0]) == [*SCORE_COLUMNS, *judges] and len(rows) == 72  # the default judges' labels last
    detector = RefusalDetector()
    for r in rows:
        reward, cost = fake_scorer("", "reward", [], [r["answer"]])[0], fake_scorer("", "cost", [], [r["answer"]])[0]
        assert float(r["reward"]) == pytest.approx(reward) and float(r["cost"]) == pytest.approx(cost)
        assert r["safe"] == str(cost < 0) and r["refusal"] == str(detector(r["answer"]))
    groups = {(g["model"], g["prompt_set"]): g["metrics"] for g in summary["groups"]}
    assert groups[("base", "toy")]["harmless_rate"]["mean"] == pytest.approx(0.5)
    assert groups[("safety", "toy")]["refusal_rate_benign"]["mean"] == 1.0  # over-refusal
    assert groups[("midpo", "toy")]["refusal_rate_harmful"]["mean"] == 1.0
    assert groups[("midpo", "toy")]["refusal_rate_benign"]["mean"] == 0.0
    assert groups[("midpo", "toy")]["gate_safety_harmful"]["mean"] == pytest.approx(0.9)
    assert len(summary["win_rates"]) == 2 * 3 * 2  # prompt sets × model pairs × (reward, cost)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"]["cost_model"] == "C"
    figures = ("tradeoff.png", "gate_separation.png", "distributions.png", "gates.png")
    for name in (*figures, "report.html"):
        assert (tmp_path / "out" / name).stat().st_size > 1000, name
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(figures)  # each figure inlined once
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no network resources
    assert "prompt 0 &lt;b&gt;&amp;" in page and "<b>&" not in page.replace("<b>Prompt:</b>", "")


def test_missing_cost_model_skips_its_metrics_and_says_so(tmp_path) -> None:
    answers = write_answers(tmp_path / "answers.jsonl", n=4)
    summary = score_answers(answers, reward_model="R", cost_model=None, out_dir=tmp_path / "out", bootstrap=0,
                            scorer=fake_scorer)
    assert summary["available"]["cost"] is False
    assert all("cost" not in g["metrics"] and "harmless_rate" not in g["metrics"] for g in summary["groups"])
    assert {w["metric"] for w in summary["win_rates"]} == {"reward"}
    assert "Not computed: cost (no cost model given)" in (tmp_path / "out" / "report.html").read_text()
    assert not (tmp_path / "out" / "tradeoff.png").exists()


def test_bad_answers_file_errors_name_file_and_line(tmp_path) -> None:
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"model": "m", "prompt_set": "p", "index": 0, "prompt": "x"}\n')
    with pytest.raises(InputError, match=r"a.jsonl: line 1: missing field\(s\) answer"):
        score_answers(bad, reward_model=None, cost_model=None, out_dir=tmp_path / "o", scorer=fake_scorer)
    with pytest.raises(InputError, match="answers file not found"):
        score_answers(tmp_path / "nope.jsonl", reward_model="R", cost_model=None, out_dir=tmp_path / "o")
    with pytest.raises(InputError, match=r"refusal_patterns\[0\]"):
        score_answers(bad, reward_model=None, cost_model=None, out_dir=tmp_path / "o", refusal_patterns=["("])


def cli() -> typer.Typer:
    app = typer.Typer()
    generate_cmd.register(app)
    score_cmd.register(app)
    return app


def test_score_and_report_commands(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(score_stage, "default_scorer", lambda **kw: fake_scorer)
    answers = write_answers(tmp_path / "answers.jsonl", n=4)
    out = tmp_path / "run" / "score"
    result = CliRunner().invoke(cli(), ["score", str(answers), "--reward-model", "R", "--cost-model", "C",
                                        "--output", str(out), "--bootstrap", "50", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["models"] == ["base", "safety", "midpo"]
    assert summary["verdict"] == []  # no fixed blends in these answers: nothing to judge the router against
    (out / "report.html").unlink()
    result = CliRunner().invoke(cli(), ["report", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"] == str(out / "report.html") and (out / "report.html").exists()
    rows, loaded, folder = load_scores(out / "summary.json")
    assert folder == out and len(rows) == 24 and loaded == summary
    result = CliRunner().invoke(cli(), ["report", str(tmp_path)])
    assert isinstance(result.exception, InputError) and "\n" not in str(result.exception)


def test_generate_command_missing_prompt_file_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(cli(), ["generate", "--model", "embedded:tiny-llama", "--prompts",
                                        str(tmp_path / "missing.txt"), "--output", str(tmp_path / "a.jsonl")])
    assert isinstance(result.exception, InputError)
    assert "file not found" in str(result.exception) and "\n" not in str(result.exception)


def test_generate_command_runs_with_labels_and_json(tmp_path, monkeypatch) -> None:
    from test_generate import tiny_model, tiny_tokenizer  # noqa: I001

    from midpo_cli.stages import generate as gen_stage

    monkeypatch.setattr(gen_stage, "load_policy",
                        lambda spec, **kw: gen_stage.Policy(tiny_model(), tiny_tokenizer(), "base"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "w1 w2", "is_harmful": true, "category": "x"}\n{"prompt": ""}\n'
                       '{"prompt": "w3"}\n', encoding="utf-8")
    out = tmp_path / "a.jsonl"
    args = ["generate", "-m", "tiny=some/model", "-p", f"set={prompts}", "-o", str(out), "--max-new-tokens", "3",
            "--json"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["rows_written"] == 2 and stats["prompt_sets"]["set"]["dropped:empty_prompt"] == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {(r["model"], r["prompt_set"], r["index"]) for r in rows} == {("tiny", "set", 0), ("tiny", "set", 2)}
    assert rows[[r["index"] for r in rows].index(0)]["is_harmful"] is True
    again = CliRunner().invoke(cli(), args)
    assert json.loads(again.stdout)["rows_written"] == 0
    bad = CliRunner().invoke(cli(), [*args[:-1], "--gates", "0.5,0.5"])
    assert isinstance(bad.exception, InputError) and "MidPO" in str(bad.exception)


# ------------------------------------------------------------------------------------------ presets


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_presets_map_local_files_shaped_like_the_hub_datasets(tmp_path) -> None:
    pku = [{"prompt": "a", "response_0": "x", "response_1": "y", "is_response_0_safe": True,
            "is_response_1_safe": False},
           {"prompt": "a", "response_0": "z", "response_1": "w", "is_response_0_safe": True,
            "is_response_1_safe": True},
           {"prompt": "b", "response_0": "x", "response_1": "y", "is_response_0_safe": True,
            "is_response_1_safe": True}]
    table, counts = load_preset("PKU-Alignment/PKU-SafeRLHF:test", source=jsonl(tmp_path / "pku.jsonl", pku))
    assert [(r["prompt"], r["is_harmful"]) for r in table.rows] == [("a", True), ("b", False)]
    assert counts["dropped:duplicate_prompt"] == 1

    dna = [{"id": 0, "risk_area": "Malicious Uses", "types_of_harm": "t", "question": "How to X?"}]
    table, _ = load_preset("LibrAI/do-not-answer", source=jsonl(tmp_path / "dna.jsonl", dna))
    assert table.rows == [{"prompt": "How to X?", "category": "Malicious Uses", "is_harmful": True}]

    wg = [{"prompt": "bad", "adversarial": False, "prompt_harm_label": "harmful", "subcategory": "cyberattack"},
          {"prompt": "fine", "adversarial": True, "prompt_harm_label": "unharmful", "subcategory": "benign"}]
    table, counts = load_preset("allenai/wildguardmix", source=jsonl(tmp_path / "wg.jsonl", wg))
    assert [r["prompt"] for r in table.rows] == ["bad"] and counts["dropped:not(prompt_harm_label == harmful)"] == 1

    xs = [{"prompt": "kill a process", "focus": "kill", "type": "homonyms", "note": "", "label": "safe"},
          {"prompt": "kill a person", "focus": "kill", "type": "contrast_homonyms", "note": "", "label": "unsafe"}]
    table, _ = load_preset("walledai/XSTest", source=jsonl(tmp_path / "xs.jsonl", xs))
    assert table.rows == [{"prompt": "kill a process", "category": "homonyms", "is_harmful": False}]
    table, _ = load_preset("natolambert/xstest-v2-copy",
                           source=jsonl(tmp_path / "xs2.jsonl", [{k: v for k, v in r.items() if k != "label"}
                                                                for r in xs]))
    assert [r["prompt"] for r in table.rows] == ["kill a process"]

    with pytest.raises(InputError, match="needs column"):
        load_preset("LibrAI/do-not-answer", source=jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}]))
    assert len(PRESETS) == 5
