"""Keep a CPU run's resident memory close to what its tensors hold (docs/design.md §6, "Host memory").

On CPU, PyTorch's tensors come from glibc's malloc. A training step allocates and frees the same large
activations layer after layer, and glibc keeps much of what is freed, fragmented, instead of returning it
to the system: traced per decoder layer on Gemma 3 270M with activation checkpointing, the resident set
grew 28 MiB a layer in the forward while live tensors grew 5 MiB (the checkpointed layer inputs). Two
remedies, applied to every midpo process, neither measurably slower there (benchmarks/RESULTS.md):

- PyTorch's own `THP_MEM_ALLOC_ENABLE=1`: tensors of 2 MiB or more are advised as transparent huge
  pages. PyTorch reads it once, at its first large allocation (after torch, transformers and peft are
  imported it is too late), so the CLI sets it before any stage imports torch; a value the user set is
  kept (0 turns it off).
- glibc's `malloc_trim(0)` after each micro-batch's step (and each reference-log-prob batch) on CPU: it
  returns the pages the step freed. A no-op where the C library is not glibc.

One checkpointed Gemma step (16 sequences × 128 tokens, steady state) peaked at 2,245–2,277 MiB with
neither, 2,023 with the first, 1,865–1,913 with both, at the same 16–18 s a step.

This module imports nothing heavy: the CLI calls it before torch is imported.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

THP_ENV = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> None:
    """Turn PyTorch's huge-page CPU allocations on unless the environment already says otherwise."""
    os.environ.setdefault(THP_ENV, "1")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only (musl has no libc.so.6 / malloc_trim)
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the system; False where that is not possible (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
