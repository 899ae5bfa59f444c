"""How far to trust a judge: where two judges labelled the same answers, how often they agree beyond chance, per
prompt kind; on the toy world, each judge against the ground truth; and over-refusal, by each judge that can tell
a refusal beside the refusal detector (docs/judges.md).

Agreement is on the outcome (harmful: safe; benign: helpful and not refused, midpo_cli.evaluation.judge_labels)
over every answer of the set both judges labelled — all models, blends and dial settings, since each is an answer
a judge had to read. Cohen's κ = (p_o − p_e) / (1 − p_e), p_o the share of answers both judge alike and p_e the
share expected by chance from each judge's own rate; undefined (None) when both judges give one label to every
answer (p_e = 1). Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from midpo_cli.evaluation.judge_labels import column, reader
from midpo_cli.evaluation.labels import is_sweep_label
from midpo_cli.evaluation.summary import as_bool, as_float

KINDS = (("harmful", True), ("benign", False))


def cohen_kappa(a: Sequence[float], b: Sequence[float]) -> float | None:
    """κ of two binary labellings of the same items (module docstring); None when undefined or empty."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.size == 0:
        return None
    p_o = float((x == y).mean())
    p_e = float(x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean()))
    return None if p_e >= 1 - 1e-12 else (p_o - p_e) / (1 - p_e)


def table2x2(a: Sequence[float], b: Sequence[float]) -> dict[str, int]:
    """Counts of (a, b) = (1, 1), (1, 0), (0, 1), (0, 0)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return {"both": int((x & y).sum()), "a_only": int((x & ~y).sum()), "b_only": int((~x & y).sum()),
            "neither": int((~x & ~y).sum())}


def pair_agreement(rows: Sequence[Mapping[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    """κ, raw agreement and the 2×2 table of judges a and b, per prompt kind, on the answers both labelled."""
    read_a, read_b = reader(a), reader(b)
    out = []
    for kind, flag in KINDS:
        pairs = [(read_a(r), read_b(r)) for r in rows if as_bool(r.get("is_harmful")) is flag]
        pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
        if not pairs:
            continue
        x, y = (np.array(v) for v in zip(*pairs, strict=True))
        out.append({"kind": kind, "n": len(pairs), "kappa": cohen_kappa(x, y), "agreement": float((x == y).mean()),
                    "rate_a": float(x.mean()), "rate_b": float(y.mean()), "table": table2x2(x, y)})
    return out


def agreement(rows: Sequence[Mapping[str, Any]], judged: Mapping[str, Sequence[str]],
              reference: str | None = None) -> list[dict[str, Any]]:
    """Per prompt set, every pair of judges that both judged it (`judged`: judge → its sets, in the panel's
    order); the `reference` judge (the toy world's ground truth) comes first in its pairs and marks them."""
    names = list(judged)
    if reference in names:
        names = [reference, *[n for n in names if n != reference]]
    sets = list(dict.fromkeys(str(r["prompt_set"]) for r in rows))
    out = []
    for prompt_set in sets:
        here = [r for r in rows if str(r["prompt_set"]) == prompt_set]
        for a, b in combinations([n for n in names if prompt_set in judged[n]], 2):
            kinds = pair_agreement(here, a, b)
            if kinds:
                out.append({"prompt_set": prompt_set, "a": a, "b": b, "reference": a == reference,
                            "kinds": kinds})
    return out


def over_refusal(rows: Sequence[Mapping[str, Any]], tellers: Sequence[str]) -> list[dict[str, Any]]:
    """Per (model, prompt set), blends and dials left out: the share of benign prompts refused by the refusal
    detector and by each judge of `tellers` (the judges that can tell a refusal) that labelled them."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if as_bool(r.get("is_harmful")) is False and not is_sweep_label(str(r["model"])):
            groups.setdefault((str(r["model"]), str(r["prompt_set"])), []).append(r)
    out = []
    for (model, prompt_set), items in groups.items():
        entry: dict[str, Any] = {"model": model, "prompt_set": prompt_set, "n": len(items),
                                 "regex": _share([as_float(r.get("refusal")) for r in items]), "judges": {}}
        for judge in tellers:
            share = _share([as_float(r.get(column(judge, "refused"))) for r in items])
            if share is not None:
                entry["judges"][judge] = share
        out.append(entry)
    return out


def _share(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None
