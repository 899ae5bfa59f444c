"""The chat template an export carries and `midpo serve` renders: a user message encodes exactly the ids training saw.

The reference is training's own encoding (`encode_prompts`: the template's text, the tokenizer's special tokens for
safe-rlhf, none for a chat template, no EOS); the template is rendered and encoded by Hugging Face's
`apply_chat_template`, as a chat API (vLLM's, TGI's) does. Three tokenizers: the embedded one (adds no BOS), the
same with a BOS post-processor, and one with its own chat template.
"""

from __future__ import annotations

import pytest
from test_export import toy_prompts
from tokenizers.processors import TemplateProcessing

from midpo_cli.data.template import conversation_ids, serving_chat_template
from midpo_cli.data.tokenize import encode_prompts
from midpo_cli.errors import InputError
from midpo_cli.modeling.loading import load_tokenizer

OWN_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def embedded():
    return load_tokenizer("embedded:tiny-llama")


def with_bos():
    """The embedded tokenizer, adding BOS in front of every text it encodes with special tokens (as LLaMA-2's)."""
    tok = embedded()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def with_own_template():
    tok = embedded()
    tok.chat_template = OWN_TEMPLATE
    return tok


CASES = {"no BOS": (embedded, "safe-rlhf"), "BOS": (with_bos, "safe-rlhf"), "own chat template": (with_own_template,
                                                                                                     "chat")}


def rendered_ids(tok, chat_template: str, messages: list[dict]) -> list[int]:
    out = tok.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_message_renders_to_the_ids_training_saw(case):
    make, template = CASES[case]
    tok = make()
    chat = serving_chat_template(tok, template)
    prompts = toy_prompts(20)[0] + ["  spaces around  ", "two\nlines"]
    want, _ = encode_prompts(prompts, tok, template)
    for prompt, ids in zip(prompts, want, strict=True):
        messages = [{"role": "user", "content": prompt}]
        # a base's own template keeps the text as sent; training stripped it, as midpo's rendering does
        sent = messages if template == "safe-rlhf" else [{"role": "user", "content": prompt.strip()}]
        assert rendered_ids(tok, chat, sent) == ids, prompt
        assert conversation_ids(messages, tok, template) == ids, prompt  # what chat's history and serve encode
    starts = {ids[0] for ids in want}
    if case == "BOS":
        assert starts == {tok.bos_token_id}
    elif case == "no BOS":
        assert tok.bos_token_id not in {i for ids in want for i in ids}  # training never saw one


def test_safe_rlhf_conversations_follow_safe_rlhf_s_multi_turn_layout():
    tok = with_bos()
    messages = [{"role": "user", "content": "Hi "}, {"role": "assistant", "content": " Hello."},
                {"role": "user", "content": "And now?"}]
    text = tok.apply_chat_template(messages, chat_template=serving_chat_template(tok, "safe-rlhf"),
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<s>BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:Hello.</s>USER: And now? ASSISTANT:"
    with pytest.raises(InputError, match="no system role"):
        conversation_ids([{"role": "system", "content": "Be brief."}, *messages], tok, "safe-rlhf")
