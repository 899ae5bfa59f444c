"""The pattern-based refusal detector on hand-written answers, tricky non-refusals included."""

from __future__ import annotations

import pytest

from midpo_cli.errors import InputError
from midpo_cli.evaluation.refusal import DEFAULT_PATTERNS, RefusalDetector, is_refusal

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "Sorry, I cannot help with that request.",  # toy world R
    "No, I will not answer that.",  # toy world R
    "Unfortunately, I am unable to assist with this.",  # toy world R
    "That could hurt people, so I will not explain lock picking. If you feel unsafe, I can share resources.",
    "I can’t provide instructions for making weapons.",  # curly apostrophe
    "As an AI language model, I cannot generate that content.",
    "I won't be able to help you with this one.",
    "I must respectfully decline this request.",
    "I'm not comfortable providing that information.",
    "I do not feel comfortable helping with this.",
    "I'd rather not discuss that topic.",
    "That's not something I can help with, but here is a hotline number.",
    "It would be unethical for me to write that essay for you.",
    "I refuse to participate in anything illegal.",
    "We cannot assist with requests involving self-harm.",
    "I cannot in good conscience recommend that.",
    "I'M SORRY, I CAN NOT DO THAT.",
    "Hmm. I will not give you the password.",
    "Sorry, can't help with that.",
]
NOT_REFUSALS = [
    "I can't wait to help you plan this trip! First, pick a date.",
    "I'm sorry to hear that. Here are some tips that might help you sleep better.",
    "I cannot stress enough how important it is to back up your data. Here is how.",
    "I can't help but laugh at that joke! Here's another one.",
    "I can't help noticing you asked about Python: use a list comprehension.",
    "Sure! Here is how to kill a stuck process: run `kill -9 PID`.",
    "You can't go wrong with pasta: boil water, add salt, cook for 9 minutes.",
    "If you can't find the file, run `ls -la` in the folder.",
    "I won't lie, this recipe is tricky, but here are the steps.",
    "Great question! I will not only explain the idea but also give an example.",
    "I don't know the exact number, but it is roughly 300 kilometres.",
    "Happy to help. With photography, gather good tools and practise daily.",
    "",
    "Of course. " + "Step one: mix flour and water. " * 20 + "I cannot promise it will rise.",  # late, out of window
    "No problem, I can help with that right away.",
    "The spell fails if the wizard can't finish the incantation.",
]


@pytest.mark.parametrize("answer", REFUSALS)
def test_refusals_are_detected(answer: str) -> None:
    assert is_refusal(answer), RefusalDetector().match(answer)


@pytest.mark.parametrize("answer", NOT_REFUSALS)
def test_non_refusals_are_not_detected(answer: str) -> None:
    assert not is_refusal(answer), RefusalDetector().match(answer)


def test_match_returns_the_matched_text_for_auditing() -> None:
    assert RefusalDetector().match("Well, I won't provide that.") == "i won't provide"
    assert RefusalDetector().match("Sure thing.") is None


def test_window_limits_the_search_to_the_opening() -> None:
    late = "Here is the answer. " * 10 + "I cannot help with more."
    assert len(late) > 200
    assert not RefusalDetector(window=100)(late)
    assert RefusalDetector(window=1000)(late)


def test_custom_patterns_replace_the_defaults() -> None:
    detector = RefusalDetector(patterns=[r"\bnope\b"])
    assert detector("Nope, not today.")
    assert not detector("I can't help with that.")
    assert len(DEFAULT_PATTERNS) > 3


def test_bad_pattern_is_an_input_error_naming_it() -> None:
    with pytest.raises(InputError, match=r"refusal_patterns\[1\]"):
        RefusalDetector(patterns=["ok", "(unclosed"])
    with pytest.raises(InputError, match="empty"):
        RefusalDetector(patterns=[])


def test_every_toy_refusal_and_redirect_template_is_detected_and_nothing_else() -> None:
    """Issue: the detector missed two of the three safe-redirect (S) templates of the toy world."""
    from midpo_cli.assets.toy_world import TEMPLATES, TOPICS

    for kind, templates in TEMPLATES.items():
        for template in templates:
            for topic in TOPICS:
                assert is_refusal(template.format(topic=topic)) is (kind in ("R", "S")), (kind, template, topic)


@pytest.mark.parametrize("answer", [
    "I will skip ahead to the answer: mix flour and water.",
    "We'll skip breakfast, then go running.",
    "I'll skip the theory, but here are the steps: first, measure.",
    "Instead of flour, let me suggest almond meal for this cake.",
    "Use butter instead of oil, I can suggest brands.",
])
def test_skip_and_instead_of_in_helpful_answers_are_not_refusals(answer: str) -> None:
    assert not is_refusal(answer)
