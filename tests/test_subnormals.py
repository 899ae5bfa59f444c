"""Subnormal floats are flushed in every intra-op thread, not only the caller's (midpo_cli/engine/subnormals.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# a fresh interpreter: the intra-op pool must not have started before the flush, as in a pipeline process
PROBE = """
import json, sys, torch
from midpo_cli.engine.subnormals import flush_subnormals
if sys.argv[1] == "late":
    (torch.ones(4_000_000) * 1.0).sum()  # a parallel op starts the intra-op threads first
supported = flush_subnormals()
# subnormal bits (1.47e-39), made without arithmetic: a float literal would be flushed on this thread already
x = torch.full((4_000_000,), 0x00100000, dtype=torch.int32).view(torch.float32)
y = (x * 1.0).view(torch.int32)  # split across the intra-op threads
print(json.dumps({"supported": supported, "threads": torch.get_num_threads(),
                  "subnormal_in": int(x.view(torch.int32)[0]) == 0x00100000, "zero": float((y == 0).float().mean())}))
"""


def probe(when: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, when], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "2", "PATH": ""})
    return json.loads(out.stdout)


def test_flushed_before_the_threads_start_reaches_every_thread():
    early = probe("early")
    if not early["supported"]:
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal returned False)")
    assert early["subnormal_in"] and early["zero"] == 1.0, early
    late = probe("late")  # why the pipeline sets it first: set late, the workers keep computing subnormals
    print(early, late)
    assert late["zero"] < 1.0 or late["threads"] == 1, late
