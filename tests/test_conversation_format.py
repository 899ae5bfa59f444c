"""Each model reads the conversation in its own format (issue 30 item 6): a chat-template policy writes in its
chat template, and a score model reads the same pair in the format it was trained with — the one midpo recorded
in its config, else safe-rlhf text for a score model without a chat template (the beaver format)."""

from __future__ import annotations

import pytest
import torch
from test_score_model import write_checkpoint
from test_template import CHAT
from test_template import tokenizer as chat_tokenizer

from midpo_cli.data.template import RECORD_KEY, format_prompt
from midpo_cli.modeling.score_model import load_score_model, reading_template, score_texts

PROMPT, ANSWER = "how do I bake bread?", "Mix flour and water, then bake it."


def end_score(model, tokenizer, text: str) -> float:
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        return float(model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[1])


def test_a_chat_policy_and_a_safe_rlhf_score_model_score_the_same_pair(tmp_path):
    policy_tok = chat_tokenizer(chat=True)
    policy_text = format_prompt(PROMPT, "auto", policy_tok)  # what the policy is prompted with: its chat template
    assert policy_text.startswith("<s><|user|>") and policy_text.endswith("<|assistant|>")
    write_checkpoint(tmp_path / "rm")  # a beaver-format score model: no chat template, no recorded template
    model, tok = load_score_model(tmp_path / "rm")
    assert reading_template("chat", model.config, tok) == "safe-rlhf"
    got = score_texts(model, tok, [PROMPT], [ANSWER], template="chat")  # the run's template is the policy's
    want = end_score(model, tok, f"BEGINNING OF CONVERSATION: USER: {PROMPT} ASSISTANT:{ANSWER}")
    assert got == pytest.approx([want], abs=1e-5)
    assert got == pytest.approx(score_texts(model, tok, [PROMPT], [ANSWER], template="safe-rlhf"), abs=1e-6)


def test_the_recorded_format_wins_and_a_chat_score_model_reads_chat(tmp_path):
    write_checkpoint(tmp_path / "rm")
    model, tok = load_score_model(tmp_path / "rm")
    tok.chat_template = CHAT  # a score model that can read chat
    chat_text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                        add_generation_prompt=True)
    assert reading_template("chat", model.config, tok) == "chat"
    got = score_texts(model, tok, [PROMPT], [ANSWER], template="chat")
    want = end_score(model, tok, chat_text + ANSWER)
    assert got == pytest.approx([want], abs=1e-5)
    setattr(model.config, RECORD_KEY, "safe-rlhf")  # midpo trained it on safe-rlhf text: that is what it reads
    assert reading_template("chat", model.config, tok) == "safe-rlhf"
    safe = score_texts(model, tok, [PROMPT], [ANSWER], template="chat")
    assert safe == pytest.approx([end_score(model, tok, f"BEGINNING OF CONVERSATION: USER: {PROMPT} "
                                                          f"ASSISTANT:{ANSWER}")], abs=1e-5)
