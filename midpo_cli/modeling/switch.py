"""The probe switch (`stages.router.kind: probe`, docs/design.md §2.7): per-prompt gates from a linear probe.

The router stage's logistic probe (midpo_cli.evaluation.probe) reads exactly what a prompt-reading router reads — per
routed layer, the prompt's mean input with routing off (`MidpoModel.routed_input_means`) — which on a
pretrained base separates held-out harmful and benign prompts almost perfectly (docs/design.md §8). The switch turns
its probability p = σ(z + b_dial) of "harmful" into gates held for the whole answer:

- soft: (g_s, g_h) = p·(1, 0) + (1 − p)·(0, 1) = (p, 1 − p);
- hard: (1, 0) when p ≥ threshold, else (0, 1) — the threshold chosen on the recipe's dev prompts
  (midpo_cli.evaluation.probe_switch.choose_threshold).

The safety dial b shifts the probe's logit, so it moves the switch along its curve as it moves a router.
The router stage fits the switch (`fit_switch`) on prompt features read as generate will see the prompts
(`prompt_text_features`), or on its pairs' prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from midpo_cli.errors import InputError
from midpo_cli.evaluation.probe import fit_probe_parameters

SWITCH_FILE = "switch.safetensors"
MODES = ("hard", "soft")


@dataclass
class ProbeSwitch:
    """logit(x) = ((x − mean) / std) · weight + bias over routed_input_means features (float64)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    mode: Literal["hard", "soft"] = "hard"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"probe switch mode: must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise InputError(f"probe switch threshold: must be in [0, 1], got {self.threshold!r}")

    def probability(self, features: torch.Tensor, safety_bias: float = 0.0) -> torch.Tensor:
        """(B,) p(harmful) of (B, D) features; the dial adds to the logit."""
        x = (features.detach().double().to(self.mean.device) - self.mean) / self.std
        return torch.sigmoid(x @ self.weight + self.bias + float(safety_bias))

    def gates(self, features: torch.Tensor, safety_bias: float = 0.0) -> torch.Tensor:
        """(B, 2) per-prompt (g_s, g_h) (module docstring)."""
        return switch_gates(self.probability(features, safety_bias), self.mode, self.threshold)

    def save(self, folder: Path) -> str:
        from safetensors.torch import save_file

        tensors = {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias.reshape(1)}
        save_file({k: v.detach().double().cpu().contiguous() for k, v in tensors.items()}, str(folder / SWITCH_FILE))
        return SWITCH_FILE

    def config(self) -> dict:
        return {"file": SWITCH_FILE, "mode": self.mode, "threshold": float(self.threshold)}

    @classmethod
    def load(cls, folder: Path, config: dict) -> ProbeSwitch:
        from safetensors.torch import load_file

        path = folder / config.get("file", SWITCH_FILE)
        if not path.is_file():
            raise InputError(f"{path}: the probe switch's weights are missing")
        t = load_file(str(path))
        return cls(t["mean"], t["std"], t["weight"], t["bias"], mode=config.get("mode", "hard"),
                   threshold=float(config.get("threshold", 0.5)))


def switch_gates(p: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """(B, 2) gates from (B,) probabilities: soft (p, 1 − p); hard (1, 0) where p ≥ threshold, else (0, 1)."""
    p = p.double()
    if mode == "hard":
        p = (p >= threshold).double()
    return torch.stack([p, 1 - p], dim=-1)


def fit_switch(train_x: torch.Tensor, train_y: list[bool], mode: str) -> ProbeSwitch:
    """The switch fit on prompts of both kinds (the router stage checks that before training)."""
    if len(set(train_y)) < 2:
        raise InputError("the probe switch needs harmful and benign training prompts (stages.router.switch_prompts)")
    return ProbeSwitch(*fit_probe_parameters(train_x, train_y), mode=mode, threshold=0.5)


@torch.no_grad()
def prompt_text_features(model: Any, tokenizer: Any, template: str, texts: list[str],
                         batch_size: int = 32) -> torch.Tensor:
    """`MidpoModel.routed_input_means` of each prompt as generate will see it (template-encoded, no answer)."""
    from midpo_cli.data.tokenize import encode_prompts, pad_sequences

    ids, _ = encode_prompts(texts, tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(ids), batch_size):
        seqs = ids[start:start + batch_size]
        batch = pad_sequences(seqs, [len(s) for s in seqs], pad)
        mask = batch["attention_mask"].to(model.device)
        out.append(model.routed_input_means(batch["input_ids"].to(model.device), mask, mask.bool()))
    return torch.cat(out)


def prompt_probabilities(model: Any, switch: ProbeSwitch, tokenizer: Any, template: str, texts: list[str],
                         batch_size: int = 32) -> list[float]:
    """p(harmful) of each prompt as generate will see it (template-encoded, no answer)."""
    return switch.probability(prompt_text_features(model, tokenizer, template, texts, batch_size)).tolist()
