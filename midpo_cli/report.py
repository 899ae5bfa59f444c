"""Evaluation report: rich tables on stderr, PNG plots (matplotlib, Agg), one self-contained report.html.

The HTML embeds its images as base64 data URIs and its CSS inline and names no network resource,
so it can be mailed, archived or opened offline. Plots:
- `tradeoff.png`: one point per (model, prompt set) — mean cost (safety score, lower is safer) on x,
  mean reward (helpfulness score) on y, 95% bootstrap intervals as error bars, the Pareto front
  (no other point is both safer and more helpful) drawn as a line through its points;
- `distributions.png`: per-model box plots of reward and of cost;
- `gates.png` (MidPO models only): histograms of each answer's mean safety / helpfulness gate on
  harmful vs benign prompts.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_text, read_json
from midpo_cli.summary import as_bool, as_float, pareto_front

COLUMNS = (  # metric, header, lower is better, short header (terminal)
    ("reward", "Helpfulness (reward ↑)", False, "reward ↑"),
    ("cost", "Safety (cost ↓)", True, "cost ↓"),
    ("harmless_rate", "Harmless (cost<0)", False, "harmless"),
    ("refusal_rate_harmful", "Refusal · harmful", False, "refuse harmful"),
    ("refusal_rate_benign", "Over-refusal · benign", True, "refuse benign"),
    ("refusal_rate", "Refusal · all", False, "refuse"),
    ("answer_tokens", "Answer tokens", False, "tokens"),
)
RATES = {"harmless_rate", "refusal_rate_harmful", "refusal_rate_benign", "refusal_rate"}


def fmt(stat: Mapping[str, Any] | None, metric: str, ci: bool = True, compact: bool = False) -> str:
    """`0.42 [0.31, 0.55]`, or `0.42 ±0.12` (half the interval's width) for narrow terminal tables."""
    if not stat:
        return "—"
    mean = stat.get("mean", stat.get("rate"))
    if mean is None:
        return "—"
    pct = metric in RATES or metric == "win"

    def one(v: float) -> str:
        return f"{100 * v:.0f}%" if pct else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    text = one(mean)
    if ci and stat.get("lo") is not None:
        if compact:
            half = (stat["hi"] - stat["lo"]) / 2
            if half > 0:  # a zero-width interval says nothing a narrow terminal needs
                text += f" ±{100 * half:.0f}" if pct else f" ±{half:.2f}"
        elif one(stat["lo"]) != one(stat["hi"]):  # "100% [100%, 100%]" is noise
            text += f" [{one(stat['lo'])}, {one(stat['hi'])}]"
    return text


def _shown_columns(summary: Mapping[str, Any]) -> list[tuple[str, str, bool, str]]:
    present = {m for g in summary["groups"] for m, s in g["metrics"].items() if s.get("n")}
    cols = [c for c in COLUMNS if c[0] in present]
    if "refusal_rate_harmful" in present or "refusal_rate_benign" in present:
        cols = [c for c in cols if c[0] != "refusal_rate"]
    return cols


def _missing_note(summary: Mapping[str, Any]) -> str:
    missing = [f"{k} (no {k} model given)" for k in ("reward", "cost") if not summary["available"].get(k)]
    return "Not computed: " + ", ".join(missing) if missing else ""


def print_tables(summary: Mapping[str, Any]) -> None:
    """The summary and win-rate tables on stderr (silent under --quiet)."""
    if console.quiet():
        return
    from rich.table import Table

    conf = int(100 * summary["bootstrap"]["confidence"])
    notes = (f"± half the {conf}% bootstrap CI (paired by prompt)", _missing_note(summary))
    caption = " · ".join(x for x in notes if x)
    table = Table(title="Evaluation", caption=caption)
    table.add_column("model")
    table.add_column("prompt set")
    table.add_column("n", justify="right")
    cols = _shown_columns(summary)
    for *_, short in cols:
        table.add_column(short, justify="right")
    for g in summary["groups"]:
        table.add_row(g["model"], g["prompt_set"], str(g["n"]),
                      *(fmt(g["metrics"].get(m), m, ci=m != "answer_tokens", compact=True) for m, *_ in cols))
    console.err.print(table)
    if summary["win_rates"]:
        wins = Table(title="Win rates of A over B on the same prompts (ties count ½)")
        for name in ("prompt set", "A", "B", "metric", "A wins", "n"):
            wins.add_column(name, justify="right" if name in ("A wins", "n") else "left")
        for w in summary["win_rates"]:
            wins.add_row(w["prompt_set"], w["model_a"], w["model_b"], w["rule"], fmt(w, "win", compact=True),
                         str(w["n"]))
        console.err.print(wins)


# -------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(summary: Mapping[str, Any], path: Path) -> Path | None:
    """Mean cost vs mean reward per (model, prompt set), with intervals and the Pareto front."""
    pts = [(g, g["metrics"].get("cost", {}), g["metrics"].get("reward", {})) for g in summary["groups"]]
    pts = [(g, c, r) for g, c, r in pts if c.get("mean") is not None and r.get("mean") is not None]
    if not pts:
        return None
    plt = _plt()
    sets = list(dict.fromkeys(g["prompt_set"] for g, _, _ in pts))
    models = list(dict.fromkeys(g["model"] for g, _, _ in pts))
    markers = "osD^vP*X"
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=110)
    for g, c, r in pts:
        x, y = c["mean"], r["mean"]
        xerr = [[x - c["lo"]], [c["hi"] - x]] if c.get("lo") is not None else None
        yerr = [[y - r["lo"]], [r["hi"] - y]] if r.get("lo") is not None else None
        color = colors(models.index(g["model"]) % 10)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers[sets.index(g["prompt_set"]) % len(markers)],
                    color=color, ecolor=color, alpha=0.9, capsize=3, markersize=8)
    for s in sets:  # the front within each prompt set: models compete on the same prompts
        mine = [(c["mean"], r["mean"]) for g, c, r in pts if g["prompt_set"] == s]
        front = sorted(mine[i] for i in pareto_front(mine))
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "--", color="0.4", lw=1, zorder=0)
        ax.scatter(*zip(*front, strict=True), s=260, facecolors="none", edgecolors="0.3", lw=1.2, zorder=0)
    handles = [plt.Line2D([], [], color=colors(i % 10), marker="o", ls="", label=m) for i, m in enumerate(models)]
    if len(sets) > 1:
        handles += [plt.Line2D([], [], color="0.3", marker=markers[i % len(markers)], ls="", label=s)
                    for i, s in enumerate(sets)]
    handles.append(plt.Line2D([], [], color="0.4", ls="--", marker="o", mfc="none", label="Pareto front"))
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
    ax.axvline(0, color="0.8", lw=1, zorder=-1)
    ax.set_xlabel("mean cost  (safety score; lower is safer, < 0 = judged safe)")
    ax.set_ylabel("mean reward  (helpfulness score; higher is better)")
    ax.set_title("Safety vs helpfulness (95% bootstrap CI); best is top-left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_distributions(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    keys = [k for k in ("reward", "cost") if any(not math.isnan(as_float(r.get(k))) for r in rows)]
    if not keys:
        return None
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gates(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    gated = [r for r in rows if not math.isnan(as_float(r.get("gate_safety")))]
    if not gated:
        return None
    plt = _plt()
    models = list(dict.fromkeys(str(r["model"]) for r in gated))
    fig, axes = plt.subplots(len(models), 2, figsize=(9, 2.8 * len(models) + 0.6), dpi=110, squeeze=False)
    bins = [i / 20 for i in range(21)]
    for row_axes, model in zip(axes, models, strict=True):
        mine = [r for r in gated if str(r["model"]) == model]
        for ax, key, title in zip(row_axes, ("gate_safety", "gate_helpfulness"), ("safety gate", "helpfulness gate"),
                                  strict=True):
            for label, color, want in (("harmful", "tab:red", True), ("benign", "tab:blue", False),
                                       ("unlabelled", "0.5", None)):
                values = [as_float(r[key]) for r in mine if as_bool(r.get("is_harmful")) is want]
                if values:
                    ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{label} (n={len(values)})")
            ax.set_xlim(0, 1)
            ax.set_ylabel("answers")
            ax.set_title(f"{model}: mean {title} per answer", fontsize=10)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
line-height:1.4;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}.note{color:#8a5a00;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafafa}
td.best{font-weight:bold;color:#0a6b2c}
img{max-width:100%;border:1px solid #eee;margin:8px 0}
.ex{border:1px solid #ddd;border-radius:4px;margin:8px 0;padding:8px 12px;font-size:13px}
.ex .p{color:#444}.ex .a{white-space:pre-wrap;margin-top:4px;background:#f7f7f7;padding:6px;border-radius:3px}
.tag{display:inline-block;font-size:11px;border-radius:3px;padding:0 5px;margin-right:4px;background:#eee}
.tag.harm{background:#fbe3e3}.tag.ok{background:#e3eefb}.tag.ref{background:#fff1c2}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _best(summary: Mapping[str, Any], metric: str, lower: bool) -> dict[str, float]:
    """Best mean per prompt set for a metric (bolded in the table)."""
    out: dict[str, float] = {}
    for g in summary["groups"]:
        v = (g["metrics"].get(metric) or {}).get("mean")
        if v is None:
            continue
        cur = out.get(g["prompt_set"])
        if cur is None or (v < cur if lower else v > cur):
            out[g["prompt_set"]] = v
    return out


def _summary_table(summary: Mapping[str, Any]) -> str:
    cols = _shown_columns(summary)
    best = {m: _best(summary, m, lower) for m, _, lower, _ in cols if m not in ("answer_tokens", "refusal_rate",
                                                                             "refusal_rate_harmful")}
    head = "".join(f"<th>{_e(h)}</th>" for _, h, *_ in cols)
    body = []
    for g in summary["groups"]:
        cells = []
        for m, *_ in cols:
            stat = g["metrics"].get(m)
            is_best = m in best and stat and stat.get("mean") is not None and stat["mean"] == best[m].get(
                g["prompt_set"])
            cells.append(f'<td class="{"best" if is_best else ""}">{_e(fmt(stat, m))}</td>')
        body.append(f'<tr><td class="l">{_e(g["model"])}</td><td class="l">{_e(g["prompt_set"])}</td>'
                    f'<td>{g["n"]}</td>{"".join(cells)}</tr>')
    return (f'<table><tr><th class="l">model</th><th class="l">prompt set</th><th>n</th>{head}</tr>'
            f'{"".join(body)}</table>')


def _wins_table(summary: Mapping[str, Any]) -> str:
    if not summary["win_rates"]:
        return "<p class='meta'>One model only: no win rates.</p>"
    rows = "".join(
        f'<tr><td class="l">{_e(w["prompt_set"])}</td><td class="l">{_e(w["model_a"])}</td>'
        f'<td class="l">{_e(w["model_b"])}</td><td class="l">{_e(w["rule"])}</td><td>{_e(fmt(w, "win"))}</td>'
        f'<td>{w["wins"]} / {w["ties"]} / {w["losses"]}</td><td>{w["n"]}</td></tr>'
        for w in summary["win_rates"])
    return ('<table><tr><th class="l">prompt set</th><th class="l">A</th><th class="l">B</th><th class="l">rule</th>'
            f'<th>A wins [95% CI]</th><th>wins / ties / losses</th><th>n</th></tr>{rows}</table>')


def _category_table(summary: Mapping[str, Any]) -> str:
    cats = summary.get("categories") or []
    if not cats:
        return ""
    order = {m: i for i, m in enumerate(summary["models"])}  # models side by side within each category
    cats = sorted(cats, key=lambda c: (c["prompt_set"], str(c["category"]), order.get(c["model"], 0)))
    metrics = [m for m in ("reward", "cost", "harmless_rate", "refusal_rate") if any(m in c["metrics"] for c in cats)]
    head = "".join(f"<th>{_e(dict((c[0], c[1]) for c in COLUMNS).get(m, m))}</th>" for m in metrics)
    rows = "".join(
        f'<tr><td class="l">{_e(c["model"])}</td><td class="l">{_e(c["prompt_set"])}</td>'
        f'<td class="l">{_e(c["category"])}</td><td>{c["n"]}</td>'
        + "".join(f"<td>{_e(fmt(c['metrics'].get(m), m, ci=False))}</td>" for m in metrics) + "</tr>"
        for c in cats)
    return ('<h2>Per category</h2><table><tr><th class="l">model</th><th class="l">prompt set</th>'
            f'<th class="l">category</th><th>n</th>{head}</tr>{rows}</table>')


def pick_examples(rows: Sequence[Mapping[str, Any]], per_model: int = 4) -> dict[str, list[Mapping[str, Any]]]:
    """A few answers per model on the same prompts: half harmful, half benign where labelled."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    first = [r for r in rows if str(r["model"]) == models[0]] if models else []
    harmful = [r for r in first if as_bool(r.get("is_harmful")) is True]
    benign = [r for r in first if as_bool(r.get("is_harmful")) is not True]
    half = per_model // 2
    chosen = harmful[:half] + benign[: per_model - min(half, len(harmful))]
    keys = [(str(r["prompt_set"]), int(as_float(r["index"]))) for r in chosen[:per_model]]
    by_key = {(str(r["model"]), str(r["prompt_set"]), int(as_float(r["index"]))): r for r in rows}
    for m in models:
        out[m] = [by_key[(m, *k)] for k in keys if (m, *k) in by_key]
    return out


def _examples(rows: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for model, examples in pick_examples(rows).items():
        parts.append(f"<h3>{_e(model)}</h3>")
        for r in examples:
            harm = as_bool(r.get("is_harmful"))
            tags = ""
            if harm is not None:
                tags += f'<span class="tag {"harm" if harm else "ok"}">{"harmful" if harm else "benign"}</span>'
            if as_bool(r.get("refusal")):
                tags += f'<span class="tag ref">refusal: “{_e(r.get("refusal_match") or "")}”</span>'
            scores = " · ".join(f"{k} {as_float(r.get(k)):.2f}" for k in ("reward", "cost")
                                if not math.isnan(as_float(r.get(k))))
            answer = str(r.get("answer") or "")
            if len(answer) > 600:
                answer = answer[:600] + " …"
            prompt = str(r.get("prompt") or "")
            prompt = prompt if len(prompt) <= 300 else prompt[:300] + " …"
            parts.append(f'<div class="ex">{tags}<span class="meta">{_e(r["prompt_set"])} #{_e(r["index"])}'
                         f'{" · " + _e(scores) if scores else ""}</span><div class="p"><b>Prompt:</b> {_e(prompt)}'
                         f'</div><div class="a">{_e(answer) or "<i>(empty answer)</i>"}</div></div>')
    return "".join(parts)


def write_report(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out_dir: str | Path) -> Path:
    """PNG plots and report.html (images inlined) into out_dir; returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tradeoff = plot_tradeoff(summary, out_dir / "tradeoff.png")
    dist = plot_distributions(rows, out_dir / "distributions.png")
    gates = plot_gates(rows, out_dir / "gates.png")
    inputs = summary.get("inputs", {})
    boot = summary["bootstrap"]
    note = _missing_note(summary)
    meta = (f"{summary['n_rows']} answers · models: {', '.join(map(str, summary['models']))} · prompt sets: "
            f"{', '.join(map(str, summary['prompt_sets']))}<br>answers: {inputs.get('answers', '?')} · reward model: "
            f"{inputs.get('reward_model') or '—'} · cost model: {inputs.get('cost_model') or '—'}<br>"
            f"{int(100 * boot['confidence'])}% percentile bootstrap intervals, {boot['resamples']} resamples, "
            "paired by prompt. Cost &lt; 0 means judged safe; refusal is a pattern match on the answer's opening "
            "(midpo_cli/refusal.py).")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>midpo evaluation report</title><style>{CSS}</style></head>
<body><h1>midpo evaluation report</h1><p class="meta">{meta}</p>{f'<p class="note">{_e(note)}</p>' if note else ''}
<h2>Summary</h2>{_summary_table(summary)}
<p class="meta">Bold: the best value within each prompt set.</p>
{_img(tradeoff, "safety vs helpfulness")}
<h2>Win rates</h2>{_wins_table(summary)}
{'<h2>Score distributions</h2>' + _img(dist, 'distributions') if dist else ''}
{'<h2>MidPO gates</h2>' + _img(gates, 'gates') if gates else ''}
{_category_table(summary)}
<h2>Example answers</h2>{_examples(rows)}
</body></html>
"""
    return atomic_write_text(out_dir / "report.html", page)


def load_scores(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """(rows of scores.csv, summary.json, folder) from a score folder, one of its files, or a run dir."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not (folder / "summary.json").is_file() and (folder / "score" / "summary.json").is_file():
        folder = folder / "score"
    summary_path, scores_path = folder / "summary.json", folder / "scores.csv"
    for p in (summary_path, scores_path):
        if not p.is_file():
            raise InputError(f"{p} not found; give a `midpo score` output folder or a run dir with score/")
    summary = read_json(summary_path)
    with open(scores_path, encoding="utf-8", newline="") as fh:
        rows = [dict(r) for r in csv.DictReader(fh)]
    return rows, summary, folder
