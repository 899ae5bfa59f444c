"""The report's headline figure: the safety/helpfulness trade-off of every model on each reported prompt set.

One panel per prompt set of `summary["routing"]`: the fixed-blend grid and its frontier, the learned router, the
safety-dial curve, the blend chosen on dev and the blend best in hindsight, the oracle router, the base and the two
experts, and any other model the answers hold (baselines). Axes are the set's judge's rates (harmful
prompts answered safely → right, benign prompts answered helpfully → up; the title names the judge, docs/judges.md)
where a judge can judge the set, else mean cost (axis reversed, so safer is to the right) and mean reward: in
both, up and to the right is better. Every element is in the legend and labelled on the plot where its label
fits (`figure_labels`); none overlaps another.
Without a router (no routing entries) the figure is the models' mean cost vs mean reward, with 95 % CIs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midpo_cli.evaluation.figure_labels import Label, marker_boxes, place
from midpo_cli.evaluation.figures import pyplot
from midpo_cli.evaluation.formatting import gate_pair

AXES = {  # x key, y key, x title, y title, x reversed
    "judge": ("harmful_safe", "benign_helpful", "harmful prompts answered safely (share) →",
              "benign prompts answered helpfully (share) →", False),
    "scores": ("cost", "reward", "mean cost (axis reversed: safer →)", "mean reward (more helpful →)", True),
}
NAMED = {  # model → (legend text, marker, colour, marker size in points)
    "base": ("base policy (no adapter)", "P", "black", 11),
    "safety_expert": ("safety expert", "s", "tab:brown", 10),
    "helpfulness_expert": ("helpfulness expert", "^", "tab:blue", 11),
}
OTHER_MARKERS = "vXhp<>d"
OTHER_COLOURS = ("tab:olive", "tab:cyan", "tab:pink", "tab:gray", "darkgoldenrod", "teal", "slateblue")
LABEL = {"fontsize": 8.5, "bbox": {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75}}
CAPTION = {
    "judge": "Up and to the right is better. Look at the red star (the learned router) against the grey fixed "
             "blends and their frontier: above the frontier it does something no fixed mix of the two experts "
             "does; on or below it a fixed blend does as well. The green diamond (oracle: safety expert on harmful "
             "prompts, helpfulness expert on benign ones) is what routing could reach.",
    "models": "Mean cost (lower is safer) against mean reward (higher is more helpful) per model, with 95 % "
              "bootstrap intervals; look for the model furthest up and to the left.",
}


def panels(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], str]]:
    """(prompt set, routing entry, axes kind) for each reported set with something to draw."""
    out = []
    for name, entry in (summary.get("routing") or {}).items():
        kind = "judge" if entry.get("metric") else "scores"
        xk, yk = AXES[kind][:2]
        if entry["router"].get(xk) is not None and any(g.get(xk) is not None for g in entry.get("grid") or []):
            out.append((name, entry, kind))
    return out


def tradeoff_figure(summary: Mapping[str, Any]):
    """The headline figure (module docstring) as a matplotlib Figure, labels placed; None with nothing to draw."""
    rows = panels(summary)
    if not rows:
        return _models_figure(summary)
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10.5, 5.6 * len(rows)), dpi=110, squeeze=False)
    drawn = [_draw_panel(ax, name, entry, kind, summary) for ax, (name, entry, kind) in zip(axes[:, 0], rows,
                                                                                           strict=True)]
    fig.tight_layout()
    fig.set_layout_engine("none")  # the labels are placed in display pixels: the layout must not move after
    fig.canvas.draw()
    for ax, labels in zip(axes[:, 0], drawn, strict=True):
        place(ax, labels, marker_boxes(ax, labels))
    return fig


def caption(summary: Mapping[str, Any]) -> str:
    """The sentence under the headline figure: what to look at."""
    return CAPTION["judge"] if panels(summary) else CAPTION["models"]


def plot_tradeoff(summary: Mapping[str, Any], path: Path) -> Path | None:
    fig = tradeoff_figure(summary)
    if fig is None:
        return None
    fig.savefig(path)
    pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------------------------- one panel


def _draw_panel(ax, name: str, entry: Mapping[str, Any], kind: str, summary: Mapping[str, Any]):
    """Draw one prompt set's elements; return their labels (placed once the figure's layout is final)."""
    xk, yk, xt, yt, reverse = AXES[kind]
    labels: list[Label] = []

    def has(p: Mapping[str, Any] | None) -> bool:
        return bool(p) and p.get(xk) is not None and p.get(yk) is not None

    grid = [g for g in entry.get("grid") or [] if has(g)]
    ax.scatter([g[xk] for g in grid], [g[yk] for g in grid], s=30, color="0.62", zorder=2,
               label="fixed blends of the two experts (label: g_s,g_h)")
    for (x, y), names in _coincident(grid, xk, yk).items():
        more = f" +{len(names) - 1}" if len(names) > 1 else ""
        labels.append(Label(x, y, f"{names[0]}{more}", 0, 6.5, {**LABEL, "fontsize": 7.5, "color": "0.35"}))
    front = _frontier([(g[xk], g[yk]) for g in grid], reverse)
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "-", color="0.55", lw=1, zorder=1, label="fixed-blend frontier")
    dial = [d for d in entry.get("dial") or [] if has(d)]
    if len(dial) > 1:
        ax.plot([d[xk] for d in dial], [d[yk] for d in dial], "-o", color="tab:purple", ms=4, lw=1.2, zorder=3,
                label="safety dial (label: bias B)")
        spots: dict[tuple[float, float], list[str]] = {}  # a flat dial puts many settings on one point
        for d in dial:
            spots.setdefault((round(d[xk], 9), round(d[yk], 9)), []).append(f"{d['bias']:+g}")
        style = {**LABEL, "fontsize": 7.5, "color": "tab:purple"}
        labels += [Label(x, y, "B=" + "/".join(b), 5 if len(b) > 1 else 1, 5, style)  # a flat dial is news
                   for (x, y), b in spots.items() if b != ["+0"]]
    labels += _rings(ax, entry, grid, xk, yk)
    oracle = entry.get("oracle")
    if has(oracle):
        ax.scatter([oracle[xk]], [oracle[yk]], marker="D", s=70, color="tab:green", zorder=5,
                   label="oracle router (expert by prompt kind)")
        labels.append(Label(oracle[xk], oracle[yk], "oracle", 8, 9, {**LABEL, "color": "darkgreen"}))
    labels += _models(ax, entry, summary, name, kind, has)
    r = entry["router"]
    ax.scatter([r[xk]], [r[yk]], marker="*", s=320, color="tab:red", edgecolors="darkred", zorder=6,
               label=f"learned router ({r['model']})")
    labels.append(Label(r[xk], r[yk], "router", 10, 18, {**LABEL, "color": "darkred", "fontweight": "bold"}))
    _frame(ax, [(p.x, p.y) for p in labels], xt, yt, reverse, kind)
    judge = f" (judge: {entry['judge']})" if kind == "judge" and entry.get("judge") else ""
    ax.set_title(f"{name}: safety vs helpfulness{judge}", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8.5, framealpha=0.9, borderaxespad=0,
              markerscale=0.75)
    return labels


def _rings(ax, entry: Mapping[str, Any], grid: Sequence[Mapping[str, Any]], xk: str, yk: str) -> list[Label]:
    """Hollow rings around the dev-chosen blend and the blend best in hindsight (one label when they are one)."""
    by_model = {g["model"]: g for g in grid}
    best, hind = entry.get("best_fixed") or {}, entry.get("best_in_sample") or {}
    out = []
    dev = by_model.get(best.get("model"))
    where = "chosen on this set (in-sample)" if best.get("in_sample") else "chosen on dev"
    if dev is not None:
        ax.scatter([dev[xk]], [dev[yk]], s=260, facecolors="none", edgecolors="tab:blue", lw=1.6, zorder=4,
                   label=f"best fixed blend, {where}")
    h = by_model.get(hind.get("model"))
    if h is not None:
        ax.scatter([h[xk]], [h[yk]], marker="s", s=200, facecolors="none", edgecolors="tab:orange", lw=1.6,
                   zorder=4, label="best fixed blend on this set, in hindsight")
    if dev is not None and h is not None and dev is h:
        return [Label(dev[xk], dev[yk], f"dev-chosen = best in hindsight ({gate_pair(dev['gates'])})", 7, 16, LABEL)]
    if dev is not None:
        out.append(Label(dev[xk], dev[yk], f"dev-chosen ({gate_pair(dev['gates'])})", 7, 16,
                         {**LABEL, "color": "navy"}))
    if h is not None:
        out.append(Label(h[xk], h[yk], f"best in hindsight ({gate_pair(h['gates'])})", 6, 15,
                         {**LABEL, "color": "saddlebrown"}))
    return out


def _models(ax, entry, summary, prompt_set: str, kind: str, has) -> list[Label]:
    """The base, the experts (the grid's corners when they were not generated by name) and every other model."""
    xk, yk = AXES[kind][:2]
    models = {m["model"]: m for m in entry.get("models") or [] if has(m)}
    corners = {(0.0, 0.0): "base", (1.0, 0.0): "safety_expert", (0.0, 1.0): "helpfulness_expert"}
    for g in entry.get("grid") or []:
        name = corners.get(tuple(g["gates"]))
        if name and name not in models and has(g):
            models[name] = g
    labels, others = [], 0
    for name, point in models.items():
        if name in NAMED:
            text, marker, colour, size = NAMED[name]
        else:
            text, marker = name, OTHER_MARKERS[others % len(OTHER_MARKERS)]
            colour, size, others = OTHER_COLOURS[others % len(OTHER_COLOURS)], 10, others + 1
        err = _errors(summary, name, prompt_set, point, kind)
        ax.errorbar([point[xk]], [point[yk]], **err, fmt=marker, color=colour, ms=size * 0.8, mec="white", mew=0.6,
                    capsize=2, lw=0.9, zorder=5, label=text)
        short = NAMED[name][0].split(" (")[0] if name in NAMED else name
        labels.append(Label(point[xk], point[yk], short, 5, size, {**LABEL, "color": colour}))
    return labels


def _errors(summary, model: str, prompt_set: str, point, kind: str) -> dict[str, Any]:
    """95 % CI bars of a model's mean cost and reward (score axes only; the judge's rates have none)."""
    if kind != "scores":
        return {}
    group = next((g for g in summary.get("groups") or [] if g["model"] == model and g["prompt_set"] == prompt_set),
                 None)
    out = {}
    for key, arg in (("cost", "xerr"), ("reward", "yerr")):
        stat = ((group or {}).get("metrics") or {}).get(key) or {}
        if stat.get("lo") is not None:
            out[arg] = [[max(point[key] - stat["lo"], 0)], [max(stat["hi"] - point[key], 0)]]
    return out


def _frame(ax, points: Sequence[tuple[float, float]], xt: str, yt: str, reverse: bool, kind: str) -> None:
    """Limits with room for labels around every point and error bar, titles, grid; cost axes reversed (safer to
    the right)."""
    data = ax.dataLim  # everything drawn so far, error bars included
    drawn = [(data.x0, data.y0), (data.x1, data.y1)] if all(map(math.isfinite, data.bounds)) else []
    xs, ys = [p[0] for p in [*points, *drawn]], [p[1] for p in [*points, *drawn]]
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        lo, hi = min(values), max(values)
        span = max(hi - lo, 0.2 if kind == "judge" else 1e-6 + 0.1 * max(abs(lo), abs(hi), 1.0))
        pad = 0.18 * span
        setter(lo - pad, hi + pad)
    if reverse:
        ax.invert_xaxis()
    ax.set_xlabel(xt, fontsize=10)
    ax.set_ylabel(yt, fontsize=10)
    ax.grid(alpha=0.3)


def _coincident(grid: Sequence[Mapping[str, Any]], xk: str, yk: str) -> dict[tuple[float, float], list[str]]:
    """Blends at the same point share one label (`g_s,g_h +k`): the toy judge's rates repeat often."""
    out: dict[tuple[float, float], list[str]] = {}
    for g in grid:
        out.setdefault((round(g[xk], 9), round(g[yk], 9)), []).append(gate_pair(g["gates"]))
    return out


def _frontier(points: Sequence[tuple[float, float]], reverse: bool) -> list[tuple[float, float]]:
    """The points no other beats on both axes (`summary.pareto_front`; x better when larger, or smaller when
    `reverse`), sorted by x."""
    from midpo_cli.evaluation.summary import pareto_front

    sign = 1 if reverse else -1  # pareto_front wants "lower x is better"
    return sorted({points[i] for i in pareto_front([(sign * x, y) for x, y in points])})


# ----------------------------------------------------------------------------------------- without a router


def _models_figure(summary: Mapping[str, Any]):
    """Mean cost vs mean reward per (model, prompt set) with 95 % CIs, the models labelled; None without both."""
    pts = [(g, g["metrics"].get("cost") or {}, g["metrics"].get("reward") or {}) for g in summary["groups"]]
    pts = [(g, c, r) for g, c, r in pts if c.get("mean") is not None and r.get("mean") is not None]
    if not pts:
        return None
    plt = pyplot()
    sets = list(dict.fromkeys(g["prompt_set"] for g, _, _ in pts))
    models = list(dict.fromkeys(g["model"] for g, _, _ in pts))
    colours, markers = plt.get_cmap("tab10"), "osD^vP*X"
    fig, ax = plt.subplots(figsize=(10.5, 5.8), dpi=110)
    labels = []
    for g, c, r in pts:
        x, y = c["mean"], r["mean"]
        colour = colours(models.index(g["model"]) % 10)
        err = {k: [[max(v - s["lo"], 0)], [max(s["hi"] - v, 0)]]
               for k, v, s in (("xerr", x, c), ("yerr", y, r)) if s.get("lo") is not None}
        ax.errorbar([x], [y], **err, fmt=markers[sets.index(g["prompt_set"]) % len(markers)], color=colour,
                    capsize=3, ms=8, alpha=0.9, zorder=3)
        text = g["model"] if len(sets) == 1 else f"{g['model']} · {g['prompt_set'].rsplit('/', 1)[-1]}"
        labels.append(Label(x, y, text, 1, 9, {**LABEL, "color": colour}))
    for i, m in enumerate(models):
        ax.plot([], [], marker="o", ls="", color=colours(i % 10), label=m)
    if len(sets) > 1:
        for i, s in enumerate(sets):
            ax.plot([], [], marker=markers[i % len(markers)], ls="", color="0.3", label=f"prompt set {s}")
    _frame(ax, [(p.x, p.y) for p in labels], "mean cost (lower is safer, < 0 = judged safe)",
           "mean reward (higher is more helpful)", False, "scores")
    ax.axvline(0, color="0.8", lw=1, zorder=0)
    ax.set_title("Safety vs helpfulness per model (95% bootstrap CI); best is top-left", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8.5, framealpha=0.9, borderaxespad=0)
    fig.tight_layout()
    fig.set_layout_engine("none")
    fig.canvas.draw()
    place(ax, labels, marker_boxes(ax, labels))
    return fig
