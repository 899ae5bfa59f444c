"""Subnormal floats on CPU: one AdamW step on LoRA-shaped fp32 tensors whose gradients have underflowed to
~1e-39 (a saturated DPO loss), with and without `torch.set_flush_denormal(True)` (midpo_cli/engine/loop.py
turns it on for CPU training). Side by side in one run; prints the ratio.

    OMP_NUM_THREADS=1 python benchmarks/denormals.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

import torch


def step_time(flush: bool, repeat: int, scale: float) -> float:
    torch.set_flush_denormal(flush)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(640, 16, generator=g) * 0.02) for _ in range(36)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    opt.step()  # moments exist
    started = time.perf_counter()
    for _ in range(repeat):
        opt.step()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    normal = step_time(False, args.repeat, 1e-3)
    sub_off = step_time(False, args.repeat, 1e-39)
    sub_on = step_time(True, args.repeat, 1e-39)
    torch.set_flush_denormal(False)
    print(f"AdamW step, normal gradients:             {normal * 1e3:8.2f} ms")
    print(f"AdamW step, subnormal gradients:          {sub_off * 1e3:8.2f} ms  ({sub_off / normal:.1f}× normal)")
    print(f"AdamW step, subnormal, flush_denormal on: {sub_on * 1e3:8.2f} ms  ({sub_on / normal:.1f}× normal)")


if __name__ == "__main__":
    main()
