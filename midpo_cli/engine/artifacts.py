"""Final artifacts: saved atomically, then reloaded and checked before anyone can use them.

Why reload: a save can "succeed" and still be useless — the known case is a LoRA adapter saved under
ZeRO-3, where each rank holds a 0-element shard and the adapter file ends up empty or all-zero. So
`save_verified` writes into a temp folder, refuses empty tensors, an all-zero artifact and an adapter
whose every lora_B is zero (B starts at zero: after training that means nothing was learned or saved),
reloads it, and compares logits on a probe batch with the in-memory model before renaming into place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from midpo_cli.engine import dist
from midpo_cli.engine.answer_logps import causal_lm, takes_logits_to_keep
from midpo_cli.errors import TrainingError
from midpo_cli.io import atomic_dir

TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt")


def read_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor file under `folder` → {file: {key: tensor}} (safetensors, or torch weights_only)."""
    from safetensors.torch import load_file

    files: dict[str, dict[str, torch.Tensor]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(TENSOR_SUFFIXES)):
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            loaded = loaded if isinstance(loaded, dict) else {}
            tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        files[str(path.relative_to(folder))] = tensors
    return files


def check_tensors(folder: Path, *, where: Path | None = None) -> int:
    """Raise TrainingError on an artifact that cannot be what training produced; returns the tensor count."""
    where = where or folder
    files = read_tensors(folder)
    tensors = {f"{name}:{key}": t for name, content in files.items() for key, t in content.items()}
    if not tensors:
        raise TrainingError(f"{where}: the saved artifact holds no weights")
    empty = [k for k, t in tensors.items() if t.numel() == 0]
    if empty:
        raise TrainingError(f"{where}: {len(empty)} saved tensor(s) are empty (e.g. {empty[0]}); "
                            "under ZeRO-3 the weights must be gathered before saving")
    if all(not bool(t.any()) for t in tensors.values()):
        raise TrainingError(f"{where}: every saved tensor is all zeros")
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    if lora_b and all(not bool(t.any()) for t in lora_b):
        raise TrainingError(f"{where}: every lora_B weight of the adapter is zero, so the adapter does nothing "
                            "(not trained, or saved from ZeRO-3 shards without gathering)")
    return len(tensors)


def save_verified(
    save_fn: Callable[[Path], None],
    path: str | Path,
    *,
    load_fn: Callable[[Path], nn.Module],
    probe_fn: Callable[[nn.Module], torch.Tensor],
    reference: torch.Tensor,
    atol: float = 1e-4,
) -> Path:
    """Save via `save_fn(tmp)`, check the tensors, reload via `load_fn(tmp)`, compare `probe_fn(loaded)` with
    `reference` (max |diff| ≤ atol), then rename into `path`. Rank 0 only; other ranks return at once."""
    path = Path(path)
    if not dist.is_rank0():
        return path
    with atomic_dir(path) as tmp:
        save_fn(tmp)
        check_tensors(tmp, where=path)
        loaded = load_fn(tmp)
        with torch.no_grad():
            got = probe_fn(loaded).detach().float().cpu()
        want = reference.detach().float().cpu()
        if got.shape != want.shape:
            raise TrainingError(f"{path}: reloaded artifact gives probe output of shape {tuple(got.shape)}, "
                                f"the in-memory model {tuple(want.shape)}")
        diff = (got - want).abs().max().item() if got.numel() else 0.0
        if not diff <= atol:  # also catches NaN
            raise TrainingError(f"{path}: reloaded artifact's probe logits differ from the in-memory model by "
                                f"{diff:.3g} (tolerance: max abs diff ≤ {atol:g})")
        del loaded
    return path


def save_checked(
    model: nn.Module,
    path: str | Path,
    *,
    save_fn: Callable[[Path], None],
    load_fn: Callable[[Path], nn.Module],
    forward: Callable[[nn.Module], torch.Tensor],
    probe_fn: Callable[[nn.Module], torch.Tensor] | None = None,
) -> Path:
    """`save_verified` against `model` itself: `forward(m)` gives a model's probe output (e.g. `logits_on(probe)`).

    It runs now on the in-memory model (eval mode, no grad) for the reference, and on the reloaded artifact
    (`probe_fn`, default `forward`) for the comparison.
    """
    model.eval()
    with torch.no_grad():
        reference = forward(model)
    return save_verified(save_fn, path, load_fn=load_fn, probe_fn=probe_fn or forward, reference=reference)


def logits_on(probe: dict[str, torch.Tensor]) -> Callable[[nn.Module], torch.Tensor]:
    """A language model's probe output on `probe` (`input_ids`, `attention_mask`, ...): the last layer's hidden
    states at every position and the full-vocabulary logits at the last position, as one (B, T·H + V) tensor.

    Why not all logits: (B, T, V) is 1 GB for 8 × 128 tokens of a 262k vocabulary, and verification holds
    two of them, which made the save the stage's memory peak (Gemma 3 270M expert: 4.7 GB while saving vs
    3.3 GB while training). Every weight below the head shows in the hidden states at every position; the
    head is one linear map, checked in full at one position. A model without `logits_to_keep` gets all
    positions' logits and keeps the last (the same check, at the old cost).
    """
    def run(model: nn.Module) -> torch.Tensor:
        lm = causal_lm(model)
        keep = {"logits_to_keep": 1} if lm is not None and takes_logits_to_keep(lm) else {}
        out = model(**probe, output_hidden_states=True, **keep)
        hidden = out.hidden_states[-1].float().flatten(1)
        return torch.cat([hidden, out.logits[:, -1:].float().flatten(1)], dim=1)

    return run
