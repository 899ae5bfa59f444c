"""The evaluation summary as rich tables on stderr, every table laid out within 80 columns.

Per prompt set: the models' scores (blend and dial variants left to the routing table and the report), win rates,
the toy world's ground truth, and the router against its best fixed blend. Every cell is a rich Text, never
markup: model and prompt-set names come from data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from midpo_cli import console
from midpo_cli.evaluation.formatting import RATES, compact_interval, gate_value, number, percent
from midpo_cli.evaluation.judges_report import judge_tables
from midpo_cli.evaluation.labels import is_sweep_label
from midpo_cli.evaluation.report_columns import confidence_percent, missing_note, shown_columns

WIDTH = 80  # terminal tables are laid out to fit this many columns without wrapping a cell
HEADS = {"reward": "reward↑", "cost": "cost↓", "harmless_rate": "harmless", "refusal_rate_harmful": "refuse·H",
         "refusal_rate_benign": "refuse·B", "refusal_rate": "refuse"}


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


def print_tables(summary: Mapping[str, Any]) -> None:
    """The terminal summary (module docstring) on stderr, silent under --quiet."""
    if console.quiet():
        return
    for table in terminal_tables(summary):
        console.err.print(table, width=WIDTH)


def terminal_tables(summary: Mapping[str, Any]) -> list[Any]:
    """The tables `print_tables` prints, then the legend of shortened names and what was not computed."""
    models = [m for m in summary["models"] if not is_sweep_label(m)]
    sets, set_legend = short_names(summary["prompt_sets"], 24)
    names, model_legend = short_names(models, 20)
    legend = "\n".join(set_legend + model_legend)
    tables = _score_tables(summary, sets, names)
    tables += _win_tables(summary, sets, names)
    tables += _toy_tables(summary, sets, names)
    tables += _routing_tables(summary, sets)
    tables += judge_tables(summary, _table, _col, _row)
    if legend or missing_note(summary):
        from rich.text import Text

        tables.append(Text("\n".join(x for x in (legend, missing_note(summary)) if x)))
    return tables


def _score_tables(summary: Mapping[str, Any], sets: Mapping[str, str], names: Mapping[str, str]) -> list[Any]:
    cols = [c for c in shown_columns(summary) if c[0] != "answer_tokens"]
    tables = []
    for prompt_set in summary["prompt_sets"]:
        groups = [g for g in summary["groups"] if g["prompt_set"] == prompt_set and g["model"] in names]
        if not groups:
            continue
        t = _table(f"Evaluation · {sets[prompt_set]}",
                   f"± half the {confidence_percent(summary)}% bootstrap CI; H/B = harmful/benign")
        _col(t, "model", right=False)
        _col(t, "n")
        for m, *_ in cols:
            _col(t, HEADS[m])
        for g in groups:
            _row(t, names[g["model"]], g["n"], *(compact_interval(g["metrics"].get(m), m in RATES) for m, *_ in cols))
        tables.append(t)
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
                 *(compact_interval({"mean": w["rate"], "lo": w["lo"], "hi": w["hi"]}, True) if (w := by.get(k))
                   else "—" for k in ("reward", "cost")), n)
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
            _row(t, names[e["model"]], number(e["harmful_safe"]), number(e["benign_helpful"]),
                 number(e["toy_score"]), number(e.get("gate_safety_harmful")), number(e.get("gate_safety_benign")))
        out.append(t)
    return out


def _routing_tables(summary: Mapping[str, Any], sets: Mapping[str, str]) -> list[Any]:
    from rich.text import Text

    from midpo_cli.evaluation.dial_changes import dial_lines
    from midpo_cli.evaluation.probe_switch import switch_lines
    from midpo_cli.evaluation.verdict import pareto_verdict

    routing = summary.get("routing") or {}
    judged = {k: v for k, v in routing.items() if v.get("diff")}
    out = []
    if judged:
        out.append(_router_table(judged, sets, confidence_percent(summary)))
        out.append(_stricter_table(judged, sets, confidence_percent(summary)))
    out += [Text(line) for line in switch_lines(routing) + dial_lines(routing)]
    for prompt_set, e in routing.items():
        pareto = e.get("pareto")
        if pareto and not e.get("diff"):
            out.append(Text(f"{sets.get(prompt_set, prompt_set)}: {pareto_verdict(pareto)}"))
    return out


def _blend_cell(blend: Mapping[str, Any]) -> str:
    """`0.62 (.25,1)`: a fixed blend's score and its gates."""
    return f"{number(blend.get('score'))} ({gate_value(blend['gates'][0])},{gate_value(blend['gates'][1])})"


def _router_table(judged: Mapping[str, Any], sets: Mapping[str, str], conf: int) -> Any:
    """The router against the dev-chosen blend, with the oracle and the share of headroom it captured."""
    first = next(iter(judged.values()))
    chosen = first["best_fixed"]["chosen_on"]
    how = "chosen in-sample (no dev set)" if first["in_sample"] else f"chosen on {sets.get(chosen, chosen)}"
    t = _table("Router vs the best fixed blend (toy score)",
               f"best fixed blend {how}; Δ = router − best, paired {conf}% CI; share = Δ / (oracle − best)")
    for name in ("set", "router", "best blend", "Δ [CI]", "oracle", "share"):
        _col(t, name, name != "set")
    for prompt_set, e in judged.items():
        best, oracle = e["best_fixed"], e.get("oracle") or {}
        _row(t, sets.get(prompt_set, prompt_set), number(e["router"].get("score")),
             _blend_cell(best),
             compact_interval(e["diff"], signed=True), number(oracle.get("score")), percent(e.get("share")))
    return t


def _stricter_table(judged: Mapping[str, Any], sets: Mapping[str, str], conf: int) -> Any:
    """The same Δ with categories resampled, and the router against the blend best on the set itself."""
    t = _table("Router vs fixed blends, stricter views",
               f"{conf}% CIs; by category: whole categories resampled (one task's phrasings are not "
               "independent); hindsight: the blend best on this set itself, a flattering baseline")
    for name in ("set", "Δ [CI by category]", "hindsight blend", "router − it [CI]"):
        _col(t, name, name != "set")
    for prompt_set, e in judged.items():
        h = e.get("best_in_sample") or {}
        _row(t, sets.get(prompt_set, prompt_set), compact_interval(e.get("diff_by_category"), signed=True),
             _blend_cell(h) if h else "—", compact_interval(h.get("diff_by_category") or h.get("diff"), signed=True))
    return t
