"""Prompt templates: the text a model sees before and after the answer.

`safe-rlhf` (default) is the format of safe-rlhf, alpaca-7b-reproduced and the beaver score models:
`BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:`, and the answer follows **directly**, with no
space: safe-rlhf's PreferenceDataset tokenizes `prompt + answer + eos`, so that is the text the released
beaver score models were trained on. `chat` uses the tokenizer's own chat template with a generation
prompt; the answer follows directly there too.

Answers are stripped of surrounding whitespace first, so " Sure" and "Sure\\n" read the same.
Every place that joins prompt and answer (training, scoring, generation) goes through these functions,
so a score model and a policy always see the same text.
"""

from __future__ import annotations

from typing import Any

from midpo_cli.errors import InputError

TEMPLATES = ("safe-rlhf", "chat")
SAFE_RLHF = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def format_prompt(prompt: str, template: str = "safe-rlhf", tokenizer: Any = None) -> str:
    """The prompt as the model sees it, ending where the answer begins."""
    check_template(template)
    if template == "safe-rlhf":
        return SAFE_RLHF.format(prompt=prompt.strip())
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or "this tokenizer"
        raise InputError(f"template 'chat': {name} has no chat template; use data.template: safe-rlhf")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt.strip()}], tokenize=False, add_generation_prompt=True
    )


def answer_text(answer: str, template: str = "safe-rlhf") -> str:
    """The answer as appended after format_prompt's text (no EOS: that is added as a token id)."""
    check_template(template)
    return answer.strip()


def format_conversation(prompt: str, answer: str, template: str = "safe-rlhf", tokenizer: Any = None) -> str:
    """Prompt and answer as one string, e.g. for scoring text with a score model."""
    return format_prompt(prompt, template, tokenizer) + answer_text(answer, template)


def adds_special_tokens(template: str) -> bool:
    """Chat templates write BOS themselves; encoding their text must not add it a second time."""
    return template == "safe-rlhf"
