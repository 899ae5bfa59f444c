"""Answer log-probs, forward + backward: full (B, T, V) logits vs answer-only chunks (issue 13's chunk size).

    OMP_NUM_THREADS=1 python benchmarks/chunked_logps.py [--vocab 32000,262144] [--chunks 16,64,256,1024]

Random final hidden states (B rows × T positions × H) with half of each row an answer, a random output
embedding (V, H) that trains (as in SFT with tied embeddings, the costliest case: gradients for h and W):
`sequence_logps` of the full logits against `chunked_answer_logps` at several chunk sizes and at the
default (64 MiB of logits per chunk). "Largest (·, V)" is the biggest vocabulary-sized tensor each path
creates: B·T·V for the full logits (and again for their gradient), C·V for the chunks.
Nothing is asserted; the table is for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expert_step import machine  # noqa: E402

from midpo_cli.losses.logprobs import chunked_answer_logps, default_chunk_size  # noqa: E402
from midpo_cli.losses.preference import sequence_logps  # noqa: E402


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn().sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", default="32000,262144")
    parser.add_argument("--chunks", default="16,64,256,1024")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows, length = args.rows, args.length
    print(f"Machine: {machine()}.\n{rows} rows × {length} positions, answers = the second half of each row "
          f"({rows * length // 2} scored positions), hidden {args.hidden}, fp32, W trains.\n\n"
          "| V | path | chunk C | s fwd+bwd (median) | largest (·, V) tensor MiB |\n|---|---|---|---|---|")
    for vocab in map(int, args.vocab.split(",")):
        print("\n".join(measure(vocab, args)))


def measure(vocab: int, args) -> list[str]:
    """Table rows for one vocabulary size: the full logits, then each chunk size."""
    rows, length = args.rows, args.length
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, length, args.hidden, generator=gen).requires_grad_()
    weight = (torch.randn(vocab, args.hidden, generator=gen) * 0.05).requires_grad_()
    labels = torch.randint(0, vocab, (rows, length), generator=gen)
    mask = torch.zeros(rows, length, dtype=torch.long)
    mask[:, length // 2:] = 1
    full = timed(lambda: sequence_logps(hidden @ weight.T, labels, mask), args.repeat)
    out = [f"| {vocab:,} | full logits | — | {full:.2f} | {rows * length * vocab * 4 / 2**20:,.0f} |"]
    default = default_chunk_size(vocab)
    for chunk in sorted({*map(int, args.chunks.split(",")), default}):
        s = timed(lambda c=chunk: chunked_answer_logps(hidden, weight, None, labels, mask, chunk_size=c), args.repeat)
        largest = min(chunk, int(mask[:, 1:].sum())) * vocab * 4  # a chunk holds at most every position
        name = "chunked (default)" if chunk == default else "chunked"
        out.append(f"| {vocab:,} | {name} | {chunk} | {s:.2f} | {largest / 2**20:,.0f} |")
    return out

if __name__ == "__main__":
    main()
