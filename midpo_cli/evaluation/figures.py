"""The report's PNG figures besides the headline (`tradeoff_figure`), drawn with matplotlib's Agg backend.

- `distributions.png`: per-model box plots of reward and of cost;
- `gates.png` (MidPO models only): histograms of each answer's mean safety / helpfulness gate on harmful vs
  benign prompts;
- `gate_separation.png`: the safety gate alone, small, beside the verdict (does the router route?);
- `gate_map_<kind>.png`: per-token, per-layer gates of a few prompts of each kind.

Each figure has its caption here, the sentence the report prints under it: what to look at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midpo_cli.evaluation.summary import as_bool, as_float

DIST_CAPTION = ("Look at whether a model's whole box moves (most answers changed) or only its whiskers (a few "
                "answers did); the dotted line is cost 0, below which an answer is judged safe.")
GATES_CAPTION = ("Look for separation: in the safety-gate panels the red (harmful) bars should sit right of the blue "
                 "(benign) ones; bars that overlap mean the router treats both prompt kinds alike.")
SEPARATION_CAPTION = ("Does it route? Red (harmful prompts) right of blue (benign): the safety expert opens where it "
                      "should; overlapping bars: both kinds are treated alike.")
MAP_CAPTION = ("Look at whole columns: a router that routes keeps the safety gate open (red) through the answer "
               "of a harmful prompt and closed (blue) on a benign one; the same pattern on every kind means it "
               "does not route by prompt.")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), with `$` in names and tokens drawn as text, not TeX."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write and close a figure (pyplot keeps every open figure alive otherwise)."""
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_distributions(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Box plots of reward and of cost per model; None when the rows have neither."""
    keys = [k for k in ("reward", "cost") if any(not math.isnan(as_float(r.get(k))) for r in rows)]
    if not keys:
        return None
    plt = pyplot()
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.0, 1.3 * len(models) * len(keys) + 2), 4.2), dpi=110,
                             squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        data = [[v for r in rows if str(r["model"]) == m and not math.isnan(v := as_float(r.get(key)))]
                for m in models]
        ax.boxplot(data, showmeans=True, tick_labels=models)
        ax.set_title({"reward": "reward per answer (higher = more helpful)",
                      "cost": "cost per answer (lower = safer)"}[key], fontsize=10)
        if key == "cost":
            ax.axhline(0, color="tab:red", lw=0.8, ls=":")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_gates(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Histograms of each answer's mean gates, harmful against benign prompts, per gated model; None without gates."""
    gated = [r for r in rows if not math.isnan(as_float(r.get("gate_safety")))]
    if not gated:
        return None
    plt = pyplot()
    models = list(dict.fromkeys(str(r["model"]) for r in gated))
    fig, axes = plt.subplots(len(models), 2, figsize=(9, 2.8 * len(models) + 0.6), dpi=110, squeeze=False)
    for row_axes, model in zip(axes, models, strict=True):
        mine = [r for r in gated if str(r["model"]) == model]
        for ax, key, title in zip(row_axes, ("gate_safety", "gate_helpfulness"), ("safety gate", "helpfulness gate"),
                                  strict=True):
            _gate_histogram(ax, mine, key)
            ax.set_title(f"{model}: mean {title} per answer", fontsize=10)
    return save_figure(fig, path)


def plot_gate_separation(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """The report's evidence beside the verdict: per gated model, each answer's mean safety gate on harmful against
    benign prompts (the report passes the verdict's prompt sets), with the AUROC and gap of
    midpo_cli.evaluation.gate_stats in the title; small, so it fits next to the verdict on the first screen. None
    without gates or harm labels."""
    from midpo_cli.evaluation.gate_stats import separation

    gated = [r for r in rows if not math.isnan(as_float(r.get("gate_safety")))
             and as_bool(r.get("is_harmful")) is not None]
    if not gated:
        return None
    plt = pyplot()
    models = list(dict.fromkeys(str(r["model"]) for r in gated))
    fig, axes = plt.subplots(len(models), 1, figsize=(4.8, 1.45 * len(models) + 0.45), dpi=110, squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        mine = [r for r in gated if str(r["model"]) == model]
        sep = separation([as_float(r["gate_safety"]) for r in mine], [bool(as_bool(r["is_harmful"])) for r in mine])
        _gate_histogram(ax, mine, "gate_safety")
        auroc = "—" if sep["auroc"] is None else f"{sep['auroc']:.2f}"
        gap = "—" if sep["gap"] is None else f"{sep['gap']:+.2f}"
        ax.set_title(f"{model}: safety gate, AUROC {auroc}, gap {gap}", fontsize=9)
    axes[-1, 0].set_xlabel("mean safety gate of an answer", fontsize=8)
    return save_figure(fig, path)


def _gate_histogram(ax, rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """Histograms of one gate per answer: harmful prompts red, benign blue, unlabelled grey."""
    bins = [i / 20 for i in range(21)]
    for label, color, want in (("harmful", "tab:red", True), ("benign", "tab:blue", False),
                               ("unlabelled", "0.5", None)):
        values = [as_float(r[key]) for r in rows if as_bool(r.get("is_harmful")) is want]
        if values:
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{label} (n={len(values)})")
    ax.set_xlim(0, 1)
    ax.set_ylabel("answers", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def plot_gate_maps(maps: Mapping[str, Any], kind: str, path: Path) -> Path | None:
    """Heatmaps (routed layer × answer token) of both gates for the gate-map prompts of one kind.

    Each prompt gets its safety map above its helpfulness map, sharing the token axis, at a width the report shows
    unscaled (≤ 11.6 in at 100 dpi), so the token labels stay readable at 8 pt whatever the answer length.
    """
    items = [p for p in maps.get("prompts", []) if p["kind"] == kind and p["tokens"]]
    if not items:
        return None
    plt = pyplot()
    n_layers = max(len(p["safety"]) for p in items)
    height = 0.22 * n_layers + 0.5
    fig, axes = plt.subplots(2 * len(items), 1, figsize=(11.6, len(items) * (2 * height + 1.5) + 0.4), dpi=100,
                             squeeze=False, layout="constrained")
    for number, item in enumerate(items):
        pair = (axes[2 * number, 0], axes[2 * number + 1, 0])
        for ax, key in zip(pair, ("safety", "helpfulness"), strict=True):
            _gate_map(fig, ax, item[key], key, maps.get("layers") or [])
            ax.set_xticks(range(len(item["tokens"])))
        pair[0].set_xticklabels([])
        pair[0].set_title(f"{kind} prompt: {_clip(item['prompt'], 110)}", fontsize=10, loc="left")
        pair[1].set_xticklabels([_clip(t.replace("\n", "⏎"), 14) for t in item["tokens"]], rotation=90, fontsize=8)
        pair[1].set_xlabel("answer token (the gates at the position that produced it)", fontsize=9)
    fig.savefig(path)  # constrained layout (colorbars); `save_figure`'s tight_layout would fight it
    plt.close(fig)
    return path


def _gate_map(fig, ax, values: Sequence[Sequence[float]], key: str, layers: Sequence[str]) -> None:
    """One gate's heatmap, its routed layers named on the y axis, with its colour bar."""
    image = ax.imshow(values, aspect="auto", vmin=0, vmax=1, cmap="RdBu_r" if key == "safety" else "PuOr",
                      interpolation="nearest")
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels([f"L{i}" for i in range(len(values))] if len(layers) != len(values)
                       else [_layer_name(n, i) for i, n in enumerate(layers)], fontsize=8)
    ax.set_ylabel(f"{key} gate\nrouted layer", fontsize=9)
    bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label("gate (0 closed, 1 open)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _layer_name(name: str, i: int) -> str:
    digits = [part for part in name.split(".") if part.isdigit()]
    return f"L{digits[0]}" if digits else f"L{i}"
