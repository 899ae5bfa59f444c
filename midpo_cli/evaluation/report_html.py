"""The evaluation report as one self-contained report.html: the figures inlined as base64 PNGs, the CSS inline, no
network resource named, so it can be mailed, archived or opened offline.

It opens with the computed verdict (midpo_cli.evaluation.verdict), then the headline figure
(midpo_cli.evaluation.tradeoff_figure), the models' scores, the method table, the router against fixed blends, win
rates, the other figures (midpo_cli.evaluation.figures, each with the sentence that says what to look at), the gates,
the categories and a few example answers. Every string that comes from data (model, prompt-set and category names,
paths, prompts, answers, tokens) goes through `html_escape`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midpo_cli.evaluation.figures import (
    DIST_CAPTION,
    GATES_CAPTION,
    MAP_CAPTION,
    SEPARATION_CAPTION,
    plot_distributions,
    plot_gate_maps,
    plot_gate_separation,
    plot_gates,
)
from midpo_cli.evaluation.formatting import compact_interval, gate_pair, mean_and_interval, number, percent
from midpo_cli.evaluation.labels import is_sweep_label
from midpo_cli.evaluation.report_columns import COLUMNS, confidence_percent, missing_note, shown_columns
from midpo_cli.evaluation.summary import as_bool, as_float
from midpo_cli.evaluation.verdict import pareto_verdict, three_lines, verdicts
from midpo_cli.io import atomic_write_text, read_json

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
line-height:1.4;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}.cap{color:#444;font-size:13px;margin:0 0 16px}
.top{display:flex;gap:16px;align-items:flex-start;margin:12px 0}.top>.verdict{flex:1 1 0;margin:0;min-width:0}
.top>figure{flex:0 0 390px;margin:0}.top>figure img{margin:0}.top>figure .cap{margin:2px 0 0;font-size:12px}
.verdict{border:2px solid #999;border-radius:6px;padding:6px 14px;margin:12px 0;font-size:14px}
.verdict h3{font-size:15px;margin:8px 0 2px}.verdict ol{margin:2px 0 6px;padding-left:22px}.verdict li{margin:1px 0}
.verdict code{background:#f3f3f3;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere;font-size:12.5px}
.verdict details{font-size:12px;color:#555}.note{color:#8a5a00;font-size:13px}
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


def html_escape(x: Any) -> str:
    """Any value as HTML text: `<`, `>`, `&` and quotes escaped."""
    return html.escape(str(x))


def _text_cell(x: Any) -> str:
    """A left-aligned cell: a name or a sentence."""
    return f'<td class="l">{html_escape(x)}</td>'


def _cell(x: Any) -> str:
    """A right-aligned cell: a number."""
    return f"<td>{html_escape(x)}</td>"


def inline_image(path: Path | None, alt: str, caption: str = "") -> str:
    """An inlined PNG and, under it, the sentence that says what to look at."""
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    under = f'<p class="cap">{html_escape(caption)}</p>' if caption else ""
    return f'<img alt="{html_escape(alt)}" src="data:image/png;base64,{data}">{under}'


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
    cols = shown_columns(summary)
    best = {m: _best(summary, m, lower) for m, _, lower, _ in cols if m not in ("answer_tokens", "refusal_rate",
                                                                             "refusal_rate_harmful")}
    head = "".join(f"<th>{html_escape(h)}</th>" for _, h, *_ in cols)
    body = []
    for g in summary["groups"]:
        cells = []
        for m, *_ in cols:
            stat = g["metrics"].get(m)
            is_best = m in best and stat and stat.get("mean") is not None and stat["mean"] == best[m].get(
                g["prompt_set"])
            cells.append(f'<td class="{"best" if is_best else ""}">{html_escape(mean_and_interval(stat, m))}</td>')
        body.append(f'<tr>{_text_cell(g["model"])}{_text_cell(g["prompt_set"])}{_cell(g["n"])}{"".join(cells)}</tr>')
    return (f'<table><tr><th class="l">model</th><th class="l">prompt set</th><th>n</th>{head}</tr>'
            f'{"".join(body)}</table>')


def _wins_table(summary: Mapping[str, Any]) -> str:
    if not summary["win_rates"]:
        return "<p class='meta'>One model only: no win rates.</p>"
    rows = []
    for w in summary["win_rates"]:
        names = "".join(_text_cell(w[k]) for k in ("prompt_set", "model_a", "model_b", "rule"))
        tally = f"{w['wins']} / {w['ties']} / {w['losses']}"
        rows.append(f'<tr>{names}{_cell(mean_and_interval(w, "win"))}{_cell(tally)}{_cell(w["n"])}</tr>')
    return ('<table><tr><th class="l">prompt set</th><th class="l">A</th><th class="l">B</th><th class="l">rule</th>'
            f'<th>A wins [95% CI]</th><th>wins / ties / losses</th><th>n</th></tr>{"".join(rows)}</table>')


def _category_table(summary: Mapping[str, Any]) -> str:
    cats = summary.get("categories") or []
    if not cats:
        return ""
    order = {m: i for i, m in enumerate(summary["models"])}  # models side by side within each category
    cats = sorted(cats, key=lambda c: (c["prompt_set"], str(c["category"]), order.get(c["model"], 0)))
    metrics = [m for m in ("reward", "cost", "harmless_rate", "refusal_rate") if any(m in c["metrics"] for c in cats)]
    head = "".join(f"<th>{html_escape(dict((c[0], c[1]) for c in COLUMNS).get(m, m))}</th>" for m in metrics)
    rows = "".join(
        f'<tr>{_text_cell(c["model"])}{_text_cell(c["prompt_set"])}{_text_cell(c["category"])}{_cell(c["n"])}'
        + "".join(_cell(mean_and_interval(c["metrics"].get(m), m, ci=False)) for m in metrics) + "</tr>"
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
        parts.append(f"<h3>{html_escape(model)}</h3>")
        for r in examples:
            harm = as_bool(r.get("is_harmful"))
            tags = ""
            if harm is not None:
                tags += f'<span class="tag {"harm" if harm else "ok"}">{"harmful" if harm else "benign"}</span>'
            if as_bool(r.get("refusal")):
                tags += f'<span class="tag ref">refusal: “{html_escape(r.get("refusal_match") or "")}”</span>'
            scores = " · ".join(f"{k} {number(as_float(r.get(k)))}" for k in ("reward", "cost")
                                if not math.isnan(as_float(r.get(k))))
            answer = str(r.get("answer") or "")
            if len(answer) > 600:
                answer = answer[:600] + " …"
            prompt = str(r.get("prompt") or "")
            prompt = prompt if len(prompt) <= 300 else prompt[:300] + " …"
            where = html_escape(f'{r["prompt_set"]} #{r["index"]}{" · " + scores if scores else ""}')
            shown = html_escape(answer) or "<i>(empty answer)</i>"
            parts.append(f'<div class="ex">{tags}<span class="meta">{where}</span><div class="p"><b>Prompt:</b> '
                         f'{html_escape(prompt)}</div><div class="a">{shown}</div></div>')
    return "".join(parts)


def _routing_html(summary: Mapping[str, Any], out_dir: Path) -> str:
    routing = summary.get("routing") or {}
    if not routing:
        return ""
    conf = confidence_percent(summary)
    rows = []
    for name, e in routing.items():
        best, oracle = e.get("best_fixed") or {}, e.get("oracle") or {}
        chosen = ("—" if not best else "this set (in-sample)" if best.get("in_sample") else best["chosen_on"])
        gates = f"({gate_pair(best['gates'], ', ')})" if best else "—"
        verdict = pareto_verdict(e["pareto"]) if e.get("pareto") else "—"
        judge = f'{e["judge"]} ({e["judge_graded"]})' if e.get("judge_graded") else e.get("judge") or "—"
        rows.append(f'<tr>{_text_cell(name)}{_text_cell(judge)}{_cell(number(e["router"].get("score")))}{_cell(gates)}'
                    f'{_text_cell(chosen)}{_cell(number(best.get("score")))}'
                    f'{_cell(compact_interval(e.get("diff"), signed=True))}{_cell(number(oracle.get("score")))}'
                    f'{_cell(compact_interval(e.get("diff_by_category"), signed=True))}'
                    f'{_cell(percent(e.get("share")))}{_hindsight_cells(e)}{_text_cell(verdict)}</tr>')
    table = ('<table><tr><th class="l">prompt set</th><th class="l">judge</th><th>router</th>'
             '<th>best fixed (g_s, g_h)</th>'
             '<th class="l">chosen on</th><th>best fixed</th><th>router − best fixed</th><th>oracle</th>'
             '<th>router − best fixed, categories resampled</th><th>headroom captured</th>'
             '<th>best blend in hindsight</th><th>router − it</th>'
             f'<th class="l">Pareto (reward, cost)</th></tr>{"".join(rows)}</table>')
    return ("<h2>Does the router earn its place?</h2><p class='meta'>The learned router against the same two "
            "experts at fixed gates. Scores are the judge's balanced score (½ harmful answered safely + ½ benign "
            "answered helpfully) by the judge each row names (docs/judges.md; the toy score under the toy judge). "
            "The best fixed blend is chosen on the dev set, by the dev judge, and "
            f"reported on the others; router − best fixed has a {conf}% bootstrap CI paired by prompt, and one "
            "that resamples whole categories (one task asked in several phrasings is one piece of evidence, "
            "not several); the blend best on the reported set itself (in hindsight, a flattering baseline) "
            "shows whether the router did more than a better-chosen fixed blend would; headroom "
            "captured = (router − best fixed) / (oracle − best fixed), where the oracle answers harmful prompts "
            "with the safety expert and benign ones with the helpfulness expert. Pareto: does any fixed blend "
            "have both higher reward and lower cost than the router (CIs above 0)?</p>"
            f"{table}{_extra_routing(routing)}"
            "<p class='meta'>The figure at the top draws every blend, the dial and the oracle on each set.</p>"
            f"{_grid_details(routing)}")


def _extra_routing(routing: Mapping[str, Any]) -> str:
    """The probe switch next to the router, and the answers each dial point changed (midpo_cli.evaluation)."""
    from midpo_cli.evaluation.dial_changes import dial_lines
    from midpo_cli.evaluation.probe_switch import switch_lines

    return "".join(f"<p class='meta'>{html_escape(line)}</p>" for line in switch_lines(routing) + dial_lines(routing))


def _hindsight_cells(e: Mapping[str, Any]) -> str:
    h = e.get("best_in_sample") or {}
    if not h:
        return "<td>—</td><td>—</td>"
    return (_cell(f'{number(h["score"])} ({gate_pair(h["gates"], ", ")})')
            + _cell(compact_interval(h.get("diff_by_category") or h.get("diff"), signed=True)))


def _grid_details(routing: Mapping[str, Any]) -> str:
    parts = []
    for name, e in routing.items():
        keys = [k for k in ("score", "harmful_safe", "benign_helpful", "reward", "cost")
                if any(g.get(k) is not None for g in e["grid"] + e.get("dial", []))]
        head = "".join(f"<th>{html_escape(k)}</th>" for k in keys)
        body = "".join(f'<tr>{_text_cell(g["model"])}' + "".join(_cell(number(g.get(k))) for k in keys) + "</tr>"
                       for g in e["grid"] + e.get("dial", []))
        parts.append(f"<details><summary>{html_escape(name)}: every fixed blend and dial setting</summary>"
                     f'<table><tr><th class="l">model</th>{head}</tr>{body}</table></details>')
    return "".join(parts)


def _gates_html(summary: Mapping[str, Any], hist: Path | None, out_dir: Path) -> str:
    entries = summary.get("gates") or []
    maps_path = out_dir / "gate_maps.json"
    maps = read_json(maps_path) if maps_path.is_file() else None
    if not entries and hist is None and maps is None:
        return ""
    parts = ["<h2>MidPO gates</h2>"]
    if entries:
        rows = "".join(
            f'<tr>{_text_cell(g["model"])}{_text_cell(g["prompt_set"])}{_cell(g["n"])}'
            + ("".join(_cell(number(sep.get(k))) for k in ("auroc", "mean_harmful", "mean_benign", "gap"))
               if (sep := g.get("separation")) else '<td colspan="4">no harm labels</td>') + "</tr>"
            for g in entries)
        parts.append("<p class='meta'>Separation of each answer's mean safety gate between harmful and benign "
                      "prompts: AUROC (is the ordering consistent?) and the gap of the means (is it large enough "
                      "to change the answer?).</p><table><tr><th class='l'>model</th><th class='l'>prompt set</th>"
                      "<th>n</th><th>AUROC</th><th>mean g_s harmful</th><th>mean g_s benign</th><th>gap</th></tr>"
                      f"{rows}</table>")
        parts.append(_gate_category_table(entries))
    parts.append(inline_image(hist, "gates", GATES_CAPTION))
    if maps:
        parts.append(f"<h3>Per layer and answer token ({html_escape(maps.get('model', ''))})</h3><p class='meta'>"
                     "Column k: the gates at the position that produced answer token k (its label); rows: routed "
                     "layers. Safety gate: red = open; helpfulness gate: purple = open.</p>")
        for kind in ("harmful", "benign", "trap"):
            png = plot_gate_maps(maps, kind, out_dir / f"gate_map_{kind}.png")
            if png is not None:
                answers = "".join(f"<li>{html_escape(p['prompt'])} → <i>{html_escape(p['answer'])}</i></li>"
                                  for p in maps["prompts"] if p["kind"] == kind)
                parts.append(f"<h4>{kind} prompts</h4><ul class='meta'>{answers}</ul>"
                             f"{inline_image(png, f'{kind} gates', MAP_CAPTION)}")
    return "".join(parts)


KINDS = {True: "harmful", False: "benign"}


def _gate_category_table(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f'<tr>{_text_cell(g["model"])}{_text_cell(g["prompt_set"])}{_text_cell(c["category"])}'
        f'{_text_cell(KINDS.get(c["is_harmful"], "—"))}{_cell(c["n"])}{_cell(number(c["safety"]))}'
        f'{_cell(number(c["helpfulness"]))}</tr>'
        for g in entries for c in g["categories"])
    return ("<details><summary>Mean gates per category</summary><table><tr><th class='l'>model</th>"
            "<th class='l'>prompt set</th><th class='l'>category</th><th class='l'>kind</th><th>n</th>"
            f"<th>mean g_s</th><th>mean g_h</th></tr>{rows}</table></details>")


def write_report(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out_dir: str | Path) -> Path:
    """PNG plots and report.html (images inlined) into out_dir; returns the HTML path.

    Blend and dial variants appear in the routing section only.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main_rows = [r for r in rows if not is_sweep_label(str(r["model"]))]
    main = {**summary, "groups": [g for g in summary["groups"] if not is_sweep_label(g["model"])],
            "models": [m for m in summary["models"] if not is_sweep_label(m)]}
    from midpo_cli.evaluation.judges_report import judges_html
    from midpo_cli.evaluation.methods import methods_html
    from midpo_cli.evaluation.tradeoff_figure import caption as tradeoff_caption
    from midpo_cli.evaluation.tradeoff_figure import plot_tradeoff

    tradeoff = plot_tradeoff(main, out_dir / "tradeoff.png")
    reported = [r for r in main_rows if str(r["prompt_set"]) in (summary.get("routing") or {})]
    separation = plot_gate_separation(reported or main_rows, out_dir / "gate_separation.png")  # the verdict's sets
    dist = plot_distributions(main_rows, out_dir / "distributions.png")
    gates = plot_gates(main_rows, out_dir / "gates.png")
    inputs = summary.get("inputs", {})
    boot = summary["bootstrap"]
    note = missing_note(summary)
    sweeps = len(summary["models"]) - len(main["models"])
    meta = (f"{summary['n_rows']} answers · models: {html_escape(', '.join(map(str, main['models'])))}"
            f"{f' (+ {sweeps} fixed-blend / dial variants)' if sweeps else ''} · prompt sets: "
            f"{html_escape(', '.join(map(str, summary['prompt_sets'])))}<br>"
            f"answers: {html_escape(inputs.get('answers', '?'))} · "
            f"reward model: {html_escape(inputs.get('reward_model') or '—')} · "
            f"cost model: {html_escape(inputs.get('cost_model') or '—')}"
            f"<br>{confidence_percent(summary)}% percentile bootstrap intervals, {boot['resamples']} resamples, "
            "paired by prompt. Cost &lt; 0 means judged safe; refusal is a pattern match on the answer's opening "
            "(midpo_cli/evaluation/refusal.py).")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>midpo evaluation report</title><style>{CSS}</style></head>
<body><h1>midpo evaluation report</h1>{_top_html(summary, separation)}
{inline_image(tradeoff, "safety vs helpfulness", tradeoff_caption(main)) if tradeoff else ''}
<p class="meta">{meta}</p>{f'<p class="note">{html_escape(note)}</p>' if note else ''}
<h2>Summary</h2>{_summary_table(main)}
<p class="meta">Bold: the best value within each prompt set.</p>
{methods_html(summary)}
{_routing_html(summary, out_dir)}
{judges_html(summary)}
<h2>Win rates</h2>{_wins_table(summary)}
{'<h2>Score distributions</h2>' + inline_image(dist, 'distributions', DIST_CAPTION) if dist else ''}
{_gates_html(summary, gates, out_dir)}
{_category_table(summary)}
<h2>Example answers</h2>{_examples(main_rows)}
</body></html>
"""
    return atomic_write_text(out_dir / "report.html", page)


def _top_html(summary: Mapping[str, Any], separation: Path | None) -> str:
    """The first screen: the verdict and, beside it, the gate-separation figure (the evidence of routing)."""
    verdict = _verdict_html(summary)
    if separation is None:
        return verdict
    figure = inline_image(separation, "gate separation", SEPARATION_CAPTION)
    return f"<div class='top'>{verdict or '<div></div>'}<figure>{figure}</figure></div>"


def _verdict_html(summary: Mapping[str, Any]) -> str:
    """The verdict box that opens the report (midpo_cli.evaluation.verdict; recomputed for an older summary): per
    reported set its label, its three lines (the command in code) and, folded, the sentence with every number."""
    items = summary["verdict"] if "verdict" in summary else verdicts(summary)
    if not items:
        return ""
    parts = []
    for v in items:
        lines, command = three_lines(v), (v.get("recommendation") or {}).get("command")
        shown = [html_escape(line) for line in lines]
        if command and lines[-1].endswith(command):
            shown[-1] = f"{html_escape(lines[-1][:-len(command)])}<code>{html_escape(command)}</code>"
        parts.append(f"<h3>{html_escape(v['prompt_set'])}: {html_escape(v['label'])}</h3><ol>"
                     + "".join(f"<li>{line}</li>" for line in shown) + "</ol>"
                     + (f"<details><summary>all the numbers</summary>{html_escape(v['sentence'])}</details>"
                        if v.get("lines") else ""))
    return ("<div class='verdict'><div class='meta'>Verdict (docs/design.md §2.12): does the router earn its place "
            f"over fixed blends of the same two experts, and what to ship?</div>{''.join(parts)}</div>")
