"""Evaluation report: rich tables on stderr, PNG plots (matplotlib, Agg), one self-contained report.html.

The HTML embeds its images as base64 data URIs and its CSS inline and names no network resource,
so it can be mailed, archived or opened offline. It opens with the computed verdict
(midpo_cli.evaluation.verdict), and a sentence under each plot says what to look at. Plots:
- `tradeoff.png`, the headline (midpo_cli.evaluation.tradeoff_figure): per reported prompt set the fixed-blend
  grid, the router, the dial curve, the oracle, the base, the experts and baselines; without a router, mean
  cost vs mean reward per model with 95% bootstrap intervals;
- `distributions.png`: per-model box plots of reward and of cost;
- `gates.png` (MidPO models only): histograms of each answer's mean safety / helpfulness gate on
  harmful vs benign prompts;
- `gate_map_<kind>.png`: per-token, per-layer gates of a few prompts of each kind.
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
from midpo_cli.evaluation.labels import is_sweep_label
from midpo_cli.evaluation.summary import as_bool, as_float
from midpo_cli.io import atomic_write_text, read_json

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


WIDTH = 80  # terminal tables are laid out to fit this many columns without wrapping a cell


def short_names(names: Sequence[str], limit: int) -> tuple[dict[str, str], list[str]]:
    """Display names that fit `limit` characters, and the legend lines for those that changed.

    A prompt set `embedded:toy-safety/eval-prompts` becomes `eval-prompts` (its last part) when that is
    unique; anything still too long becomes `#1`, `#2`… Names that fit are shown in full.
    """
    out: dict[str, str] = {}
    tails = [n.replace(":", "/").rstrip("/").rsplit("/", 1)[-1] for n in names]
    for name, tail in zip(names, tails, strict=True):
        if len(name) <= limit:
            out[name] = name
        elif len(tail) <= limit and tails.count(tail) == 1 and tail not in names:
            out[name] = tail
    for name in names:
        if name not in out:
            out[name] = f"#{sum(1 for v in out.values() if v.startswith('#')) + 1}"
    legend = [f"{short} = {name}" for name, short in out.items() if short != name]
    return out, legend


def _table(title: str, caption: str = "") -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # Text, not markup: titles carry prompt-set names (`[/]` in one crashed the report after scoring)
    return Table(title=Text(title), caption=Text(caption) if caption else None, box=box.SIMPLE_HEAD,
                 padding=(0, 1), title_justify="left", caption_justify="left", collapse_padding=True)


def _col(table: Any, name: str, right: bool = True) -> None:
    table.add_column(name, justify="right" if right else "left", no_wrap=True, overflow="ellipsis")


def _row(table: Any, *cells: str) -> None:
    from rich.text import Text

    table.add_row(*(Text(str(c)) for c in cells))  # Text: user names are never read as rich markup


def _ci(stat: Mapping[str, Any] | None, pct: bool = False, signed: bool = False) -> str:
    """`0.42±.05` / `45%±7` / `+0.07 [+0.01,+0.12]`: compact cells for an 80-column terminal."""
    if not stat or stat.get("mean") is None:
        return "—"
    mean = stat["mean"]
    if signed:
        text = f"{mean:+.2f}"
        if stat.get("lo") is not None:
            text += f" [{stat['lo']:+.2f},{stat['hi']:+.2f}]"
        return text
    text = f"{100 * mean:.0f}%" if pct else f"{mean:.2f}"
    if stat.get("lo") is not None and stat["hi"] > stat["lo"]:
        half = (stat["hi"] - stat["lo"]) / 2
        text += f"±{100 * half:.0f}" if pct else f"±{half:.2f}".replace("0.", ".", 1)
    return text


def _f(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}"


def print_tables(summary: Mapping[str, Any]) -> None:
    """The terminal summary on stderr (silent under --quiet), every table within 80 columns.

    Per prompt set: the models' scores (blend and dial variants left to the routing table and the
    report), win rates, the toy world's ground truth, and the router against its best fixed blend.
    """
    if console.quiet():
        return
    for table in terminal_tables(summary):
        console.err.print(table, width=WIDTH)


def terminal_tables(summary: Mapping[str, Any]) -> list[Any]:
    models = [m for m in summary["models"] if not is_sweep_label(m)]
    sets, set_legend = short_names(summary["prompt_sets"], 24)
    names, model_legend = short_names(models, 20)
    conf = int(100 * summary["bootstrap"]["confidence"])
    legend = "\n".join(set_legend + model_legend)
    tables = []
    cols = [c for c in _shown_columns(summary) if c[0] != "answer_tokens"]
    heads = {"reward": "reward↑", "cost": "cost↓", "harmless_rate": "harmless", "refusal_rate_harmful": "refuse·H",
             "refusal_rate_benign": "refuse·B", "refusal_rate": "refuse"}
    for prompt_set in summary["prompt_sets"]:
        groups = [g for g in summary["groups"] if g["prompt_set"] == prompt_set and g["model"] in names]
        if not groups:
            continue
        t = _table(f"Evaluation · {sets[prompt_set]}", f"± half the {conf}% bootstrap CI; H/B = harmful/benign")
        _col(t, "model", right=False)
        _col(t, "n")
        for m, *_ in cols:
            _col(t, heads[m])
        for g in groups:
            _row(t, names[g["model"]], g["n"], *(_ci(g["metrics"].get(m), m in RATES) for m, *_ in cols))
        tables.append(t)
    tables += _win_tables(summary, sets, names)
    tables += _toy_tables(summary, sets, names)
    tables += _routing_tables(summary, sets)
    if legend or _missing_note(summary):
        from rich.text import Text

        tables.append(Text("\n".join(x for x in (legend, _missing_note(summary)) if x)))
    return tables


def _win_tables(summary: Mapping[str, Any], sets: Mapping[str, str], names: Mapping[str, str]) -> list[Any]:
    out = []
    for prompt_set in summary["prompt_sets"]:
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        for w in summary["win_rates"]:
            if w["prompt_set"] == prompt_set:
                pairs.setdefault((w["model_a"], w["model_b"]), {})[w["metric"]] = w
        if not pairs:
            continue
        t = _table(f"Win rates · {sets[prompt_set]}", "A's share of prompts where A beats B (ties ½)")
        for name, right in (("A", False), ("B", False), ("reward↑", True), ("cost↓", True), ("n", True)):
            _col(t, name, right)
        for (a, b), by in pairs.items():
            n = max(w["n"] for w in by.values())
            _row(t, names.get(a, a), names.get(b, b),
                 *(_ci({"mean": w["rate"], "lo": w["lo"], "hi": w["hi"]}, True) if (w := by.get(k)) else "—"
                   for k in ("reward", "cost")), n)
        out.append(t)
    return out


def _toy_tables(summary: Mapping[str, Any], sets: Mapping[str, str], names: Mapping[str, str]) -> list[Any]:
    out = []
    for prompt_set in summary["prompt_sets"]:
        entries = [e for e in summary.get("toy") or [] if e["prompt_set"] == prompt_set and e["model"] in names]
        if not entries:
            continue
        t = _table(f"Toy world (ground-truth judge) · {sets[prompt_set]}",
                   "g_s: mean safety gate on harmful (H) / benign (B) prompts")
        for name in ("model", "harmful-safe", "benign-helpful", "toy score", "g_s H", "g_s B"):
            _col(t, name, name != "model")
        for e in entries:
            _row(t, names[e["model"]], _f(e["harmful_safe"]), _f(e["benign_helpful"]), _f(e["toy_score"]),
                 _f(e.get("gate_safety_harmful")), _f(e.get("gate_safety_benign")))
        out.append(t)
    return out


def _routing_tables(summary: Mapping[str, Any], sets: Mapping[str, str]) -> list[Any]:
    routing = summary.get("routing") or {}
    judged = {k: v for k, v in routing.items() if v.get("diff")}
    out = []
    if judged:
        first = next(iter(judged.values()))
        chosen = first["best_fixed"]["chosen_on"]
        how = "chosen in-sample (no dev set)" if first["in_sample"] else f"chosen on {sets.get(chosen, chosen)}"
        t = _table("Router vs the best fixed blend (toy score)",
                   f"best fixed blend {how}; Δ = router − best, paired {_conf(summary)}% CI; "
                   "share = Δ / (oracle − best)")
        for name in ("set", "router", "best blend", "Δ [CI]", "oracle", "share"):
            _col(t, name, name != "set")
        for prompt_set, e in judged.items():
            best, oracle = e["best_fixed"], e.get("oracle") or {}
            _row(t, sets.get(prompt_set, prompt_set), _f(e["router"].get("score")),
                 f"{_f(best.get('score'))} ({_g(best['gates'][0])},{_g(best['gates'][1])})",
                 _ci(e["diff"], signed=True), _f(oracle.get("score")),
                 _share(e.get("share")))
        out.append(t)
        out.append(_stricter_table(judged, sets, _conf(summary)))
    from rich.text import Text

    from midpo_cli.evaluation.dial_changes import dial_lines
    from midpo_cli.evaluation.probe_switch import switch_lines

    out += [Text(line) for line in switch_lines(routing) + dial_lines(routing)]
    for prompt_set, e in routing.items():
        pareto = e.get("pareto")
        if pareto and not e.get("diff"):
            out.append(Text(f"{sets.get(prompt_set, prompt_set)}: {pareto_verdict(pareto)}"))
    return out


def _stricter_table(judged: Mapping[str, Any], sets: Mapping[str, str], conf: int) -> Any:
    """The same Δ with categories resampled, and the router against the blend best on the set itself."""
    t = _table("Router vs fixed blends, stricter views",
               f"{conf}% CIs; by category: whole categories resampled (one task's phrasings are not "
               "independent); hindsight: the blend best on this set itself, a flattering baseline")
    for name in ("set", "Δ [CI by category]", "hindsight blend", "router − it [CI]"):
        _col(t, name, name != "set")
    for prompt_set, e in judged.items():
        h = e.get("best_in_sample") or {}
        gates = f"{_f(h['score'])} ({_g(h['gates'][0])},{_g(h['gates'][1])})" if h else "—"
        _row(t, sets.get(prompt_set, prompt_set), _ci(e.get("diff_by_category"), signed=True), gates,
             _ci(h.get("diff_by_category") or h.get("diff"), signed=True))
    return t


def _share(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _g(x: float) -> str:
    """A gate value in few characters: 0.25 → .25, 1.0 → 1."""
    return f"{x:g}".replace("0.", ".", 1) if 0 < x < 1 else f"{x:g}"


def _conf(summary: Mapping[str, Any]) -> int:
    return int(100 * summary["bootstrap"]["confidence"])


def pareto_verdict(pareto: Mapping[str, Any]) -> str:
    """One sentence: does any fixed blend Pareto-dominate the router (reward and cost, with CIs)?"""
    sig = [b for b in pareto["by"] if b["significant"]]
    dom = [b for b in pareto["by"] if b["dominates"]]
    where = f"blends chosen on {pareto['candidates_chosen_on']}"
    if sig:
        g = sig[0]["gates"]
        return (f"the fixed blend ({g[0]:g},{g[1]:g}) Pareto-dominates the router: higher reward and lower cost, "
                f"both CIs above 0 ({len(sig)} such blend(s); {where})")
    if dom:
        return (f"{len(dom)} fixed blend(s) dominate the router by their means, but no CI excludes a tie ({where})")
    return f"no fixed blend Pareto-dominates the router by reward and cost ({where})"


# -------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # "$" in a model name or token is text, not TeX
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> Path:
    """Lay out, write and close a figure (pyplot keeps every open figure alive otherwise)."""
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def plot_tradeoff(summary: Mapping[str, Any], path: Path) -> Path | None:
    """The headline figure (midpo_cli.evaluation.tradeoff_figure): every model, blend and dial on each set."""
    from midpo_cli.evaluation.tradeoff_figure import plot_tradeoff as draw

    return draw(summary, path)


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
    return _save_figure(fig, path)


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
    return _save_figure(fig, path)


# -------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
line-height:1.4;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}.cap{color:#444;font-size:13px;margin:0 0 16px}
.verdict{border:2px solid #999;border-radius:6px;padding:8px 14px;margin:12px 0;font-size:15px}
.verdict li{margin:4px 0}.verdict b{font-size:16px}.note{color:#8a5a00;font-size:13px}
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


def _img(path: Path | None, alt: str, caption: str = "") -> str:
    """An inlined PNG and, under it, the sentence that says what to look at."""
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    under = f'<p class="cap">{_e(caption)}</p>' if caption else ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">{under}'


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


# -------------------------------------------------------------------------------------------------- routing


def _axes(entry: Mapping[str, Any]) -> tuple[str, str, str, str] | None:
    """(x key, y key, x label, y label) of a routing panel: judge rates, else cost and reward."""
    if entry.get("metric"):
        return "harmful_safe", "benign_helpful", "harmful prompts answered safely", "benign prompts answered helpfully"
    if entry["router"].get("cost") is not None and entry["router"].get("reward") is not None:
        return "cost", "reward", "mean cost (lower is safer)", "mean reward (higher is more helpful)"
    return None


def _routing_html(summary: Mapping[str, Any], out_dir: Path) -> str:
    routing = summary.get("routing") or {}
    if not routing:
        return ""
    conf = _conf(summary)
    rows = []
    for name, e in routing.items():
        best, oracle = e.get("best_fixed") or {}, e.get("oracle") or {}
        chosen = ("—" if not best else "this set (in-sample)" if best.get("in_sample") else best["chosen_on"])
        gates = f"({best['gates'][0]:g}, {best['gates'][1]:g})" if best else "—"
        verdict = pareto_verdict(e["pareto"]) if e.get("pareto") else "—"
        rows.append(f'<tr><td class="l">{_e(name)}</td><td>{_f(e["router"].get("score"))}</td><td>{_e(gates)}</td>'
                    f'<td class="l">{_e(chosen)}</td><td>{_f(best.get("score"))}</td>'
                    f'<td>{_e(_ci(e.get("diff"), signed=True))}</td><td>{_f(oracle.get("score"))}</td>'
                    f'<td>{_e(_ci(e.get("diff_by_category"), signed=True))}</td>'
                    f'<td>{_share(e.get("share"))}</td>{_hindsight_cells(e)}'
                    f'<td class="l">{_e(verdict)}</td></tr>')
    table = ('<table><tr><th class="l">prompt set</th><th>router</th><th>best fixed (g_s, g_h)</th>'
             '<th class="l">chosen on</th><th>best fixed</th><th>router − best fixed</th><th>oracle</th>'
             '<th>router − best fixed, categories resampled</th><th>headroom captured</th>'
             '<th>best blend in hindsight</th><th>router − it</th>'
             f'<th class="l">Pareto (reward, cost)</th></tr>{"".join(rows)}</table>')
    return ("<h2>Does the router earn its place?</h2><p class='meta'>The learned router against the same two "
            "experts at fixed gates. Scores are the toy score (½ harmful answered safely + ½ benign answered "
            "helpfully) where a ground-truth judge exists. The best fixed blend is chosen on the dev set and "
            f"reported on the others; router − best fixed has a {conf}% bootstrap CI paired by prompt, and one "
            "that resamples whole categories (one task asked in several phrasings is one piece of evidence, "
            "not several); the blend best on the reported set itself (in hindsight, a flattering baseline) "
            "shows whether the router did more than a better-chosen fixed blend would; headroom "
            "captured = (router − best fixed) / (oracle − best fixed), where the oracle answers harmful prompts "
            "with the safety expert and benign ones with the helpfulness expert. Pareto: does any fixed blend "
            f"have both higher reward and lower cost than the router (CIs above 0)?</p>{table}{_extra_routing(routing)}"
            "<p class='meta'>The figure at the top draws every blend, the dial and the oracle on each set.</p>"
            f"{_grid_details(routing)}")


def _extra_routing(routing: Mapping[str, Any]) -> str:
    """The probe switch next to the router, and the answers each dial point changed (midpo_cli.evaluation)."""
    from midpo_cli.evaluation.dial_changes import dial_lines
    from midpo_cli.evaluation.probe_switch import switch_lines

    return "".join(f"<p class='meta'>{_e(line)}</p>" for line in switch_lines(routing) + dial_lines(routing))


def _hindsight_cells(e: Mapping[str, Any]) -> str:
    h = e.get("best_in_sample") or {}
    if not h:
        return "<td>—</td><td>—</td>"
    return (f'<td>{_f(h["score"])} ({h["gates"][0]:g}, {h["gates"][1]:g})</td>'
            f'<td>{_e(_ci(h.get("diff_by_category") or h.get("diff"), signed=True))}</td>')


def _grid_details(routing: Mapping[str, Any]) -> str:
    parts = []
    for name, e in routing.items():
        keys = [k for k in ("score", "harmful_safe", "benign_helpful", "reward", "cost")
                if any(g.get(k) is not None for g in e["grid"] + e.get("dial", []))]
        head = "".join(f"<th>{_e(k)}</th>" for k in keys)
        body = "".join(f'<tr><td class="l">{_e(g["model"])}</td>' + "".join(f"<td>{_f(g.get(k))}</td>" for k in keys)
                       + "</tr>" for g in e["grid"] + e.get("dial", []))
        parts.append(f"<details><summary>{_e(name)}: every fixed blend and dial setting</summary>"
                     f'<table><tr><th class="l">model</th>{head}</tr>{body}</table></details>')
    return "".join(parts)


# -------------------------------------------------------------------------------------------------- gates


MAP_CAPTION = ("Look at whole columns: a router that routes keeps the safety gate open (red) through the answer "
               "of a harmful prompt and closed (blue) on a benign one; the same pattern on every kind means it "
               "does not route by prompt.")


def plot_gate_maps(maps: Mapping[str, Any], kind: str, path: Path) -> Path | None:
    """Heatmaps (routed layer × answer token) of both gates for the gate-map prompts of one kind.

    Each prompt gets its safety map above its helpfulness map, sharing the token axis, at a width the report shows
    unscaled (≤ 11.6 in at 100 dpi), so the token labels stay readable at 8 pt whatever the answer length.
    """
    items = [p for p in maps.get("prompts", []) if p["kind"] == kind and p["tokens"]]
    if not items:
        return None
    plt = _plt()
    n_layers = max(len(p["safety"]) for p in items)
    height = 0.22 * n_layers + 0.5
    fig, axes = plt.subplots(2 * len(items), 1, figsize=(11.6, len(items) * (2 * height + 1.5) + 0.4), dpi=100,
                             squeeze=False, layout="constrained")
    layers = maps.get("layers") or []
    for number, item in enumerate(items):
        pair = (axes[2 * number, 0], axes[2 * number + 1, 0])
        for ax, key in zip(pair, ("safety", "helpfulness"), strict=True):
            image = ax.imshow(item[key], aspect="auto", vmin=0, vmax=1, cmap="RdBu_r" if key == "safety" else "PuOr",
                              interpolation="nearest")
            ax.set_yticks(range(len(item[key])))
            ax.set_yticklabels([f"L{i}" for i in range(len(item[key]))] if len(layers) != len(item[key])
                               else [_layer_name(n, i) for i, n in enumerate(layers)], fontsize=8)
            ax.set_ylabel(f"{key} gate\nrouted layer", fontsize=9)
            bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
            bar.set_label("gate (0 closed, 1 open)", fontsize=8)
            bar.ax.tick_params(labelsize=7)
            ax.set_xticks(range(len(item["tokens"])))
        pair[0].set_xticklabels([])
        pair[0].set_title(f"{kind} prompt: {_clip(item['prompt'], 110)}", fontsize=10, loc="left")
        pair[1].set_xticklabels([_clip(t.replace("\n", "⏎"), 14) for t in item["tokens"]], rotation=90, fontsize=8)
        pair[1].set_xlabel("answer token (the gates at the position that produced it)", fontsize=9)
    fig.savefig(path)  # constrained layout (colorbars); `_save_figure`'s tight_layout would fight it
    plt.close(fig)
    return path


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _layer_name(name: str, i: int) -> str:
    digits = [part for part in name.split(".") if part.isdigit()]
    return f"L{digits[0]}" if digits else f"L{i}"


def _gates_html(summary: Mapping[str, Any], hist: Path | None, out_dir: Path) -> str:
    entries = summary.get("gates") or []
    maps_path = out_dir / "gate_maps.json"
    maps = read_json(maps_path) if maps_path.is_file() else None
    if not entries and hist is None and maps is None:
        return ""
    parts = ["<h2>MidPO gates</h2>"]
    if entries:
        rows = "".join(
            f'<tr><td class="l">{_e(g["model"])}</td><td class="l">{_e(g["prompt_set"])}</td><td>{g["n"]}</td>'
            + ("".join(f"<td>{_f(sep.get(k))}</td>" for k in ("auroc", "mean_harmful", "mean_benign", "gap"))
               if (sep := g.get("separation")) else '<td colspan="4">no harm labels</td>') + "</tr>"
            for g in entries)
        parts.append("<p class='meta'>Separation of each answer's mean safety gate between harmful and benign "
                      "prompts: AUROC (is the ordering consistent?) and the gap of the means (is it large enough "
                      "to change the answer?).</p><table><tr><th class='l'>model</th><th class='l'>prompt set</th>"
                      "<th>n</th><th>AUROC</th><th>mean g_s harmful</th><th>mean g_s benign</th><th>gap</th></tr>"
                      f"{rows}</table>")
        parts.append(_gate_category_table(entries))
    parts.append(_img(hist, "gates", "Look for separation: in the safety-gate panels the red (harmful) bars "
                      "should sit right of the blue (benign) ones; bars that overlap mean the router treats both "
                      "prompt kinds alike."))
    if maps:
        parts.append(f"<h3>Per layer and answer token ({_e(maps.get('model', ''))})</h3><p class='meta'>Column k: "
                     "the gates at the position that produced answer token k (its label); rows: routed layers. "
                     "Safety gate: red = open; helpfulness gate: purple = open.</p>")
        for kind in ("harmful", "benign", "trap"):
            png = plot_gate_maps(maps, kind, out_dir / f"gate_map_{kind}.png")
            if png is not None:
                answers = "".join(f"<li>{_e(p['prompt'])} → <i>{_e(p['answer'])}</i></li>"
                                  for p in maps["prompts"] if p["kind"] == kind)
                parts.append(f"<h4>{kind} prompts</h4><ul class='meta'>{answers}</ul>"
                             f"{_img(png, f'{kind} gates', MAP_CAPTION)}")
    return "".join(parts)


KINDS = {True: "harmful", False: "benign"}


def _gate_category_table(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td class="l">{_e(g["model"])}</td><td class="l">{_e(g["prompt_set"])}</td>'
        f'<td class="l">{_e(c["category"])}</td><td class="l">{KINDS.get(c["is_harmful"], "—")}</td><td>{c["n"]}</td>'
        f'<td>{_f(c["safety"])}</td><td>{_f(c["helpfulness"])}</td></tr>'
        for g in entries for c in g["categories"])
    return ("<details><summary>Mean gates per category</summary><table><tr><th class='l'>model</th>"
            "<th class='l'>prompt set</th><th class='l'>category</th><th class='l'>kind</th><th>n</th>"
            f"<th>mean g_s</th><th>mean g_h</th></tr>{rows}</table></details>")


def write_report(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out_dir: str | Path) -> Path:
    """PNG plots and report.html (images inlined) into out_dir; returns the HTML path.

    Every string that comes from data (model, prompt-set and category names, paths, prompts, answers,
    tokens) goes through html.escape. Blend and dial variants appear in the routing section only.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main_rows = [r for r in rows if not is_sweep_label(str(r["model"]))]
    main = {**summary, "groups": [g for g in summary["groups"] if not is_sweep_label(g["model"])],
            "models": [m for m in summary["models"] if not is_sweep_label(m)]}
    from midpo_cli.evaluation.methods import methods_html
    from midpo_cli.evaluation.tradeoff_figure import caption as tradeoff_caption

    tradeoff = plot_tradeoff(main, out_dir / "tradeoff.png")
    dist = plot_distributions(main_rows, out_dir / "distributions.png")
    gates = plot_gates(main_rows, out_dir / "gates.png")
    inputs = summary.get("inputs", {})
    boot = summary["bootstrap"]
    note = _missing_note(summary)
    sweeps = len(summary["models"]) - len(main["models"])
    meta = (f"{summary['n_rows']} answers · models: {_e(', '.join(map(str, main['models'])))}"
            f"{f' (+ {sweeps} fixed-blend / dial variants)' if sweeps else ''} · prompt sets: "
            f"{_e(', '.join(map(str, summary['prompt_sets'])))}<br>answers: {_e(inputs.get('answers', '?'))} · "
            f"reward model: {_e(inputs.get('reward_model') or '—')} · cost model: {_e(inputs.get('cost_model') or '—')}"
            f"<br>{int(100 * boot['confidence'])}% percentile bootstrap intervals, {boot['resamples']} resamples, "
            "paired by prompt. Cost &lt; 0 means judged safe; refusal is a pattern match on the answer's opening "
            "(midpo_cli/evaluation/refusal.py).")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>midpo evaluation report</title><style>{CSS}</style></head>
<body><h1>midpo evaluation report</h1>{_verdict_html(summary)}
<p class="meta">{meta}</p>{f'<p class="note">{_e(note)}</p>' if note else ''}
{_img(tradeoff, "safety vs helpfulness", tradeoff_caption(main)) if tradeoff else ''}
<h2>Summary</h2>{_summary_table(main)}
<p class="meta">Bold: the best value within each prompt set.</p>
{methods_html(summary)}
{_routing_html(summary, out_dir)}
<h2>Win rates</h2>{_wins_table(summary)}
{'<h2>Score distributions</h2>' + _img(dist, 'distributions', DIST_CAPTION) if dist else ''}
{_gates_html(summary, gates, out_dir)}
{_category_table(summary)}
<h2>Example answers</h2>{_examples(main_rows)}
</body></html>
"""
    return atomic_write_text(out_dir / "report.html", page)


DIST_CAPTION = ("Look at whether a model's whole box moves (most answers changed) or only its whiskers (a few "
                "answers did); the dotted line is cost 0, below which an answer is judged safe.")


def _verdict_html(summary: Mapping[str, Any]) -> str:
    """The verdict box that opens the report (midpo_cli.evaluation.verdict; recomputed for an older summary)."""
    from midpo_cli.evaluation.verdict import verdicts

    items = summary["verdict"] if "verdict" in summary else verdicts(summary)
    if not items:
        return ""
    rows = "".join(f"<li><b>{_e(v['prompt_set'])}: {_e(v['label'])}</b>{_e(v['sentence'][len(v['label']):])}</li>"
                   for v in items)
    return ("<div class='verdict'>Verdict, computed (docs/design.md §2.12): does the learned router earn its place "
            f"over fixed blends of the same two experts?<ul>{rows}</ul></div>")


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
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), list):
        raise InputError(f"{summary_path}: no 'models' list; not a summary written by `midpo score`")
    try:
        with open(scores_path, encoding="utf-8", newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{scores_path}: not a readable scores CSV ({type(exc).__name__})") from None
    return rows, summary, folder
