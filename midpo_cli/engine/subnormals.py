"""Subnormal floats on CPU, flushed to zero before a stage first touches a tensor.

A saturated DPO loss drives LoRA gradients and AdamW's moments into subnormal floats (below 1.2e-38), which x86
CPUs compute many times slower, so a training run slows down sharply once its loss saturates (benchmarks/RESULTS.md,
"Numbers behind the code"). Flushing
them to zero changes nothing above the smallest normal float.

When matters: the flush mode belongs to a thread, and the intra-op (OpenMP) workers copy it from the thread that
starts them, once, when the pool starts on the first parallel op. Set later, it reaches the calling thread only —
half of every elementwise op on two threads still ran on subnormals (`tests/test_subnormals.py`). So the pipeline sets
it before the first stage that runs, the stage commands before their stage, and the engine again (for library
callers, where it may come too late for the workers).
"""

from __future__ import annotations


def flush_subnormals() -> bool:
    """Turn flush-to-zero on for this thread and every intra-op worker started after it; False where the CPU
    cannot (torch.set_flush_denormal's answer)."""
    import torch

    return bool(torch.set_flush_denormal(True))
