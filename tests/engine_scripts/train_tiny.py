"""Engine test worker: trains the tiny model with engine.train and saves one verified artifact on rank 0.

Run directly (`python train_tiny.py --out DIR`) or under `deepspeed --num_gpus 2` / `torchrun
--nproc_per_node 2`; accepts the `--local_rank` the deepspeed launcher passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny import collate, loss_fn, make_data, make_model  # noqa: E402

from midpo_cli.engine import dist  # noqa: E402
from midpo_cli.engine.artifacts import save_verified  # noqa: E402
from midpo_cli.engine.loop import train  # noqa: E402
from midpo_cli.engine.settings import EngineSettings  # noqa: E402
from midpo_cli.errors import MidpoError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--zero", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per training step (signal tests)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
    args = parser.parse_args()

    settings = EngineSettings(max_steps=args.steps, batch_size=4, grad_accum=2, lr=1e-2, log_every=1,
                              zero_stage=args.zero, checkpoint={"every_steps": args.checkpoint_every}, seed=3)

    def slow_loss(model, batch):
        time.sleep(args.sleep)
        return loss_fn(model, batch)

    out = Path(args.out)
    try:
        result = train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=slow_loss,
                       settings=settings, out_dir=out, eval_data=make_data(10, seed=5), stage_name="tiny")
    except MidpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    model = result.model
    probe = torch.linspace(-1, 1, 24).reshape(3, 8)
    with torch.no_grad():
        reference = model(probe)

    def load(path: Path):
        fresh = make_model(seed=123)
        fresh.load_state_dict(load_file(str(path / "model.safetensors")))
        return fresh.eval()

    save_verified(lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                      str(p / "model.safetensors")),
                  out / "model", load_fn=load, probe_fn=lambda m: m(probe), reference=reference)
    if dist.is_rank0():
        (out / "result.json").write_text(json.dumps({
            "world_size": dist.world_size(), "global_step": result.global_step,
            "resumed_from_step": result.resumed_from_step, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
