"""Shared prompt prefix vs the concatenated batch for one DPO step, forward + backward (issue 13's measurement).

    OMP_NUM_THREADS=1 python benchmarks/prefix_share.py [--pairs 64] [--batch-size 8] [--repeat 3]

Chosen and rejected share their prompt. Two layouts of the same LoRA DPO step on the ≈20 M-parameter LLaMA
that benchmarks/expert_step.py builds (random init, the embedded tokenizer, LoRA r 16 on down_proj), the
same safety pairs, fp32, reference log-probs precomputed (not timed — both layouts read the same numbers):

- concatenated (midpo's layout): 2B rows prompt ‖ answer, right-padded, one forward, `answer_logps`;
- prefix: the B prompts once (left-padded, KV cache kept with grad), the cache repeated for both answers,
  then the 2B answers against it in a second forward; log p of the first answer token comes from the
  prompt's last position, the others from `answer_logps` on the answer rows.

Both layouts' log-probs are checked equal first (max |difference| printed). The step time is the median
over --repeat rounds of the whole pass over --pairs pairs. Nothing is asserted; the table is for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expert_step import SIZES, machine  # noqa: E402  (the same model shape and machine line)


def build(pairs: int, max_length: int):
    """(policy with a LoRA adapter, tokenizer, encoded safety pairs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.readers import load_rows
    from midpo_cli.data.tokenize import encode_pairs
    from midpo_cli.modeling.loading import load_tokenizer

    tokenizer = load_tokenizer("embedded:tiny-llama")
    torch.manual_seed(42)
    shape = SIZES["20m"]
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         num_key_value_heads=shape["num_attention_heads"], max_position_embeddings=256, **shape)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=16, lora_alpha=32, target_modules=["down_proj"],
                                                                task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-zero adapter, so its gradient path through the prompt's KV matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    selection = select_pairs(load_rows("embedded:toy-safety/train"), "safety_expert")
    feats, _ = encode_pairs(selection.pairs[:pairs], tokenizer, "safe-rlhf", max_length)
    return model.train(), tokenizer, feats


def concatenated(model, feats, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from midpo_cli.data.tokenize import collate_pairs
    from midpo_cli.engine.preference import concatenated_logps

    return concatenated_logps(model, collate_pairs(feats, pad_id))


def prefix_shared(model, feats, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts once (left-padded), then chosen and rejected (interleaved rows) against the repeated KV cache."""
    from midpo_cli.engine.answer_logps import answer_logps

    prompts = [f["chosen_input_ids"][:f["chosen_prompt_len"]] for f in feats]
    answers = [a for f in feats for a in (f["chosen_input_ids"][f["chosen_prompt_len"]:],
                                          f["rejected_input_ids"][f["rejected_prompt_len"]:])]
    assert all(f["rejected_input_ids"][:f["rejected_prompt_len"]] == p for f, p in zip(feats, prompts, strict=True))
    width, span = max(map(len, prompts)), max(map(len, answers))
    p_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    p_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    cache = out.cache
    cache.batch_repeat_interleave(2)  # rows c0, r0, c1, r1, ...
    a_ids = torch.tensor([a + [pad_id] * (span - len(a)) for a in answers])
    a_mask = torch.tensor([[1] * len(a) + [0] * (span - len(a)) for a in answers])
    lengths = p_mask.sum(1).repeat_interleave(2)
    batch = {"input_ids": a_ids, "attention_mask": torch.cat([p_mask.repeat_interleave(2, 0), a_mask], 1),
             "response_mask": a_mask}
    rest = answer_logps(model, batch, cache=cache, position_ids=lengths[:, None] + torch.arange(span))
    first = F.log_softmax(out.logits[:, -1].float(), -1).repeat_interleave(2, 0).gather(1, a_ids[:, :1]).squeeze(1)
    logps = (first + rest).view(-1, 2)
    return logps[:, 0], logps[:, 1]


def step(layout, model, feats, pad_id: int, beta: float = 0.1) -> None:
    chosen, rejected = layout(model, feats, pad_id)
    (-F.logsigmoid(beta * (chosen - rejected))).mean().backward()  # reference log-probs: constants, omitted
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer, feats = build(args.pairs, args.max_length)
    pad = tokenizer.pad_token_id
    batches = [feats[i:i + args.batch_size] for i in range(0, len(feats), args.batch_size)]
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for batch in batches
                   for a, b in zip(concatenated(model, batch, pad), prefix_shared(model, batch, pad), strict=True))
    layouts = {"concatenated": concatenated, "prefix": prefix_shared}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    step(concatenated, model, batches[0], pad)  # warm-up
    for _ in range(args.repeat):
        for name, layout in layouts.items():
            t0 = time.perf_counter()
            for batch in batches:
                step(layout, model, batch, pad)
            times[name].append(time.perf_counter() - t0)
    prompt_tokens = sum(f["chosen_prompt_len"] for f in feats)
    tokens = sum(len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in feats)
    ratios = [c / p for c, p in zip(times["concatenated"], times["prefix"], strict=True)]  # paired by round
    print(f"Machine: {machine()}.\n{len(feats)} safety pairs, batch {args.batch_size} pairs, prompts are "
          f"{prompt_tokens / tokens:.0%} of the concatenated batch's real tokens; max |Δ log-prob| between the "
          f"layouts {diff:.1e}.\n\n| layout | positions computed (padding incl.) | s per pass (median of "
          f"{args.repeat}) | spread | pairs/s |\n|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {sum(positions(name, b) for b in batches):,} | {med:.2f} | {min(ts):.2f}–{max(ts):.2f} "
              f"| {len(feats) / med:.1f} |")
    print(f"\nprefix vs concatenated, paired by round: {statistics.median(ratios):.2f}× as fast "
          f"(rounds {min(ratios):.2f}–{max(ratios):.2f}×)")


def positions(layout: str, feats: list[dict]) -> int:
    """Token positions a layout pushes through the model for one batch, padding included."""
    if layout == "concatenated":
        return 2 * len(feats) * max(len(f[f"{s}_input_ids"]) for f in feats for s in ("chosen", "rejected"))
    prompt = max(f["chosen_prompt_len"] for f in feats)
    answer = max(len(f[f"{s}_input_ids"]) - f[f"{s}_prompt_len"] for f in feats for s in ("chosen", "rejected"))
    return len(feats) * prompt + 2 * len(feats) * answer


if __name__ == "__main__":
    main()
