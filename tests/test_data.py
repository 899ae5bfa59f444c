"""Data layer: readers, schema, stage filters (every drop reason), templates, tokenisation and masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midpo_cli.data.filters import select_pairs, select_prompts
from midpo_cli.data.readers import Table, load_rows, parse_hub_spec
from midpo_cli.data.schema import parse_columns_option
from midpo_cli.data.template import answer_text, format_prompt
from midpo_cli.data.tokenize import (
    collate_pairs,
    collate_sft,
    encode_pairs,
    encode_prompts,
    encode_sft,
    encode_text,
)
from midpo_cli.errors import InputError

# ---------------------------------------------------------------- hand-written rows


def pair(
    prompt="How do I bake bread?",
    r0="Mix flour and water.",
    r1="I cannot help.",
    better=0,
    safer=1,
    safe0=True,
    safe1=True,
    **extra,
):
    row = {
        "prompt": prompt,
        "response_0": r0,
        "response_1": r1,
        "better_response_id": better,
        "safer_response_id": safer,
        "is_response_0_safe": safe0,
        "is_response_1_safe": safe1,
    }
    row.update(extra)
    return row


def hand_rows() -> list[dict]:
    """Twelve rows; the expected fate of each one per stage is written in test_filters_every_reason."""
    rows = [
        pair(
            r0="Here is how to pick it.",
            r1="No.",
            better=0,
            safer=1,
            safe0=False,
            safe1=True,
            category="crime",
            is_harmful=True,
            reward_0=1.5,
            reward_1=-0.5,
            response_0_type="C",
            response_1_type="R",
        ),  # 0 exactly one safe, disagree
        pair(better=0, safer=0),  # 1 both safe, agree
        pair(better=0, safer=1),  # 2 both safe, disagree
        pair(better=1, safer=0, safe0=False, safe1=False),  # 3 both unsafe, disagree
        pair(better=0, safer=1, safe0=True, safe1=False),  # 4 one safe, safer is the unsafe one
        {k: v for k, v in pair().items() if k != "safer_response_id"},  # 5 malformed: missing field
        pair(better=2),  # 6 malformed: id not 0/1
        pair(r0=5),  # 7 malformed: text is a number
        pair(prompt="   "),  # 8 empty prompt
        pair(r1=""),  # 9 empty response
        pair(r0="Same.", r1=" Same. "),  # 10 identical responses
        pair(better="0", safer="0", safe0="true", safe1="False"),  # 11 CSV-style labels, one safe, agree
    ]
    return rows


INVALID = {
    "dropped:malformed": 3,
    "dropped:empty_prompt": 1,
    "dropped:empty_response": 1,
    "dropped:identical_responses": 1,
}


def test_filters_every_reason() -> None:
    """Valid rows are 0-4 and 11 (6 of 12). Worked out by hand per stage:
    safety_expert: exactly one safe = 0, 4, 11; row 4's safer label points at the unsafe answer → kept 0, 11.
    router/labels: both safe = 1, 2; of those safer == better = 1 → kept 1.
    router/agree: safer == better = 1, 11 → kept 2 (rows 0, 2, 3, 4 differ).
    """
    table = Table(hand_rows(), "hand.jsonl")
    expected = {
        "reward_model": ({}, 6, [0, 1, 2, 3, 4, 11]),
        "cost_model": ({}, 6, [0, 1, 2, 3, 4, 11]),
        "helpfulness_expert": ({}, 6, [0, 1, 2, 3, 4, 11]),
        "dpo": ({}, 6, [0, 1, 2, 3, 4, 11]),
        "safety_expert": ({"dropped:not_exactly_one_safe": 3, "dropped:safer_is_unsafe": 1}, 2, [0, 11]),
        "router": ({"dropped:not_both_safe": 4, "dropped:safer_differs_from_better": 1}, 1, [1]),
    }
    for stage, (filters, kept, rows) in expected.items():
        sel = select_pairs(table, stage)
        assert sel.counts == {"rows_in": 12, **INVALID, **filters, "kept": kept}, stage
        assert list(sel.counts) == [
            "rows_in",
            *INVALID,
            *filters,
            "kept",
        ]  # insertion order is the report order
        assert [p.row for p in sel.pairs] == rows, stage
    agree = select_pairs(table, "router", rule="agree")
    assert agree.counts["dropped:safer_differs_from_better"] == 4 and [p.row for p in agree.pairs] == [1, 11]
    assert agree.steps == {"rows_in": 12, "valid": 6, "safer_equals_better": 2}
    safety = select_pairs(table, "safety_expert")
    assert safety.steps == {"rows_in": 12, "valid": 6, "exactly_one_safe": 3, "safer_is_safe": 2}
    assert safety.examples["malformed"][0] == "row 6: missing safer_response_id"


def test_orientation_and_meta() -> None:
    table = Table(hand_rows(), "hand.jsonl")
    by_better = select_pairs(table, "reward_model").pairs[0]
    assert (by_better.chosen, by_better.rejected) == ("Here is how to pick it.", "No.")
    assert (by_better.chosen_safe, by_better.rejected_safe) == (False, True)
    assert by_better.meta == {
        "category": "crime",
        "is_harmful": True,
        "reward_chosen": 1.5,
        "reward_rejected": -0.5,
        "type_chosen": "C",
        "type_rejected": "R",
    }
    by_safer = select_pairs(table, "cost_model").pairs[0]
    assert (by_safer.chosen, by_safer.rejected, by_safer.chosen_safe, by_safer.rejected_safe) == (
        "No.",
        "Here is how to pick it.",
        True,
        False,
    )
    assert by_safer.meta["reward_chosen"] == -0.5 and by_safer.meta["type_chosen"] == "R"
    csv_style = select_pairs(table, "safety_expert").pairs[1]
    assert csv_style.row == 11 and csv_style.chosen_safe is True and csv_style.rejected_safe is False


def test_empty_selection_names_the_filter() -> None:
    rows = [pair(better=0, safer=1, safe0=True, safe1=True), pair(better=1, safer=1, safe0=True, safe1=True)]
    with pytest.raises(InputError, match="safety_expert after the 'exactly_one_safe' filter"):
        select_pairs(Table(rows, "s.jsonl"), "safety_expert")
    with pytest.raises(InputError, match="after the 'valid' filter"):
        select_pairs(Table([pair(r0="x", r1="x")], "s.jsonl"), "reward_model")
    sel = select_pairs(Table(rows, "s.jsonl"), "safety_expert", allow_empty=True)
    assert sel.pairs == [] and "exactly_one_safe" in sel.error


def test_missing_column_names_it_and_lists_columns() -> None:
    rows = [{k: v for k, v in pair().items() if k != "safer_response_id"}]
    with pytest.raises(InputError) as err:
        select_pairs(Table(rows, "pku.jsonl"), "safety_expert")
    msg = str(err.value)
    assert "pku.jsonl: missing column 'safer_response_id'" in msg
    assert "(columns: prompt, response_0, response_1, better_response_id, is_response_0_safe" in msg
    assert "data.columns" in msg
    assert select_pairs(Table(rows, "pku.jsonl"), "reward_model").counts["kept"] == 1  # not needed there


def test_preference_file_read_as_is() -> None:
    rows = [
        {
            "prompt": "p",
            "chosen": "good",
            "rejected": "bad",
            "reward_chosen": 2.0,
            "is_chosen_safe": True,
            "is_rejected_safe": 1,
        },
        {"prompt": "p", "chosen": "same", "rejected": "same"},
    ]
    sel = select_pairs(Table(rows, "dual.jsonl"), "router")
    assert sel.counts == {
        "rows_in": 2,
        **{k: 0 for k in INVALID},
        "dropped:identical_responses": 1,
        "kept": 1,
    }
    p = sel.pairs[0]
    assert (p.chosen, p.rejected, p.chosen_safe, p.rejected_safe, p.meta) == (
        "good",
        "bad",
        True,
        True,
        {"reward_chosen": 2.0},
    )
    with pytest.raises(InputError, match="missing column 'response_0'"):
        select_pairs(Table(rows, "dual.jsonl"), "cost_model")


def test_select_prompts_counts() -> None:
    table = Table(
        [{"prompt": "a", "is_harmful": "true"}, {"prompt": " "}, {"prompt": None}],
        "p.txt",
        {"empty_lines": 2},
    )
    sel = select_prompts(table)
    assert sel.counts == {
        "skipped:empty_lines": 2,
        "rows_in": 3,
        "dropped:malformed": 1,
        "dropped:empty_prompt": 1,
        "kept": 1,
    }
    assert sel.prompts == [{"prompt": "a", "category": None, "is_harmful": True, "row": 0}]


# ---------------------------------------------------------------- readers


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PKU_ROW = pair(prompt="q", r0="a", r1="b", better=1, safer=0, safe0=True, safe1=False)


def test_readers_all_formats(tmp_path: Path) -> None:
    import pandas as pd

    expected = [PKU_ROW, pair()]
    jl = write_jsonl(tmp_path / "p.jsonl", expected)
    (tmp_path / "list.json").write_text(json.dumps(expected))
    (tmp_path / "lines.json").write_text(jl.read_text())
    pd.DataFrame(expected).to_parquet(tmp_path / "p.parquet")
    for name in ("p.jsonl", "list.json", "lines.json", "p.parquet"):
        assert load_rows(str(tmp_path / name)).rows == expected, name
    pd.DataFrame(expected).to_csv(tmp_path / "p.csv", index=False)
    csv_rows = load_rows(str(tmp_path / "p.csv")).rows
    assert csv_rows[0]["is_response_1_safe"] == "False"  # strings; the schema types them
    assert select_pairs(Table(csv_rows, "p.csv"), "cost_model").pairs[0].chosen == "a"
    (tmp_path / "prompts.txt").write_text("first\n\n  second  \n\n")
    txt = load_rows(str(tmp_path / "prompts.txt"))
    assert txt.rows == [{"prompt": "first"}, {"prompt": "second"}] and txt.skipped == {"empty_lines": 2}


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found: .*nope.jsonl"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="file not found"):
        load_rows("./data/missing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pair()) + "\n\n{oops\n")
    with pytest.raises(InputError, match=r"bad.jsonl: row 3: invalid JSON"):
        load_rows(str(bad))
    bad.write_text("[1, 2]\n")
    with pytest.raises(InputError, match=r"row 1: expected a JSON object, got list"):
        load_rows(str(bad))
    bad.write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        load_rows(str(bad))


def test_column_mapping(tmp_path: Path) -> None:
    src = {k.replace("prompt", "question"): v for k, v in PKU_ROW.items()}
    path = write_jsonl(tmp_path / "q.jsonl", [src])
    table = load_rows(str(path), columns={"prompt": "question"})
    assert table.rows == [PKU_ROW]
    with pytest.raises(InputError, match="maps 'prompt' to 'query', but there is no column 'query'"):
        load_rows(str(path), columns={"prompt": "query"})
    assert parse_columns_option(" prompt=question, response_0=a ,") == {
        "prompt": "question",
        "response_0": "a",
    }
    for bad in ("prompt", "prompt=", "=x", "a=b,a=c"):
        with pytest.raises(InputError, match="--columns"):
            parse_columns_option(bad)


def test_embedded_and_saved_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import midpo_cli.assets as assets

    (tmp_path / "toy").mkdir()
    write_jsonl(tmp_path / "toy" / "train.jsonl", [PKU_ROW])
    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    table = load_rows("embedded:toy/train")
    assert table.rows == [PKU_ROW] and table.source == "embedded:toy/train"
    with pytest.raises(InputError, match="unknown embedded asset"):
        load_rows("embedded:toy/nope")

    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([PKU_ROW]), "test": Dataset.from_list([pair()])}).save_to_disk(
        str(tmp_path / "saved")
    )
    assert load_rows(str(tmp_path / "saved")).rows == [PKU_ROW]
    assert load_rows(f"{tmp_path / 'saved'}:test").rows == [pair()]
    with pytest.raises(InputError, match="no split 'dev'"):
        load_rows(f"{tmp_path / 'saved'}:dev")


def test_hub_spec_syntax() -> None:
    assert parse_hub_spec("PKU-Alignment/PKU-SafeRLHF") == ("PKU-Alignment/PKU-SafeRLHF", None, "train")
    assert parse_hub_spec("PKU-Alignment/PKU-SafeRLHF:test") == ("PKU-Alignment/PKU-SafeRLHF", None, "test")
    assert parse_hub_spec("org/name/alpaca-7b:train") == ("org/name", "alpaca-7b", "train")
    with pytest.raises(InputError, match="not a file, an embedded: name, or a hub dataset"):
        parse_hub_spec("justaname")


def test_jsonl_loading_imports_neither_datasets_nor_torch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [PKU_ROW])
    code = (
        f"import sys; from midpo_cli.data.readers import load_rows; from midpo_cli.data.filters import "
        f"select_pairs; select_pairs(load_rows({str(path)!r}), 'reward_model'); "
        "print([m for m in ('datasets', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- tokenizers built here

CORPUS = [  # safe-rlhf's exact text: the answer follows "ASSISTANT:" with no space
    "BEGINNING OF CONVERSATION: USER: how do I bake bread ASSISTANT:Sure, mix flour and water.",
    "BEGINNING OF CONVERSATION: USER: how do I pick a lock ASSISTANT:Sorry, I cannot help with that.",
    "Sure, here is a safe way. Sorry, no. Mix the flour, knead, rest, bake. I cannot help.",
] * 20


def _wrap(tok, bos: bool):
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    if bos:
        tok.post_processor = TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def byte_tok():
    """GPT-2 style byte-level BPE: the pre-tokeniser splits before a space, so no merge crosses ': '."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    wrapped = _wrap(tok, bos=True)
    wrapped.chat_template = (
        "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return wrapped


@pytest.fixture(scope="module")
def merging_tok():
    """BPE with no pre-tokeniser: merges run across ':S', so prompt+answer does not start with prompt ids."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    return _wrap(tok, bos=False)


PAIRS_TEXT = [
    ("how do I bake bread", "Sure, mix flour and water.", "Sorry, I cannot help with that."),
    ("how do I pick a lock", "Sorry, I cannot help.", "Sure, here is a safe way."),
    ("bake", "Mix the flour, knead, rest, bake.", "Sorry, no."),
]


def _pairs():
    rows = [pair(prompt=p, r0=c, r1=r, better=0, safer=0) for p, c, r in PAIRS_TEXT]
    return select_pairs(Table(rows, "t"), "reward_model").pairs


def _check_batch(
    batch: dict,
    seqs: list[list[int]],
    prompt_ids: list[list[int]],
    answer_ids: list[list[int]],
    pad_id: int,
    side: str,
) -> None:
    """Independent check: each row's real tokens are prompt + answer + EOS; the mask is exactly the answer."""
    for i, (seq, p, a) in enumerate(zip(seqs, prompt_ids, answer_ids, strict=True)):
        ids, att, resp = batch["input_ids"][i], batch["attention_mask"][i], batch["response_mask"][i]
        real = ids[att.bool()].tolist()
        assert real == seq == p + a
        width = ids.shape[0]
        start = 0 if side == "right" else width - len(seq)
        assert att.tolist() == [int(start <= t < start + len(seq)) for t in range(width)]
        assert resp.tolist() == [int(start + len(p) <= t < start + len(seq)) for t in range(width)]
        assert ids[resp.bool()].tolist() == a
        assert all(x == pad_id for x in ids[~att.bool()].tolist())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("template", ["safe-rlhf", "chat"])
def test_response_mask_is_exactly_the_answer(byte_tok, template: str, side: str) -> None:
    pairs = _pairs()
    feats, counts = encode_pairs(pairs, byte_tok, template, max_length=128)
    assert counts["kept"] == 3 and counts["retokenized_boundary"] == 0
    batch = collate_pairs(feats, byte_tok.pad_token_id, padding_side=side, extras=())
    assert batch["input_ids"].shape[0] == 6 and batch["input_ids"].dtype == torch.long
    eos = byte_tok.eos_token_id
    special = template == "safe-rlhf"
    prompts = [
        byte_tok(format_prompt(p.prompt, template, byte_tok), add_special_tokens=special)["input_ids"]
        for p in pairs
    ]
    answers = [
        [*byte_tok(answer_text(t, template), add_special_tokens=False)["input_ids"], eos]
        for t in [p.chosen for p in pairs] + [p.rejected for p in pairs]
    ]
    seqs = [f["chosen_input_ids"] for f in feats] + [f["rejected_input_ids"] for f in feats]
    _check_batch(batch, seqs, prompts * 2, answers, byte_tok.pad_token_id, side)
    if template == "safe-rlhf":
        assert prompts[0][0] == byte_tok.bos_token_id
        assert byte_tok.decode(answers[0][:-1]) == "Sure, mix flour and water."  # safe-rlhf: no space
    else:
        assert byte_tok.bos_token_id not in prompts[0]
        assert byte_tok.decode(prompts[0]).endswith("<|assistant|>\n")


def test_boundary_merge_falls_back_to_separate_answer(merging_tok) -> None:
    pairs = _pairs()
    prompt_text = format_prompt(pairs[0].prompt)
    joint = merging_tok(prompt_text + answer_text(pairs[0].chosen))["input_ids"]
    alone = merging_tok(prompt_text)["input_ids"]
    assert joint[: len(alone)] != alone  # the case this test is about really happens with this tokenizer
    feats, counts = encode_pairs(pairs, merging_tok, "safe-rlhf", max_length=128)
    assert counts["retokenized_boundary"] >= 1
    batch = collate_pairs(feats, merging_tok.pad_token_id, padding_side="left")
    for f, p in zip(feats, pairs, strict=True):
        prompt_ids = merging_tok(format_prompt(p.prompt))["input_ids"]
        assert f["chosen_input_ids"][: f["chosen_prompt_len"]] == prompt_ids  # the prompt is never altered
    resp = batch["response_mask"][0].bool()
    answer = batch["input_ids"][0][resp].tolist()
    assert answer[-1] == merging_tok.eos_token_id
    assert merging_tok.decode(answer[:-1]).replace(" ", "") == pairs[0].chosen.replace(" ", "")


def test_truncation_and_identical_after_truncation(byte_tok) -> None:
    """max_length = prompt('bake') + 8: the long prompt is cut to that length keeping BOS and its end; the
    second pair's answers share far more than 8 leading tokens, so truncation makes them identical."""
    long_prompt = "how do I bake bread " * 30
    same = "Sure, mix flour and water. " * 3
    rows = [
        pair(prompt=long_prompt, r0="Sure, mix flour and water. " * 5, r1="Sorry, I cannot help. " * 5),
        pair(prompt="bake", r0=same + "then rest", r1=same + "then bake"),
    ]
    pairs = select_pairs(Table(rows, "t"), "reward_model").pairs
    plain = [byte_tok(format_prompt(p.prompt))["input_ids"] for p in pairs]
    max_length = len(plain[1]) + 8
    feats, counts = encode_pairs(pairs, byte_tok, "safe-rlhf", max_length=max_length)
    assert counts == {
        "pairs_in": 2,
        "truncated:prompt": 1,
        "truncated:answer": 2,
        "retokenized_boundary": 0,
        "dropped:identical_tokens": 0,
        "dropped:identical_after_truncation": 1,
        "kept": 1,
    }
    f = feats[0]
    assert len(f["chosen_input_ids"]) == max_length and f["chosen_prompt_len"] == max_length - 8
    kept = f["chosen_input_ids"][: f["chosen_prompt_len"]]
    assert kept[0] == byte_tok.bos_token_id and kept[1:] == plain[0][-(max_length - 9) :]  # BOS and the end
    assert byte_tok.eos_token_id not in f["chosen_input_ids"]  # a cut answer has no EOS
    assert len(encode_pairs(pairs, byte_tok, "safe-rlhf", max_length=512)[0]) == 2
    with pytest.raises(InputError, match="no pairs left after tokenisation"):
        encode_pairs(pairs[1:], byte_tok, "safe-rlhf", max_length=max_length)
    with pytest.raises(InputError, match="no room"):
        encode_pairs(pairs, byte_tok, "safe-rlhf", max_length=8)


def test_collate_extras(byte_tok) -> None:
    feats, _ = encode_pairs(_pairs(), byte_tok, "safe-rlhf", max_length=128)
    for f, m in zip(feats, (0.5, 0.0, 2.0), strict=True):
        f["margin"] = m
    batch = collate_pairs(feats, byte_tok.pad_token_id, extras=("margin",))
    assert batch["margin"].dtype == torch.float32 and batch["margin"].tolist() == [0.5, 0.0, 2.0]
    assert batch["pair_index"].tolist() == [0, 1, 2]
    with pytest.raises(KeyError, match="ref_chosen_logps"):
        collate_pairs(feats, byte_tok.pad_token_id, extras=("ref_chosen_logps",))


@pytest.mark.parametrize("side", ["right", "left"])
def test_sft_encoding_and_drops(byte_tok, side: str) -> None:
    rows = [
        {"prompt": "bake", "answer": "Mix the flour, knead, rest, bake."},
        {"prompt": "bake", "answer": " "},
        {"prompt": "", "answer": "x"},
        {"prompt": "bake"},
        {"prompt": "how do I bake bread", "answer": "Sure."},
    ]
    feats, counts = encode_sft(rows, byte_tok, "safe-rlhf", max_length=64)
    assert counts == {
        "rows_in": 5,
        "dropped:malformed": 1,
        "dropped:empty_prompt": 1,
        "dropped:empty_answer": 1,
        "truncated:prompt": 0,
        "truncated:answer": 0,
        "retokenized_boundary": 0,
        "kept": 2,
    }
    batch = collate_sft(feats, byte_tok.pad_token_id, padding_side=side)
    eos = byte_tok.eos_token_id
    prompts = [byte_tok(format_prompt(rows[i]["prompt"]))["input_ids"] for i in (0, 4)]
    answers = [
        [*byte_tok(rows[i]["answer"], add_special_tokens=False)["input_ids"], eos] for i in (0, 4)
    ]
    _check_batch(batch, [f["input_ids"] for f in feats], prompts, answers, byte_tok.pad_token_id, side)


def test_encode_prompts_truncates_left(byte_tok) -> None:
    short = byte_tok(format_prompt("bake"))["input_ids"]
    full = byte_tok(format_prompt("how do I bake bread " * 10))["input_ids"]
    n = len(short)
    ids, counts = encode_prompts(
        ["bake", "how do I bake bread " * 10], byte_tok, "safe-rlhf", max_prompt_length=n
    )
    assert ids == [short, [byte_tok.bos_token_id, *full[-(n - 1) :]]]
    assert counts == {"prompts_in": 2, "truncated:prompt": 1}


def test_identical_tokens_dropped(merging_tok) -> None:
    """Two different texts the tokenizer maps to the same ids (unknown characters) are not a pair."""
    rows = [pair(r0="Sure é", r1="Sure ü"), pair()]
    pairs = select_pairs(Table(rows, "t"), "reward_model").pairs
    feats, counts = encode_pairs(pairs, merging_tok, "safe-rlhf", max_length=256)
    assert counts["dropped:identical_tokens"] == 1 and [f["pair_index"] for f in feats] == [1]


def test_templates(byte_tok) -> None:
    assert format_prompt(" hi ") == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:"
    assert answer_text(" Sure.\n") == "Sure."  # safe-rlhf joins prompt + answer with no space after ASSISTANT:
    assert format_prompt("hi") + answer_text(" Sure.") == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:Sure."
    assert format_prompt("hi", "chat", byte_tok) == "<|user|>hi\n<|assistant|>\n"
    no_chat = type("T", (), {"chat_template": None, "name_or_path": "gpt2"})()
    with pytest.raises(InputError, match="gpt2 has no chat template"):
        format_prompt("hi", "chat", no_chat)
    with pytest.raises(InputError, match="unknown template"):
        format_prompt("hi", "alpaca")


def test_counts_read_as_text_with_only_the_reasons_that_happened() -> None:
    from midpo_cli.console import counts_text

    counts = {"pairs_in": 400, "dropped:malformed": 0, "dropped:not_exactly_one_safe": 150,
              "truncated:prompt": 3, "kept": 250}
    assert counts_text(counts) == "250 of 400 kept (not exactly one safe 150, truncated prompt 3)"
    assert counts_text({"rows_in": 160, "kept": 160}) == "160 of 160 kept"


# ---------------------------------------------------------------- plain-text rows (stages.sft.corpus)

def test_text_rows_are_scored_on_every_token_after_the_first(byte_tok) -> None:
    """A corpus row is BOS (this tokenizer adds one) + the text + EOS, and every token after the first is a
    target: the response mask starts at position 1. Whitespace-only, missing and one-token rows are dropped."""
    rows = [{"text": "Mix the flour, knead, rest, bake."}, {"text": "  "}, {"other": 1}, {"text": "bake"},
            {"text": "Sorry, no. " * 20}]
    feats, counts = encode_text(rows, byte_tok, max_length=16)
    assert counts == {"rows_in": 5, "dropped:malformed": 1, "dropped:empty_text": 1, "dropped:too_short": 0,
                      "truncated:text": 1, "kept": 3}
    bos, eos = byte_tok.bos_token_id, byte_tok.eos_token_id
    text_ids = byte_tok("Mix the flour, knead, rest, bake.", add_special_tokens=False)["input_ids"]
    assert feats[0]["input_ids"] == [bos, *text_ids, eos]
    assert len(feats[2]["input_ids"]) == 16 and feats[2]["input_ids"][-1] != eos  # cut on the right
    batch = collate_sft(feats, byte_tok.pad_token_id)
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["response_mask"][i].tolist() == [0] + [1] * (n - 1) + [0] * (batch["input_ids"].shape[1] - n)


def test_text_rows_loss_equals_a_per_row_float64_loop(byte_tok) -> None:
    """SFT's loss on corpus rows (answer_nll over the chunked answer log-probs) is the mean next-token NLL of
    every token after the first, computed here row by row from full float64 logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from midpo_cli.engine.answer_logps import answer_logps
    from midpo_cli.losses.preference import answer_nll

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(byte_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=byte_tok.pad_token_id)
    model = LlamaForCausalLM(config).double().eval()
    feats, _ = encode_text([{"text": "Mix the flour, knead, rest, bake."}, {"text": "Sorry, no."}], byte_tok, 64)
    batch = collate_sft(feats, byte_tok.pad_token_id)
    got = answer_nll(answer_logps(model, batch), batch["response_mask"])
    total, count = 0.0, 0
    for f in feats:
        ids = torch.tensor([f["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        total -= sum(logp[t, ids[0, t + 1]].item() for t in range(ids.shape[1] - 1))
        count += ids.shape[1] - 1
    assert got.item() == pytest.approx(total / count, abs=1e-8)
