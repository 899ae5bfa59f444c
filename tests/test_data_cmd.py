"""`midpo data show` / `data list`, run in-process on a fresh typer app with only this command registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from midpo_cli.commands.data_cmd import register
from midpo_cli.errors import InputError


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # a callback keeps `data` a subcommand group even when it is the only one
        pass

    return app


def run(*args: str):
    return CliRunner().invoke(_app(), ["data", *args])


def pku_row(i: int, *, better: int, safer: int, safe0: bool, safe1: bool) -> dict:
    """PKU-SafeRLHF's own columns and types (booleans for the safety flags)."""
    return {
        "prompt": f"question {i}",
        "response_0": f"answer A{i}",
        "response_1": f"answer B{i}",
        "better_response_id": better,
        "safer_response_id": safer,
        "is_response_0_safe": safe0,
        "is_response_1_safe": safe1,
        "category": "crime" if not (safe0 and safe1) else "cooking",
        "is_harmful": not (safe0 and safe1),
    }


ROWS = [
    pku_row(0, better=0, safer=1, safe0=False, safe1=True),  # exactly one safe
    pku_row(1, better=0, safer=0, safe0=True, safe1=True),  # both safe, safer == better
    pku_row(2, better=1, safer=0, safe0=True, safe1=True),  # both safe, disagree
    {**pku_row(3, better=0, safer=1, safe0=True, safe1=False), "response_1": "answer A3"},  # identical
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_show_pku_columns_json(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pku.jsonl", ROWS)
    result = run(
        "show", str(path), "--stage", "safety_expert", "--json", "--tokenizer", "none", "--rows", "1"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    stage = summary["stages"]["safety_expert"]
    assert stage["counts"] == {
        "rows_in": 4,
        "dropped:malformed": 0,
        "dropped:empty_prompt": 0,
        "dropped:empty_response": 0,
        "dropped:identical_responses": 1,
        "dropped:not_exactly_one_safe": 2,
        "dropped:safer_is_unsafe": 0,
        "kept": 1,
    }
    assert stage["steps"] == {"rows_in": 4, "valid": 3, "exactly_one_safe": 1, "safer_is_safe": 1}
    assert summary["examples"] == [
        {
            "row": 1,
            "stage": "safety_expert",
            "prompt": "BEGINNING OF CONVERSATION: USER: question 0 ASSISTANT:",
            "chosen": "answer B0",
            "rejected": "answer A0",
            "chosen_safe": True,
            "rejected_safe": False,
            "category": "crime",
            "is_harmful": True,
        }
    ]
    assert "exactly_one_safe" in result.stderr and "dropped:not_exactly_one_safe" in result.stderr


def test_show_every_stage_by_default(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pku.jsonl", ROWS)
    summary = json.loads(run("show", str(path), "--json", "--tokenizer", "none").stdout)
    kept = {name: s["counts"]["kept"] for name, s in summary["stages"].items()}
    assert kept == {
        "reward_model": 3,
        "cost_model": 3,
        "safety_expert": 1,
        "helpfulness_expert": 3,
        "dpo": 3,
        "safedpo": 3,  # SafeDPO's re-ordering keeps every pair with a safe answer (issue 29)
        "router": 1,
    }


def test_missing_column_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pku.jsonl", [{k: v for k, v in r.items() if k != "safer_response_id"} for r in ROWS]
    )
    result = run("show", str(path), "--stage", "safety_expert", "--tokenizer", "none")
    assert isinstance(result.exception, InputError)
    msg = str(result.exception)
    assert "missing column 'safer_response_id'" in msg and "columns: prompt, response_0" in msg


def test_columns_option_maps_other_schemas(tmp_path: Path) -> None:
    rows = [{("question" if k == "prompt" else k): v for k, v in r.items()} for r in ROWS]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    result = run(
        "show",
        str(path),
        "--stage",
        "router",
        "--columns",
        "prompt=question",
        "--json",
        "--tokenizer",
        "none",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"]["router"]["counts"]["kept"] == 1
    missing = run("show", str(path), "--stage", "router", "--tokenizer", "none")
    assert "missing column 'prompt'" in str(missing.exception)


def test_embedded_spec_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import midpo_cli.assets as assets

    (tmp_path / "toy-safety").mkdir()
    write_jsonl(tmp_path / "toy-safety" / "train.jsonl", ROWS)
    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    result = run(
        "show", "embedded:toy-safety/train", "--stage", "safety_expert", "--json", "--tokenizer", "none"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"]["safety_expert"]["counts"]["kept"] == 1
    assert json.loads(run("list", "--json").stdout) == ["embedded:toy-safety/train"]


def test_emptied_stage_fails_after_showing_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS[1:3])
    result = run("show", str(path), "--stage", "safety_expert", "--tokenizer", "none")
    assert isinstance(result.exception, InputError)
    assert "after the 'exactly_one_safe' filter" in str(result.exception)
    assert "dropped:not_exactly_one_safe" in result.stderr


def test_bad_stage_and_prompt_sets(tmp_path: Path) -> None:
    assert "choose one of" in str(run("show", "x.jsonl", "--stage", "nope").exception)
    txt = tmp_path / "prompts.txt"
    txt.write_text("how do I bake bread\n\nhow do I pick a lock\n")
    summary = json.loads(run("show", str(txt), "--json", "--tokenizer", "none").stdout)
    assert summary["kind"] == "prompts"
    assert summary["stages"]["prompts"]["counts"] == {
        "skipped:empty_lines": 1,
        "rows_in": 2,
        "dropped:malformed": 0,
        "dropped:empty_prompt": 0,
        "kept": 2,
    }


def test_token_statistics_with_a_local_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [json.dumps(r) for r in ROWS] * 5,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")
    hf.save_pretrained(tmp_path / "tok")
    path = write_jsonl(tmp_path / "pku.jsonl", ROWS)
    result = run("show", str(path), "--stage", "reward_model", "--json", "--tokenizer", str(tmp_path / "tok"))
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout)["tokens"]
    expected_prompts = sorted(
        len(hf(f"BEGINNING OF CONVERSATION: USER: question {i} ASSISTANT:")["input_ids"]) for i in range(3)
    )
    chosen = sorted(
        len(
            hf(ROWS[i][f"response_{ROWS[i]['better_response_id']}"], add_special_tokens=False)[
                "input_ids"
            ]
        )
        + 1
        for i in range(3)
    )
    assert tokens["counts"]["kept"] == 3
    assert (tokens["prompt"]["min"], tokens["prompt"]["max"]) == (expected_prompts[0], expected_prompts[-1])
    assert (tokens["chosen"]["min"], tokens["chosen"]["max"]) == (chosen[0], chosen[-1])


def test_data_show_imports_no_torch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    code = f"""
import sys, typer
from midpo_cli.commands.data_cmd import register
app = typer.Typer(); register(app)
app.callback()(lambda: None)
try:
    app(["data", "show", {str(path)!r}, "--tokenizer", "none", "--json"])
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in ("torch", "transformers", "datasets") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("HEAVY=")
