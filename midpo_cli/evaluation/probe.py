"""Can a linear map of the router's input tell harmful from benign prompts it was not fit on?

A router is a linear map (or a small MLP) of the hidden states it reads, so how well *any* router can
separate prompt kinds is bounded by how linearly separable they are in those states. The router stage
fits this probe on its training prompts and scores the held-out ones: a low held-out AUROC says the base
memorises which training tasks are harmful without recognising new ones, and no router training will fix
that (measured on the quickstart's base and on a pretrained one: benchmarks/RESULTS.md, "Why the quickstart router
does not route").

L2-regularised logistic regression on standardised features, fit by L-BFGS in float64; λ is fixed, never
tuned on the held-out side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from midpo_cli.evaluation.gate_stats import auroc

L2 = 1e-2
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, with inner apostrophes ("boss's")


def fit_linear_probe(x: torch.Tensor, y: Sequence[bool], l2: float = L2) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit on (n, d) features and labels; returns the scorer of new (m, d) rows (logits, float64)."""
    mu, sd, w, b = fit_probe_parameters(x, y, l2)
    return lambda new: ((new.detach().double() - mu) / sd) @ w + b


def fit_probe_parameters(x: torch.Tensor, y: Sequence[bool], l2: float = L2
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, weights, bias) of the fitted probe, float64: logit = ((x − mean) / std) · weights + bias.
    Kept as tensors by the probe switch (midpo_cli.modeling.switch), which saves them with the model."""
    x = x.detach().double()
    mu, sd = x.mean(0), x.std(0, unbiased=False) + 1e-6
    z = (x - mu) / sd
    target = torch.tensor([float(v) for v in y], dtype=torch.float64)
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may sit under no_grad (the router stage's evaluation)
        opt.step(closure)
    return mu, sd, w.detach(), b.detach()


def linear_probe_auroc(train_x: torch.Tensor, train_y: Sequence[bool], test_x: torch.Tensor,
                       test_y: Sequence[bool]) -> float | None:
    """Held-out AUROC (harmful = positive) of a probe fit on the training rows; None without both kinds."""
    if len(set(train_y)) < 2 or len(set(test_y)) < 2:
        return None
    score = fit_linear_probe(train_x, train_y)
    return auroc(score(test_x).tolist(), list(test_y))


def words_of(text: str) -> list[str]:
    """Lower-cased words of a prompt (the units a bag of words counts)."""
    return WORD.findall(text.lower())


def vocabulary(texts: Sequence[str]) -> list[str]:
    """The sorted words of the training texts: the only words a bag-of-words probe can know."""
    return sorted({w for text in texts for w in words_of(text)})


def bag_of_words(texts: Sequence[str], vocabulary: Sequence[str]) -> torch.Tensor:
    """(n, |vocabulary|) 0/1 features: which vocabulary words each text contains (unknown words count nowhere)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    x = torch.zeros(len(texts), len(vocabulary), dtype=torch.float64)
    for row, text in enumerate(texts):
        for word in words_of(text):
            if word in index:
                x[row, index[word]] = 1.0
    return x


def words_probe_auroc(train_texts: Sequence[str], train_y: Sequence[bool], test_texts: Sequence[str],
                      test_y: Sequence[bool]) -> float | None:
    """The same probe on the words alone: which of the training prompts' words each prompt contains.

    Why: it measures what the held-out prompts' text tells about their kind to a reader who knows only the
    training prompts' words, i.e. to a base that learnt language from this data alone. A base below it
    loses what the words carry; a base above it brings knowledge of its own (pretraining: it knows that a
    "grenade" belongs with "bomb"). On held-out tasks whose key words never occur in training, no base
    without such knowledge can do much better (docs/design.md §8).
    """
    known = vocabulary(train_texts)
    return linear_probe_auroc(bag_of_words(train_texts, known), train_y, bag_of_words(test_texts, known), test_y)
