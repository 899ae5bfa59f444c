"""Can a linear router on this base tell harmful from benign prompts on tasks it has not seen? (issue 17)

    python benchmarks/routing_probe.py MIDPO_MODEL --train SPEC --sets SPEC [SPEC ...] [--template T]

A router is a linear map (or a small MLP) of the hidden states it is given, so the best it can do at
separating prompt kinds is bounded by how linearly separable the kinds are in those hidden states. This
fits an L2-regularised logistic-regression probe on the training prompts (every prompt of `--train`
with an `is_harmful` column) and reports its AUROC on each held-out set, for three views of the base
(routing off, so the features do not depend on a trained router):

- `router input, prompt mean`: what the routers of `granularity: prompt` / `input: token+prompt` read —
  per routed layer the mean over prompt tokens of the targeted linear's input, all routed layers joined;
- `residual, prompt mean` and `residual, last prompt token`: the decoder's hidden state after the middle
  layer (`output_hidden_states`), for comparison with a router that would read the residual stream;
- `words of the training prompts`: no model at all, the same probe on which of the training prompts' words
  each prompt contains (`midpo_cli.evaluation.probe.words_probe_auroc`): what the text tells a reader who knows only
  the training data's words. A base above it brings knowledge of its own.

The probe is `midpo_cli.evaluation.probe` (λ fixed, standardised features), the one the router stage logs as
`input_probe_auroc`; λ is not tuned on the held-out sets. A high training
AUROC with a low held-out one means the kinds are memorised per task, not recognised: no router on those
features will separate held-out prompts either. Nothing here asserts a number (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from midpo_cli.data.prompt_sets import load_prompt_set
from midpo_cli.data.readers import load_rows
from midpo_cli.data.template import format_prompt
from midpo_cli.evaluation.gate_stats import auroc
from midpo_cli.evaluation.probe import bag_of_words, fit_linear_probe, vocabulary
from midpo_cli.modeling.loading import load_tokenizer
from midpo_cli.modeling.midpo import load_midpo

WORDS = "words of the training prompts (no model)"


def features(model, tokenizer, prompts: list[str], template: str, batch: int = 32) -> dict[str, torch.Tensor]:
    """Three (n, d) feature views of each prompt, with routing off (the base the experts were trained on)."""
    views: dict[str, list[torch.Tensor]] = {"router input, prompt mean": [], "residual, prompt mean": [],
                                            "residual, last prompt token": []}
    for start in range(0, len(prompts), batch):
        texts = [format_prompt(p, template, tokenizer) for p in prompts[start:start + batch]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        # the router stage's own view (its probe); then the residual stream, from the backbone alone
        views["router input, prompt mean"].append(
            model.routed_input_means(enc.input_ids, enc.attention_mask, enc.attention_mask.bool()))
        with torch.no_grad(), model.routing_disabled():
            out = model.model.get_decoder()(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                            output_hidden_states=True)
        mask = enc.attention_mask.unsqueeze(-1).float()
        mid = out.hidden_states[len(out.hidden_states) // 2].float()
        last = enc.attention_mask.shape[1] - 1 - enc.attention_mask.flip(1).argmax(1)  # last real token
        views["residual, prompt mean"].append(_mean(mid, mask))
        views["residual, last prompt token"].append(mid[torch.arange(mid.shape[0]), last])
    return {k: torch.cat(v) for k, v in views.items()}


def _mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (h * mask).sum(1) / mask.sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a MidPO model folder (router/model of a run)")
    ap.add_argument("--train", required=True, help="pairs or prompts with is_harmful (e.g. embedded:toy-safety/train)")
    ap.add_argument("--sets", nargs="+", required=True, help="held-out prompt sets")
    ap.add_argument("--template", default="safe-rlhf")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, _ = load_midpo(args.model)
    model.eval()
    tokenizer = load_tokenizer(args.model)
    kinds: dict[str, bool] = {}
    for row in load_rows(args.train).rows:
        kinds[str(row["prompt"])] = str(row["is_harmful"]) in ("True", "true", "1")
    train_x = features(model, tokenizer, list(kinds), args.template)
    vocab = vocabulary(list(kinds))
    train_x[WORDS] = bag_of_words(list(kinds), vocab)
    y = torch.tensor([float(v) for v in kinds.values()])
    held = {}
    for spec in args.sets:
        ps = load_prompt_set(spec)
        flags = [str(p["is_harmful"]) in ("True", "true", "1") for p in ps.prompts]
        texts = [p["prompt"] for p in ps.prompts]
        held[ps.name] = ({**features(model, tokenizer, texts, args.template), WORDS: bag_of_words(texts, vocab)},
                         flags)
    print(f"{len(kinds)} training prompts ({int(y.sum())} harmful); {len(model.routed)} routed layers; "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"| features | train | {' | '.join(held)} |")
    print(f"|---|---|{'---|' * len(held)}")
    for view, x in train_x.items():
        score = fit_linear_probe(x, (y > 0).tolist())
        cells = [auroc(score(x).tolist(), (y > 0).tolist())]
        cells += [auroc(score(f[view]).tolist(), flags) for f, flags in held.values()]
        print(f"| {view} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
