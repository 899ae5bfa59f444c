"""A tiny model and synthetic data for the engine tests (imported by tests and by train_tiny.py)."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """Linear → LayerNorm → dropout → Linear: has 2-D and 1-D params and uses the torch RNG (dropout)."""

    def __init__(self, d_in: int = 8, d_hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d_hidden)
        self.norm = nn.LayerNorm(d_hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.norm(self.inp(x))))).squeeze(-1)


def make_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def make_data(n: int = 64, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, generator=g)
    y = x @ w + 0.1 * torch.randn(n, generator=g)
    lengths = torch.randint(1, 5, (n,), generator=g)
    return [{"x": x[i], "y": y[i], "attention_mask": (torch.arange(4) < lengths[i]).long(), "row": i}
            for i in range(n)]


def collate(rows: list[dict]) -> dict:
    return {"x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows]),
            "attention_mask": torch.stack([r["attention_mask"] for r in rows]),
            "row": torch.tensor([r["row"] for r in rows])}


def loss_fn(model: nn.Module, batch: dict):
    pred = model(batch["x"])
    loss = (pred - batch["y"]).pow(2).mean()
    return loss, {"mae": (pred - batch["y"]).abs().mean().detach()}
