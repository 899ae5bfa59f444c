"""`generate` resume checks who wrote the file: another model under the same label, a file that is not an
answers file, and Ctrl-C (what was kept, how to continue)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

from midpo_cli.errors import InputError, Interrupted
from midpo_cli.stages import generate as stage

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import PROMPTS, tiny_model, tiny_tokenizer  # noqa: E402


def saved(tmp_path: Path, name: str, seed: int) -> Path:
    tiny_model(seed=seed).save_pretrained(str(tmp_path / name))
    return tmp_path / name


def loader(entry):
    return stage.Policy(LlamaForCausalLM.from_pretrained(entry.spec).eval(), tiny_tokenizer(), "base")


def prompt_set() -> stage.PromptSet:
    return stage.PromptSet("set", "set", [{"prompt": p, "row": i, "is_harmful": None, "category": None}
                                          for i, p in enumerate(PROMPTS[:3])])


def test_another_model_under_the_same_label_is_refused(tmp_path) -> None:
    a, b = saved(tmp_path, "A", 0), saved(tmp_path, "B", 1)
    out = tmp_path / "f.jsonl"
    stage.generate_to_file(stage.model_entries([f"m={a}"]), [prompt_set()], out, max_new_tokens=3, loader=loader)
    before = out.read_bytes()
    with pytest.raises(InputError, match=r"answers of 'm' were written by another model .*A.* than the one given now"):
        stage.generate_to_file(stage.model_entries([f"m={b}"]), [prompt_set()], out, max_new_tokens=3, loader=loader)
    assert out.read_bytes() == before
    # the same content under another path (a moved run dir) resumes: nothing new to write
    moved = tmp_path / "moved"
    a.rename(moved)
    stats = stage.generate_to_file(stage.model_entries([f"m={moved}"]), [prompt_set()], out, max_new_tokens=3,
                                   loader=loader)
    assert stats["rows_written"] == 0 and stats["rows_existing"] == 3
    row = json.loads(out.read_text().splitlines()[0])
    assert row["model_spec"] == str(a) and row["template"] == "safe-rlhf" and row["gen"]["max_new_tokens"] == 3
    assert row["model_id"] and row["gen_id"]


def test_a_file_that_is_not_an_answers_file_is_refused_untouched(tmp_path) -> None:
    model = saved(tmp_path, "A", 0)
    entries = stage.model_entries([f"m={model}"])
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"shopping list\nmilk\neggs")  # no final newline: the old code cut "eggs"
    with pytest.raises(InputError, match=r"notes.txt: line 1 is not an answers row"):
        stage.generate_to_file(entries, [prompt_set()], notes, max_new_tokens=3, loader=loader)
    assert notes.read_bytes() == b"shopping list\nmilk\neggs"
    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"a": 1}\n{"b": 2}')
    with pytest.raises(InputError, match="line 1 is not an answers row"):
        stage.generate_to_file(entries, [prompt_set()], other, max_new_tokens=3, loader=loader)
    assert other.read_bytes() == b'{"a": 1}\n{"b": 2}'


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path) -> None:
    model = saved(tmp_path, "A", 0)
    entries = stage.model_entries([f"m={model}"])
    out = tmp_path / "a.jsonl"
    stage.generate_to_file(entries, [prompt_set()], out, max_new_tokens=3, loader=loader)
    full = out.read_bytes()
    out.write_bytes(full.rstrip(b"\n"))
    stats = stage.generate_to_file(entries, [prompt_set()], out, max_new_tokens=3, loader=loader)
    assert stats["rows_existing"] == 3 and stats["rows_written"] == 0 and out.read_bytes() == full


def test_ctrl_c_keeps_the_written_batches_and_says_how_to_continue(tmp_path, monkeypatch) -> None:
    model = saved(tmp_path, "A", 0)
    entries = stage.model_entries([f"m={model}"])
    out = tmp_path / "a.jsonl"
    original = stage.append_rows
    calls = []

    def append_then_interrupt(path, rows):
        original(path, rows)
        calls.append(len(rows))
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "append_rows", append_then_interrupt)
    with pytest.raises(Interrupted) as info:
        stage.generate_to_file(entries, [prompt_set()], out, max_new_tokens=3, batch_size=2, loader=loader)
    message = str(info.value)
    assert "2 answers kept" in message and str(out) in message and "rerun the same command" in message
    assert "\n" not in message and info.value.exit_code == 130
    monkeypatch.setattr(stage, "append_rows", original)
    stats = stage.generate_to_file(entries, [prompt_set()], out, max_new_tokens=3, batch_size=2, loader=loader)
    assert stats["rows_existing"] == 2 and stats["rows_written"] == 1
