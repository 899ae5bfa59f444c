"""Keep a CPU run's resident memory close to what its tensors hold (docs/design.md §6, "Host memory").

On CPU, PyTorch's tensors come from glibc's malloc. A training step allocates and frees the same large
activations layer after layer, and glibc keeps much of what is freed, fragmented, instead of returning it
to the system: traced per decoder layer on Gemma 3 270M with activation checkpointing, the resident set
grew 28 MiB a layer in the forward while live tensors grew 5 MiB (the checkpointed layer inputs), and the
next phase started on top of that slack. `release_freed_memory` hands the free pages back (glibc's
`malloc_trim(0)`): after the margin pass and after the reference pass, and after every training step
when `activation_checkpointing` is on — the user's choice of memory over time, since the returned pages
are faulted back in by the next step (free on Gemma's 10 s steps; trimming every step of a 20 M model
without checkpointing measured ~14 s slower of 75).

PyTorch's `THP_MEM_ALLOC_ENABLE=1` (huge pages for large tensors) lowered a Gemma step's peak further but
made the 20 M model slower, so midpo leaves it to the user (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


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
