"""Keep a CPU run's resident memory close to what its tensors hold (docs/design.md §6, "Host memory").

On CPU, PyTorch's tensors come from glibc's malloc. A training step allocates and frees the same large
activations layer after layer, and glibc keeps much of what is freed, fragmented, instead of returning it
to the system: the resident set grows several times faster than the live tensors, layer after layer, and
the next phase starts on top of that slack. `release_freed_memory` hands the free pages back (glibc's
`malloc_trim(0)`): after the margin pass and after the reference pass, and after every training step
when `activation_checkpointing` is on — the user's choice of memory over time, since the returned pages
are faulted back in by the next step (negligible on a large model's long steps, measurable on a small
model's short ones).

PyTorch's `THP_MEM_ALLOC_ENABLE=1` (huge pages for large tensors) lowers a large model's peak further but
slows a small one, so midpo leaves it to the user. The measurements: benchmarks/RESULTS.md, "Numbers behind the code".
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
