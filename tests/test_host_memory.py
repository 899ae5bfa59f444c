"""midpo_cli.host_memory: the CPU allocator settings every midpo process applies (docs/design.md §6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from midpo_cli import host_memory
from midpo_cli.cli import main

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_prefer_huge_pages_keeps_the_users_choice(monkeypatch) -> None:
    monkeypatch.delenv(host_memory.THP_ENV, raising=False)
    host_memory.prefer_huge_pages()
    assert host_memory.os.environ[host_memory.THP_ENV] == "1"
    monkeypatch.setenv(host_memory.THP_ENV, "0")
    host_memory.prefer_huge_pages()
    assert host_memory.os.environ[host_memory.THP_ENV] == "0"


def test_the_cli_sets_it_before_any_command(monkeypatch) -> None:
    monkeypatch.delenv(host_memory.THP_ENV, raising=False)
    assert main(["--version"]) == 0
    assert host_memory.os.environ[host_memory.THP_ENV] == "1"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text(),
                    reason="this kernel has transparent huge pages off")
def test_the_cli_setting_reaches_pytorch() -> None:
    """Set by the CLI's entry before torch is imported, PyTorch backs large tensors with huge pages; without
    it (the control), none are."""
    probe = ("import torch; xs = [torch.ones(8 * 2**20) for _ in range(4)]; "
             "print([int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHuge')][0])")
    with_cli = int(_run("import os; os.environ.pop('THP_MEM_ALLOC_ENABLE', None); from midpo_cli.cli import main; "
                        f"main(['--version']); {probe}").split()[-1])
    control = int(_run(f"import os; os.environ.pop('THP_MEM_ALLOC_ENABLE', None); {probe}").split()[-1])
    assert control == 0
    assert with_cli >= 64 * 1024  # kB: at least half of the 128 MiB allocated


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="not glibc")
def test_release_freed_memory_returns_a_fragmented_heap() -> None:
    """Free all but the last of many small heap blocks: glibc keeps the pages (the last block pins the heap's
    top) until release_freed_memory hands them back."""
    code = """
import ctypes, resource
from midpo_cli.host_memory import release_freed_memory
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 2**20
blocks = [libc.malloc(64 * 1024) for _ in range(3000)]
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
assert release_freed_memory()
print(before, rss())
"""
    before, after = map(int, _run(code).split())
    assert before - after > 100  # MiB: of the ~187 MiB freed
