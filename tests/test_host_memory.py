"""midpo_cli.engine.host_memory: handing a CPU run's freed heap back to the system (docs/design.md §6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from midpo_cli.engine import host_memory

# Free all but the last of 3,000 64 KiB heap blocks: glibc keeps those pages (the last block pins the
# heap's top) until they are handed back. Prints the resident MiB before and after the call under test.
FRAGMENTED_HEAP = """
import ctypes, resource
from midpo_cli.engine.host_memory import release_freed_memory
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 2**20
blocks = [libc.malloc(64 * 1024) for _ in range(3000)]
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
done = release_freed_memory()
print(before, rss(), int(done))
"""


def _fragmented() -> tuple[int, int, bool]:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], check=True, capture_output=True,
                         text=True).stdout.split()
    before, after, done = map(int, out)
    return before, after, bool(done)


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="not glibc")
def test_release_freed_memory_returns_a_fragmented_heap() -> None:
    before, after, done = _fragmented()
    assert before > 150  # MiB: the ~187 MiB freed is still resident ...
    assert done and before - after > 100  # ... until it is handed back
