"""Prompt templates: the text a model sees before and after the answer.

`safe-rlhf` is the format of safe-rlhf, alpaca-7b-reproduced and the beaver score models:
`BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:`, and the answer follows **directly**, with no
space: safe-rlhf's PreferenceDataset tokenizes `prompt + answer + eos`, so that is the text the released
beaver score models were trained on. `chat` uses the tokenizer's own chat template with a generation
prompt; the answer follows directly there too. `auto` (the recipe default) is `chat` when the tokenizer
has a chat template and `safe-rlhf` otherwise: an instruct model answers well only in the format it was
tuned on, and a base model has no format of its own. `auto` is resolved once per stage
(`resolve_template`) from the policy's tokenizer, and the resolved name is what manifests record.

Answers are stripped of surrounding whitespace first, so " Sure" and "Sure\\n" read the same.
Every place that joins prompt and answer (training, scoring, generation) goes through these functions,
so a score model and a policy always see the same text.
"""

from __future__ import annotations

from typing import Any

from midpo_cli.errors import InputError

TEMPLATES = ("safe-rlhf", "chat")  # what a resolved template can be
CHOICES = ("auto", *TEMPLATES)  # what a user may ask for
SAFE_RLHF = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
# The safe-rlhf format as a chat template, for a chat API (`midpo serve`, vLLM, TGI): safe-rlhf's own multi-turn layout
# (its `format_prompt`: `BEGINNING OF CONVERSATION: ` then `USER: {p} ASSISTANT:` per user turn and `{a}` + EOS per
# answer), so one user message renders exactly format_prompt's text. `{prefix}` is what the tokenizer adds in front
# of a text (its BOS, or nothing): training encoded the text with the tokenizer's special tokens, a chat API renders
# the template and adds none (serving_chat_template).
SAFE_RLHF_CHAT_TEMPLATE = (
    "{prefix}BEGINNING OF CONVERSATION: {{% for m in messages %}}{{% if m['role'] == 'user' %}}"
    "USER: {{{{ m['content'] | trim }}}} ASSISTANT:{{% elif m['role'] == 'assistant' %}}"
    "{{{{ m['content'] | trim }}}}{{{{ eos_token }}}}{{% else %}}{{{{ raise_exception('safe-rlhf prompts have "
    "no ' ~ m['role'] ~ ' role: put its text in the user message') }}}}{{% endif %}}{{% endfor %}}"
)
RECORD_KEY = "midpo_template"  # config.json key naming the template a saved model was trained with
_warned: set[tuple[str, str, str]] = set()


def check_template(template: str) -> None:
    if template not in CHOICES:
        raise InputError(f"unknown template {template!r}; choose one of {', '.join(CHOICES)}")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_template(template: str, tokenizer: Any = None) -> str:
    """`auto` → `chat` if the tokenizer has a chat template, else `safe-rlhf`; the others are checked.

    Without a tokenizer there is no chat template to read, so `auto` is `safe-rlhf`.
    """
    check_template(template)
    if template == "auto":
        return "chat" if has_chat_template(tokenizer) else "safe-rlhf"
    if template == "chat" and not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", None) or "this tokenizer"
        raise InputError(f"template 'chat': {name} has no chat template; use data.template: safe-rlhf "
                         "(--template safe-rlhf)")
    return template


def warn_mismatch(what: str, trained: str | None, used: str) -> None:
    """Warn (once per model and pair) when a model is run with another template than it was trained with.

    A model conditioned on one prompt format reads another as unfamiliar text: its scores and answers
    change, silently. `trained` None (nothing recorded, e.g. a hub model) is not checked.
    """
    if trained is None or trained == used or (what, trained, used) in _warned:
        return
    _warned.add((what, trained, used))
    from midpo_cli import console

    console.warn(f"{what} was trained with template {trained!r} but is used with {used!r}; its outputs will "
                 f"not match its training (set data.template / --template {trained} to use it as trained)")


def recorded_template(config: Any) -> str | None:
    """The template a midpo-trained model recorded in its config (None for models from elsewhere)."""
    value = getattr(config, RECORD_KEY, None)
    return value if value in TEMPLATES else None


def format_prompt(prompt: str, template: str = "safe-rlhf", tokenizer: Any = None) -> str:
    """The prompt as the model sees it, ending where the answer begins (`auto` is resolved first)."""
    template = resolve_template(template, tokenizer)
    if template == "safe-rlhf":
        return SAFE_RLHF.format(prompt=prompt.strip())
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt.strip()}], tokenize=False, add_generation_prompt=True
    )


def added_prefix(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts in front of a text when it adds special tokens (its BOS, or none)."""
    plain = list(tokenizer("x y", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("x y", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: its special tokens change the text's "
                     "own tokens, so no chat template can reproduce its encoding")


def serving_chat_template(tokenizer: Any, template: str) -> str:
    """The chat template that encodes a conversation's first user message exactly as training encoded the prompt
    (`template`, resolved): the tokenizer's own for `chat` (training rendered it), else the safe-rlhf layout led by
    the tokens the tokenizer adds in front of a text (BOS when it adds one, nothing when it does not: a template
    that always wrote `{{ bos_token }}` gave a model trained without BOS a token it never saw)."""
    template = resolve_template(template, tokenizer)
    if template == "chat":
        own = tokenizer.chat_template
        return str(own.get("default", next(iter(own.values()))) if isinstance(own, dict) else own)
    prefix = added_prefix(tokenizer)
    if prefix and prefix == [getattr(tokenizer, "bos_token_id", None)]:
        lead = "{{ bos_token }}"
    else:
        lead = "".join(tokenizer.convert_ids_to_tokens(prefix))
    return SAFE_RLHF_CHAT_TEMPLATE.format(prefix=lead)


def conversation_ids(messages: list[dict[str, str]], tokenizer: Any, template: str) -> list[int]:
    """A conversation (OpenAI-style `role`/`content` messages) as the model reads it, ending where the answer
    begins: rendered by `serving_chat_template`, so chat's history, `midpo serve` and an export's chat template
    encode the same ids, and a single user message the ids training saw."""
    messages = [{**m, "content": str(m.get("content", "")).strip()} for m in messages]  # as format_prompt's
    try:
        rendered = tokenizer.apply_chat_template(messages, chat_template=serving_chat_template(tokenizer, template),
                                                 add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja's TemplateError: a role the template refuses, a malformed message
        raise InputError(f"messages: {exc}") from None
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def answer_text(answer: str, template: str = "safe-rlhf") -> str:
    """The answer as appended after format_prompt's text (no EOS: that is added as a token id)."""
    check_template(template)
    return answer.strip()


def adds_special_tokens(template: str) -> bool:
    """Chat templates write BOS themselves; encoding their text must not add it a second time."""
    if template not in TEMPLATES:
        raise ValueError(f"adds_special_tokens needs a resolved template, got {template!r} (resolve_template)")
    return template == "safe-rlhf"
