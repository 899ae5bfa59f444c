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

from midpo_cli import console
from midpo_cli.engine import dist
from midpo_cli.engine.answer_logps import causal_lm, takes_logits_to_keep
from midpo_cli.errors import ArtifactCheckError
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
    """Raise ArtifactCheckError on an artifact that cannot be what training produced; returns the tensor count."""
    where = where or folder
    files = read_tensors(folder)
    tensors = {f"{name}:{key}": t for name, content in files.items() for key, t in content.items()}
    if not tensors:
        raise ArtifactCheckError(f"{where}: the saved artifact holds no weights")
    empty = [k for k, t in tensors.items() if t.numel() == 0]
    if empty:
        raise ArtifactCheckError(f"{where}: {len(empty)} saved tensor(s) are empty (e.g. {empty[0]}); "
                            "under ZeRO-3 the weights must be gathered before saving")
    if all(not bool(t.any()) for t in tensors.values()):
        raise ArtifactCheckError(f"{where}: every saved tensor is all zeros")
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    if lora_b and all(not bool(t.any()) for t in lora_b):
        raise ArtifactCheckError(f"{where}: every lora_B weight of the adapter is zero, so the adapter does nothing "
                            "(not trained, or saved from ZeRO-3 shards without gathering)")
    return len(tensors)


# Max |diff| between a reloaded artifact's probe output and the in-memory model's, in units of the compute
# dtype's eps at the outputs' scale (`probe_tolerance`). ROUND_TRIP: the same function from the same stored
# values; FOLD: `export --merged`, whose weights W + s·g·B A are rounded once more in the dtype (measured: 4.3 eps
# on the tiny model and 9.0 on a Gemma-3-270M-shaped one in fp32, at most 2.1 in bf16; benchmarks/RESULTS.md).
ROUND_TRIP_ULPS = 8.0
FOLD_ULPS = 64.0


def compute_eps(dtype: torch.dtype) -> float:
    """The relative spacing of the numbers a model in `dtype` computes with: torch.finfo(dtype).eps (bf16 keeps
    8 significant bits: 2^-7; fp16 11: 2^-10; fp32 24: 2^-23), except that fp32 matmuls allowed to run in TF32
    (`torch.set_float32_matmul_precision("high")`) or bf16 ("medium") round like those."""
    if dtype == torch.float32:
        return {"high": 2.0**-10, "medium": 2.0**-7}.get(torch.get_float32_matmul_precision(),
                                                           torch.finfo(dtype).eps)
    return torch.finfo(dtype).eps


def model_dtype(model: nn.Module) -> torch.dtype:
    """The coarsest floating dtype among a model's parameters: the precision its outputs are computed in."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()} or {torch.float32}
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def precision_of(model: nn.Module) -> str:
    """`model_dtype` as midpo's loaders name it (fp32, bf16, fp16): reload an artifact in the dtype it ran in."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model_dtype(model), "fp32")


def probe_tolerance(dtype: torch.dtype, reference: torch.Tensor, *, ulps: float = ROUND_TRIP_ULPS) -> float:
    """How far a correct reload's probe output may be from the in-memory model's: ulps × eps(dtype) × scale.

    Why this shape: a reloaded artifact computes the same function from the same stored values, and only the
    order of rounding can differ (another kernel or memory layout, a part run in float32 as peft runs a loaded
    adapter). Each output ends a chain of operations rounded to `dtype`, so the unit of disagreement is the
    dtype's spacing at the outputs' size, eps × max(1, max|reference|). Even a whole forward computed in a 16-bit
    dtype instead of fp32 (every weight rounded as well) moves the probe by about one eps of its scale, so 8 eps
    leaves room for the rounding deeper models accumulate, while what the check is for (a weight that was not
    saved, saved from ZeRO-3 shards or under another name, an adapter that did not load) moves the outputs by a
    sizeable fraction of their scale. A fixed absolute tolerance refused every bf16 artifact
    (benchmarks/RESULTS.md, "Numbers behind the code").
    """
    scale = max(1.0, float(reference.detach().float().abs().max())) if reference.numel() else 1.0
    return ulps * compute_eps(dtype) * scale


def save_verified(
    save_fn: Callable[[Path], None],
    path: str | Path,
    *,
    load_fn: Callable[[Path], nn.Module],
    probe_fn: Callable[[nn.Module], torch.Tensor],
    reference: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    ulps: float = ROUND_TRIP_ULPS,
) -> Path:
    """Save via `save_fn(tmp)`, check the tensors, reload via `load_fn(tmp)`, compare `probe_fn(loaded)` with
    `reference` (max |diff| ≤ probe_tolerance(dtype, reference, ulps)), then rename into `path`. `dtype` is the
    one the model computes in. Rank 0 only; other ranks return at once.

    A failed check raises ArtifactCheckError and leaves `path` as it was (the temp folder is removed)."""
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
            raise ArtifactCheckError(f"{path}: reloaded artifact gives probe output of shape {tuple(got.shape)}, "
                                     f"the in-memory model {tuple(want.shape)}")
        diff = (got - want).abs().max().item() if got.numel() else 0.0
        atol = probe_tolerance(dtype, want, ulps=ulps)
        if not diff <= atol:  # also catches NaN
            scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
            name = str(dtype).removeprefix("torch.")
            raise ArtifactCheckError(
                f"{path}: reloaded artifact's probe outputs differ from the in-memory model by {diff:.3g}, more "
                f"than the {atol:.3g} that rounding in {name} allows ({ulps:g} × eps {compute_eps(dtype):.3g} × "
                f"output scale {scale:.3g}): the saved weights are not the trained ones")
        console.log(f"{path.name}: saved and checked, the reloaded probe outputs are within {diff:.3g} of the "
                    f"in-memory model's (allowed {atol:.3g} in {str(dtype).removeprefix('torch.')})")
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
    (`probe_fn`, default `forward`) for the comparison, within the rounding of the dtype `model` computes in.
    """
    model.eval()
    with torch.no_grad():
        reference = forward(model)
    return save_verified(save_fn, path, load_fn=load_fn, probe_fn=probe_fn or forward, reference=reference,
                         dtype=model_dtype(model))


def logits_on(probe: dict[str, torch.Tensor]) -> Callable[[nn.Module], torch.Tensor]:
    """A language model's probe output on `probe` (`input_ids`, `attention_mask`, ...): the last layer's hidden
    states at every position and the full-vocabulary logits at the last position, as one (B, T·H + V) tensor.

    Why not all logits: (B, T, V) grows with the vocabulary, and verification holds two of them, which made the
    save a large-vocabulary stage's memory peak (benchmarks/RESULTS.md, "Numbers behind the code"). Every weight
    below the head shows in the hidden states at every position; the head is one linear map, checked in full
    at one position. A model without `logits_to_keep` gets all
    positions' logits and keeps the last (the same check, at the old cost).
    """
    def run(model: nn.Module) -> torch.Tensor:
        lm = causal_lm(model)
        keep = {"logits_to_keep": 1} if lm is not None and takes_logits_to_keep(lm) else {}
        out = model(**probe, output_hidden_states=True, **keep)
        hidden = out.hidden_states[-1].float().flatten(1)
        return torch.cat([hidden, out.logits[:, -1:].float().flatten(1)], dim=1)

    return run
