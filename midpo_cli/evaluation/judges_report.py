"""The judges in the report and on the terminal (docs/judges.md): who judged what and how, each judge's rates and
verdict side by side, how far two judges agree (κ and the 2×2 table per prompt kind; the toy world's ground truth
first), and over-refusal by each judge that can tell a refusal beside the refusal detector. Everything is read from
the summary (midpo_cli.evaluation.judge_summary); every name from data is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from midpo_cli.evaluation.formatting import number, percent

RATE_KEYS = (("harmful_safe", "harmful safe"), ("benign_helpful", "benign helpful"), ("score", "score"),
             ("benign_refused", "benign refused (judge)"), ("benign_refused_regex", "benign refused (detector)"),
             ("unjudged", "unjudged"))


def _e(x: Any) -> str:
    return html.escape(str(x))


def how(judge: Mapping[str, Any]) -> str:
    """One line on how a judge decides: its rules, its threshold and where it was chosen, and its failures."""
    parts = [f"safe ⇔ {judge['safe_rule']}" if judge.get("safe_rule") else "",
             f"helpful ⇔ {judge['helpful_rule']}" if judge.get("helpful_rule") else ""]
    cut = judge.get("reward_threshold")
    if cut:
        parts.append(f"reward cut {cut['threshold']:.4g} chosen on {cut['chosen_on']} ({cut['rule']}"
                     + (f"; {cut['fallback']}" if cut.get("fallback") else f", J = {cut['j']:.3f}") + ")")
    if judge.get("graded"):
        parts.append(judge["graded"])
    if judge.get("ground_truth"):
        parts.append("ground truth: the answer's template")
    if judge.get("kind") == "openai":
        parts.append(f"{judge.get('model')} at {judge.get('base_url')}, rubric {judge.get('rubric')}: "
                     f"{judge.get('asked', 0)} asked, {judge.get('cached', 0)} cached, {judge.get('failed', 0)} failed"
                     + (f" ({', '.join(f'{k}: {v}' for k, v in judge['failures'].items())})"
                        if judge.get("failures") else ""))
    if judge.get("kind") == "guard":
        flagged = judge.get("prompts_flagged") or {}
        parts.append(f"{judge.get('model')}; prompts flagged unsafe: harmful {percent(flagged.get('harmful'))}, "
                     f"benign {percent(flagged.get('benign'))}")
    if judge.get("skipped"):
        parts.append("cannot judge " + ", ".join(f"{s} ({why})" for s, why in judge["skipped"].items()))
    return "; ".join(p for p in parts if p)


def judges_html(summary: Mapping[str, Any]) -> str:
    judges = summary.get("judges") or []
    if not judges:
        return ""
    rows = "".join(f"<tr><td class='l'>{_e(j['name'])}</td><td class='l'>{_e(j['kind'])}</td>"
                   f"<td class='l'>{_e(', '.join(j['sets']) or '—')}</td>"
                   f"<td class='l'>{_e(', '.join(j['primary_on']) or '—')}</td>"
                   f"<td class='l'>{'yes' if j.get('makes_dev_choices') else ''}</td>"
                   f"<td class='l'>{_e(how(j))}</td></tr>"
                   for j in judges)
    parts = ["<h2>Judges</h2><p class='meta'>Every judge labels every answer of the prompt sets it can judge "
             "(docs/judges.md): harmful prompt → safe or not; benign prompt → helpful (and not refused) or not. "
             "Each set's numbers above come from the first judge that can judge it (its <i>primary</i> set); the "
             "dev-chosen blend from the judge that makes the dev choices. Self-graded: the score models the experts "
             "were trained against, which flatter them.</p>",
             "<table><tr><th class='l'>judge</th><th class='l'>kind</th><th class='l'>judges</th>"
             f"<th class='l'>primary on</th><th class='l'>dev choices</th><th class='l'>how</th></tr>{rows}</table>",
             _rates_html(summary), _verdicts_html(summary), _agreement_html(summary), _over_refusal_html(summary)]
    return "".join(parts)


def _rates_html(summary: Mapping[str, Any]) -> str:
    rates = summary.get("judge_rates") or []
    if not rates:
        return ""
    head = "".join(f"<th>{_e(label)}</th>" for _, label in RATE_KEYS)
    body = "".join(f"<tr><td class='l'>{_e(r['prompt_set'])}</td><td class='l'>{_e(r['model'])}</td>"
                   f"<td class='l'>{_e(r['judge'])}</td>"
                   + "".join(f"<td>{_e(r[k] if k == 'unjudged' else number(r.get(k), 3))}</td>" for k, _ in RATE_KEYS)
                   + "</tr>" for r in sorted(rates, key=lambda r: (r["prompt_set"], r["model"])))
    return ("<h3>Rates by judge</h3><table><tr><th class='l'>prompt set</th><th class='l'>model</th>"
            f"<th class='l'>judge</th>{head}</tr>{body}</table>")


def _verdicts_html(summary: Mapping[str, Any]) -> str:
    items = [(name, v) for name, data in (summary.get("by_judge") or {}).items() for v in data.get("verdict") or []]
    if not items:
        return ""
    body = "".join(f"<li><b>{_e(v['prompt_set'])} · {_e(name)}: {_e(v['label'])}</b>"
                   f"{_e(v['sentence'][len(v['label']):])}</li>" for name, v in items)
    return ("<h3>The verdict by each judge</h3><p class='meta'>Each judge chooses its own blend on the dev set and "
            f"decides as the verdict at the top does (docs/design.md §2.12).</p><ul>{body}</ul>")


def _agreement_html(summary: Mapping[str, Any]) -> str:
    pairs = summary.get("agreement") or []
    if not pairs:
        return ""
    body = []
    for p in pairs:
        for k in p["kinds"]:
            t = k["table"]
            body.append(f"<tr><td class='l'>{_e(p['prompt_set'])}</td><td class='l'>{_e(p['a'])} vs {_e(p['b'])}"
                        f"{' (ground truth)' if p['reference'] else ''}</td><td class='l'>{_e(k['kind'])}</td>"
                        f"<td>{k['n']}</td><td>{number(k['kappa'], 3)}</td><td>{percent(k['agreement'])}</td>"
                        f"<td>{percent(k['rate_a'])} / {percent(k['rate_b'])}</td>"
                        f"<td>{t['both']}</td><td>{t['a_only']}</td><td>{t['b_only']}</td><td>{t['neither']}</td></tr>")
    return ("<h3>How far to trust a judge: agreement</h3><p class='meta'>On every answer both judges labelled (all "
            "models, blends and dial settings), per prompt kind: Cohen's κ (agreement beyond chance; — when both "
            "give one label to every answer), raw agreement, each judge's rate of good outcomes, and the 2×2 table "
            "of outcomes (good by both / by the first only / by the second only / by neither). Against the ground "
            "truth, the first judge is the toy world's.</p><table><tr><th class='l'>prompt set</th>"
            "<th class='l'>judges</th><th class='l'>kind</th><th>n</th><th>κ</th><th>agree</th><th>rate a / b</th>"
            f"<th>both</th><th>a only</th><th>b only</th><th>neither</th></tr>{''.join(body)}</table>")


def _over_refusal_html(summary: Mapping[str, Any]) -> str:
    entries = summary.get("over_refusal") or []
    tellers = sorted({j for e in entries for j in e["judges"]})
    if not entries:
        return ""
    head = "".join(f"<th>{_e(j)}</th>" for j in tellers)
    body = "".join(f"<tr><td class='l'>{_e(e['prompt_set'])}</td><td class='l'>{_e(e['model'])}</td><td>{e['n']}</td>"
                   f"<td>{percent(e['regex'])}</td>" + "".join(f"<td>{percent(e['judges'].get(j))}</td>"
                                                               for j in tellers) + "</tr>" for e in entries)
    return ("<h3>Over-refusal: benign prompts refused</h3><p class='meta'>By the refusal detector (a pattern on the "
            "answer's opening) and by each judge that can tell a refusal (the score-models and guard judges "
            f"cannot).</p><table><tr><th class='l'>prompt set</th><th class='l'>model</th><th>n</th><th>detector</th>"
            f"{head}</tr>{body}</table>")


def judge_tables(summary: Mapping[str, Any], table, col, row) -> list[Any]:
    """The terminal's judge tables, built with report_tables' helpers (`table`, `col`, `row`): the router's score
    and verdict by each judge, and the agreement (κ) per prompt kind."""
    out = []
    verdicts = [(name, v) for name, data in (summary.get("by_judge") or {}).items() for v in data.get("verdict") or []]
    if verdicts and len(summary.get("by_judge") or {}) > 1:
        t = table("Verdict by judge", "each judge choosing its own blend on dev (docs/judges.md)")
        for name, right in (("set", False), ("judge", False), ("router", True), ("verdict", False)):
            col(t, name, right)
        for name, v in verdicts:
            entry = summary["by_judge"][name]["routing"].get(v["prompt_set"]) or {}
            row(t, v["prompt_set"][-24:], name[:16], number((entry.get("router") or {}).get("score")), v["label"])
        out.append(t)
    pairs = summary.get("agreement") or []
    if pairs:
        t = table("Judge agreement", "Cohen's κ on the outcome; n answers both judged")
        for name, right in (("set", False), ("judges", False), ("kind", False), ("κ", True), ("agree", True),
                            ("n", True)):
            col(t, name, right)
        for p in pairs:
            for k in p["kinds"]:
                row(t, p["prompt_set"][-20:], f"{p['a'][:12]}/{p['b'][:12]}", k["kind"], number(k["kappa"]),
                    percent(k["agreement"]), k["n"])
        out.append(t)
    return out
