"""Paired percentile bootstrap: the resampled prompt indices and the statistics computed over them.

One matrix of resampled prompt indices per prompt set (`bootstrap_indices`, or `cluster_indices`
where prompts come in categories that are not independent) is used for every model compared on
that set, so the interval of a difference describes the same resampled prompts on both sides
(docs/design.md §2 "Score"). The balanced score (½ mean over harmful + ½ mean over benign
prompts) is the toy world's score; NaN outcomes are left out of each resample. Pure numpy; the
summary and the routing table (midpo_cli.evaluation.headroom) use it.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_indices(n: int, resamples: int, seed: int, key: str = "") -> np.ndarray:
    """(resamples, n) indices drawn with replacement; the same (seed, key) always gives the same draw."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return rng.integers(0, n, size=(resamples, n)) if n and resamples else np.zeros((0, n), dtype=np.int64)


def balanced_score(outcomes: np.ndarray, harmful: np.ndarray) -> float | None:
    """½ (mean outcome on harmful + mean on benign); NaN outcomes left out; None if a side is empty."""
    o, h = np.asarray(outcomes, dtype=np.float64), np.asarray(harmful, dtype=bool)
    sides = [o[h & ~np.isnan(o)], o[~h & ~np.isnan(o)]]
    if any(side.size == 0 for side in sides):
        return None
    return float((sides[0].mean() + sides[1].mean()) / 2)


def boot_balanced(outcomes: np.ndarray, harmful: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The balanced score on each resample (rows of idx); NaN where a resample lacks one side."""
    o = np.asarray(outcomes, dtype=np.float64)[idx]
    h = np.asarray(harmful, dtype=bool)[idx]
    present = ~np.isnan(o)
    o = np.where(present, o, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        harm = (o * (h & present)).sum(1) / (h & present).sum(1)
        benign = (o * (~h & present)).sum(1) / (~h & present).sum(1)
    return (harm + benign) / 2


def _percentiles(boot: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    boot = boot[~np.isnan(boot)]
    if not boot.size:
        return None, None
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_diff(a: np.ndarray, b: np.ndarray, harmful: np.ndarray, idx: np.ndarray,
                confidence: float = 0.95) -> dict[str, Any]:
    """Balanced score of A − of B, with a percentile CI over the same resampled prompts for both."""
    sa, sb = balanced_score(a, harmful), balanced_score(b, harmful)
    mean = None if sa is None or sb is None else sa - sb
    lo = hi = None
    if mean is not None and idx.shape[0]:
        lo, hi = _percentiles(boot_balanced(a, harmful, idx) - boot_balanced(b, harmful, idx), confidence)
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(len(a))}


def cluster_indices(clusters: Sequence[Any], resamples: int, seed: int, key: str = "") -> np.ndarray:
    """(resamples, m) row indices of a cluster bootstrap: each row draws as many clusters as there are, with
    replacement, and lists their members; rows are padded to one width m with the index n (callers append a
    NaN row there, which every statistic here leaves out). Same (seed, key) → same draw."""
    members: dict[Any, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    groups = list(members.values())
    n = len(clusters)
    if not groups or not resamples:
        return np.zeros((0, n), dtype=np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(("cluster:" + key).encode())])
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    rows = [np.concatenate([groups[g] for g in row]) for row in draws]
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), constant_values=n) for r in rows])


def clustered_diff(a: np.ndarray, b: np.ndarray, harmful: np.ndarray, idx: np.ndarray,
                   confidence: float = 0.95) -> dict[str, Any]:
    """`paired_diff` over a `cluster_indices` draw (its padding index points at an appended NaN outcome)."""
    pad = np.array([math.nan])
    out = paired_diff(np.concatenate([a, pad]), np.concatenate([b, pad]), np.append(harmful, False), idx, confidence)
    return {**out, "n": int(len(a))}


def mean_diff(a: np.ndarray, b: np.ndarray, idx: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """mean(A − B) over prompts where both exist, with a percentile CI over the resamples of idx."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    present = ~np.isnan(d)
    if not present.any():
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    lo = hi = None
    if idx.shape[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = _percentiles(np.nanmean(d[idx], axis=1), confidence)
    return {"mean": float(d[present].mean()), "lo": lo, "hi": hi, "n": int(present.sum())}
