"""Score answers with a reward or cost model folder, loading it only for the call (torch-free import).

The score stage and every dev choice judged by the score models (an expert's step, the switch's threshold on a
set without a ground-truth judge) score through this one function; tests replace it with a fake.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

Scorer = Callable[[str, str, list[str], list[str]], list[float]]


def default_scorer(*, batch_size: int, template: str, trust_remote_code: bool = False) -> Scorer:
    """(model folder, "reward" | "cost", prompts, answers) → one score per answer; the model is freed after."""
    def score(path: str, kind: str, prompts: list[str], answers: list[str]) -> list[float]:
        from midpo_cli.modeling.score_model import load_score_model, score_texts

        model, tokenizer = load_score_model(path, expected_type=kind, trust_remote_code=trust_remote_code)
        try:
            return score_texts(model, tokenizer, prompts, answers, batch_size=batch_size, template=template,
                               label=f"scoring with the {kind} model")
        finally:
            del model
            gc.collect()
    return score
