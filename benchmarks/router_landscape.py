"""The DPO loss of every fixed blend on the router's pairs, per cell: what does each kind of pair want?

    python benchmarks/router_landscape.py RUN_DIR [--beta 0.1] [--template safe-rlhf]

RUN_DIR is a finished run (its `rank/dual.jsonl` and `router/model`). For each fixed gate pair (g_s, g_h)
of the 5×5 grid, and for the trained router itself, it prints the mean DPO loss −log σ(β·(Δ − Δ_ref))
over each cell of D_dual — (harmful?, rejected answer safe?) — with routing off as the reference, as the
router stage trains. A router that separates prompt kinds can reach, per cell, the loss of the blend
best for that cell; if the trained router does so while its gates do not differ between harmful and
benign prompts, it has found another way (per-token gates that see the answer being scored) to fit its
pairs. Nothing here asserts a number (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from midpo_cli.data.tokenize import collate_pairs
from midpo_cli.engine.preference import concatenated_logps
from midpo_cli.modeling.loading import load_tokenizer
from midpo_cli.modeling.midpo import load_midpo
from midpo_cli.stages.kit.inputs import encoded_pairs
from midpo_cli.stages.router import prompt_kwargs

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def margins(model, feats, pad_id: int, mode, batch: int = 64) -> torch.Tensor:
    """log π(chosen) − log π(rejected) per pair: routing off ("off"), the router (None) or fixed gates."""
    out = []
    for start in range(0, len(feats), batch):
        b = collate_pairs(feats[start:start + batch], pad_id)
        if mode == "off":
            ctx = model.routing_disabled()
        elif mode is None:
            ctx = torch.no_grad()
        else:
            ctx = model.fixed_gates(*mode)
        with torch.no_grad(), ctx:
            chosen, rejected = concatenated_logps(model, b, **prompt_kwargs(model, b))
        out.append(chosen - rejected)
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--template", default="safe-rlhf")
    args = ap.parse_args()
    folder = args.run_dir / "router" / "model"
    model, _ = load_midpo(folder)
    model.eval()
    tokenizer = load_tokenizer(str(folder))
    dual_path = args.run_dir / "rank" / "dual.jsonl"
    _, feats = encoded_pairs(str(dual_path), "router", tokenizer, args.template, 128, stage="router")
    dual = [json.loads(line) for line in dual_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    cells = [(bool(dual[f["pair_index"]]["is_harmful"]), bool(dual[f["pair_index"]]["is_rejected_safe"]))
             for f in feats]
    names = {(False, True): "benign", (True, False): "harmful, unsafe rejected",
             (True, True): "harmful, safe rejected"}
    present = [c for c in names if c in cells]
    ref = margins(model, feats, tokenizer.pad_token_id, "off")
    print(f"{len(feats)} pairs: " + ", ".join(f"{names[c]} {cells.count(c)}" for c in present))
    print("| gates (g_s, g_h) | " + " | ".join(names[c] for c in present) + " |")
    print("|---|" + "---|" * len(present))
    for gates in [(a, b) for a in LEVELS for b in LEVELS] + [None]:
        loss = -torch.nn.functional.logsigmoid(args.beta * (margins(model, feats, tokenizer.pad_token_id, gates) - ref))
        mask = lambda c: torch.tensor([k == c for k in cells])  # noqa: E731
        label = "the trained router" if gates is None else f"({gates[0]:g}, {gates[1]:g})"
        print(f"| {label} | " + " | ".join(f"{loss[mask(c)].mean():.3f}" for c in present) + " |")


if __name__ == "__main__":
    main()
