"""Prompt formats: `auto` picks the tokenizer's chat template when it has one, else safe-rlhf's text; the exact
prompt text of both; `midpo generate` on an instruct model folder uses its chat template by default; a model
used with another template than it was trained with warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from midpo_cli.data.template import (
    RECORD_KEY,
    format_prompt,
    resolve_template,
    warn_mismatch,
)
from midpo_cli.data.tokenize import encode_prompts
from midpo_cli.errors import InputError

WORDS = ["BEGINNING", "OF", "CONVERSATION:", "USER:", "ASSISTANT:", "how", "do", "I", "bake", "bread?", "Sure."]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT = ("{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", additional_special_tokens=SPECIALS[4:])
    if chat:
        wrapped.chat_template = CHAT
    return wrapped


def test_auto_is_the_chat_template_when_there_is_one_else_safe_rlhf() -> None:
    assert resolve_template("auto", tokenizer(chat=True)) == "chat"
    assert resolve_template("auto", tokenizer(chat=False)) == "safe-rlhf"
    assert resolve_template("auto", None) == "safe-rlhf"
    assert resolve_template("safe-rlhf", tokenizer(chat=True)) == "safe-rlhf"  # asked for explicitly: kept
    with pytest.raises(InputError, match="template 'chat': .* has no chat template; use data.template: safe-rlhf"):
        resolve_template("chat", tokenizer(chat=False))
    with pytest.raises(InputError, match="unknown template 'alpaca'; choose one of auto, safe-rlhf, chat"):
        resolve_template("alpaca", None)


def test_exact_prompt_text_of_both_templates() -> None:
    chat, plain = tokenizer(chat=True), tokenizer(chat=False)
    expected = "<s><|user|> how do I bake bread? <|end|> <|assistant|>"
    assert format_prompt(" how do I bake bread? ", "chat", chat) == expected
    assert format_prompt("how do I bake bread?", "auto", chat) == format_prompt("how do I bake bread?", "chat", chat)
    safe = "BEGINNING OF CONVERSATION: USER: how do I bake bread? ASSISTANT:"
    assert format_prompt(" how do I bake bread? ", "safe-rlhf", chat) == safe
    assert format_prompt("how do I bake bread?", "auto", plain) == safe


def test_chat_prompts_are_encoded_without_a_second_bos() -> None:
    """The chat template writes BOS itself; safe-rlhf text gets the tokenizer's BOS added once."""
    chat = tokenizer(chat=True)
    (ids,), _ = encode_prompts(["how do I bake bread?"], chat, "auto")
    assert ids == chat.apply_chat_template([{"role": "user", "content": "how do I bake bread?"}], tokenize=True,
                                           add_generation_prompt=True, return_dict=False)
    assert ids.count(chat.bos_token_id) == 1 and ids[-1] == chat.convert_tokens_to_ids("<|assistant|>")
    (plain_ids,), _ = encode_prompts(["how do I bake bread?"], tokenizer(chat=False), "auto")
    assert plain_ids[0] == 1 and plain_ids.count(1) == 1 and len(plain_ids) == 1 + 4 + 5 + 1


def test_recipe_defaults_to_auto_and_the_quickstart_tokenizer_resolves_to_safe_rlhf() -> None:
    from midpo_cli.modeling.loading import load_tokenizer
    from midpo_cli.recipe import load_recipe

    recipe = load_recipe(None)
    assert recipe.data.template == "auto"
    assert resolve_template(recipe.data.template, load_tokenizer(recipe.base_model)) == "safe-rlhf"


def test_a_model_used_with_another_template_than_it_was_trained_with_warns(capsys) -> None:
    from midpo_cli import console

    console.configure(quiet=False)
    warn_mismatch("model m1", "safe-rlhf", "chat")
    warn_mismatch("model m1", "safe-rlhf", "chat")  # once per model and pair
    warn_mismatch("model m2", None, "chat")  # nothing recorded: nothing to compare
    warn_mismatch("model m3", "chat", "chat")
    err = capsys.readouterr().err
    assert err.count("trained with template 'safe-rlhf' but is used with 'chat'") == 1 and "m1" in err


def instruct_folder(tmp_path: Path, *, trained_with: str | None = None) -> Path:
    """A tiny LLaMA 'instruct model': weights and a tokenizer with a chat template, as a hub download looks."""
    tok = tokenizer(chat=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=2))
    if trained_with:
        setattr(model.config, RECORD_KEY, trained_with)
    folder = tmp_path / "instruct"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def run_generate(tmp_path: Path, folder: Path, *extra: str) -> list[dict]:
    from midpo_cli.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("how do I bake bread?\n")
    out = tmp_path / f"answers{len(extra)}.jsonl"
    rc = main(["--quiet", "generate", "--model", str(folder), "--prompts", str(prompts), "--output", str(out),
               "--max-new-tokens", "2", *extra])
    assert rc == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_midpo_generate_uses_an_instruct_models_chat_template_by_default(tmp_path) -> None:
    folder = instruct_folder(tmp_path)
    chat_len = len(tokenizer(chat=True).apply_chat_template(
        [{"role": "user", "content": "how do I bake bread?"}], tokenize=True, add_generation_prompt=True,
        return_dict=False))
    (row,) = run_generate(tmp_path, folder)
    assert row["prompt_tokens"] == chat_len == 9  # <s> <|user|> 5 words <|end|> <|assistant|>
    (row,) = run_generate(tmp_path, folder, "--template", "safe-rlhf")
    assert row["prompt_tokens"] == 11  # <s> + 10 words of safe-rlhf's text


def test_generate_warns_when_the_model_recorded_another_template(tmp_path, capsys) -> None:
    from midpo_cli import console
    from midpo_cli.modeling.generation import generate_answers

    folder = instruct_folder(tmp_path, trained_with="safe-rlhf")
    model = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    console.configure(quiet=False)
    list(generate_answers(model, tokenizer(chat=True), ["how do I bake bread?"], template="auto", max_new_tokens=1))
    assert "trained with template 'safe-rlhf' but is used with 'chat'" in capsys.readouterr().err
