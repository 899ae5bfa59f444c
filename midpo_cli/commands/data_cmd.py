"""`midpo data show SPEC` and `midpo data list`: what a dataset holds and what each stage would keep.

Before a run costs minutes, show the row counts before and after every stage filter, the drop counts
by reason, token lengths with the tokenizer that will be used, and a few formatted examples. Tables
go to stderr; `--json` puts the same summary on stdout. torch/transformers are imported only when
token statistics are asked for.
"""

from __future__ import annotations

import statistics
from typing import Any

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt
from midpo_cli.errors import InputError

STAGES = ("reward_model", "cost_model", "safety_expert", "helpfulness_expert", "dpo", "safedpo", "router", "sft")
DEFAULT_TOKENIZER = "embedded:tiny-llama"
TOKEN_SAMPLE = 2000

data_app = typer.Typer(help="Inspect datasets: counts per stage filter, drops, token lengths, examples.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("list")
def list_cmd(as_json: bool = JsonOpt) -> None:
    """List the embedded datasets and models."""
    from midpo_cli.assets import list_embedded

    names = list_embedded()
    if as_json:
        console.emit_json(names)
        return
    console.print_result("\n".join(names))  # one name a line, whole, on stdout: `midpo data list | grep eval`


@data_app.command("show")
def show(
    spec: str = typer.Argument(..., help="embedded:NAME/SPLIT, org/name[/config][:split], or a local path."),
    stage: str | None = typer.Option(
        None, "--stage", help=f"One of: {', '.join(STAGES)}. Default: every pair stage."
    ),
    rows: int = typer.Option(3, "--rows", min=0, help="How many formatted examples to show."),
    columns: str | None = typer.Option(None, "--columns", help="Map columns: prompt=question,response_0=a."),
    rule: str = typer.Option("labels", "--rule", help="The router row's filter: labels (the paper's D_dual) or "
                             "agree. The pipeline's rank stage chooses the router's pairs by stages.rank.rule "
                             "instead (default joint; `midpo rank --rule`)."),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help=f"Tokenizer for length stats (default {DEFAULT_TOKENIZER}; 'none' skips)."
    ),
    template: str = typer.Option("safe-rlhf", "--template", help="Prompt template: safe-rlhf or chat."),
    max_length: int = typer.Option(256, "--max-length", min=9, help="Max tokens of prompt + answer."),
    as_json: bool = JsonOpt,
) -> None:
    """Row counts before/after each stage filter, drops by reason, token lengths, examples."""
    from midpo_cli.data.readers import load_rows
    from midpo_cli.data.schema import parse_columns_option
    from midpo_cli.data.template import check_template

    if stage is not None and stage not in STAGES:
        raise InputError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}")
    check_template(template)
    table = load_rows(spec, columns=parse_columns_option(columns))
    summary = summarize(table, stage, rule=rule, template=template, max_length=max_length,
                        tokenizer_name=tokenizer, n_examples=rows)
    if not console.quiet():
        print_summary(summary)
    if as_json:
        console.emit_json(summary)
    errors = [s["error"] for s in summary["stages"].values() if s.get("error")]
    if stage is not None and errors:
        raise InputError(errors[0])


def detect_kind(cols: list[str], stage: str | None) -> str:
    """pairs (canonical), preference (prompt/chosen/rejected), sft (prompt/answer) or prompts."""
    from midpo_cli.data.filters import is_preference_table

    if stage == "sft" or (stage is None and "answer" in cols and "response_0" not in cols):
        return "sft"
    if is_preference_table(cols):
        return "preference"
    if stage is None and "response_0" not in cols:
        return "prompts"
    return "pairs"


def summarize(table, stage: str | None, *, rule: str, template: str, max_length: int,
              tokenizer_name: str | None, n_examples: int) -> dict[str, Any]:
    """The whole report as plain data (what --json prints)."""
    from midpo_cli.data.filters import PAIR_STAGES, select_pairs, select_prompts

    kind = detect_kind(table.columns, stage)
    out: dict[str, Any] = {"source": table.source, "kind": kind, "rows": len(table.rows),
                           "columns": table.columns, "skipped": table.skipped, "stages": {}}
    tok, out["tokenizer"] = _tokenizer(tokenizer_name)
    if kind == "prompts":
        sel = select_prompts(table, allow_empty=True)
        out["stages"]["prompts"] = {"counts": sel.counts, "drop_examples": sel.examples}
        out["tokens"] = _prompt_tokens([p["prompt"] for p in sel.prompts], tok, template)
        out["examples"] = [{"row": p["row"] + 1, "prompt": _shown_prompt(p["prompt"], template, tok),
                            "category": p["category"], "is_harmful": p["is_harmful"]}
                           for p in sel.prompts[:n_examples]]
        return out
    if kind == "sft":
        return _sft_summary(out, table, tok, template, max_length, n_examples)
    names = [stage] if stage else [s for s in PAIR_STAGES
                                   if kind == "pairs" or s not in ("cost_model", "safety_expert")]
    selections = {}
    for name in names:
        sel = select_pairs(table, name, rule=rule if name == "router" else None, allow_empty=True)
        selections[name] = sel
        out["stages"][name] = {"counts": sel.counts, "steps": sel.steps, "drop_examples": sel.examples,
                               "error": sel.error}
    shown = selections[stage or names[0]]
    out["tokens"] = _pair_tokens(shown.pairs, tok, template, max_length, stage or names[0])
    out["examples"] = [
        {"row": p.row + 1, "stage": stage or names[0], "prompt": _shown_prompt(p.prompt, template, tok),
         "chosen": p.chosen, "rejected": p.rejected, "chosen_safe": p.chosen_safe,
         "rejected_safe": p.rejected_safe, **p.meta}
        for p in shown.pairs[:n_examples]
    ]
    return out


def _sft_summary(out: dict[str, Any], table, tok, template: str, max_length: int, n: int) -> dict[str, Any]:
    from midpo_cli.data.schema import SFT_COLUMNS, require_columns

    require_columns(table.columns, SFT_COLUMNS, table.source, "stage sft")
    out["examples"] = [{"row": i + 1, "prompt": _shown_prompt(str(r.get("prompt")), template, tok),
                        "answer": r.get("answer")} for i, r in enumerate(table.rows[:n])]
    if tok is None:
        out["stages"]["sft"] = {"counts": {"rows_in": len(table.rows)}, "error": None}
        out["tokens"] = None
        return out
    from midpo_cli.data.tokenize import encode_sft

    feats, counts = encode_sft(table.rows[:TOKEN_SAMPLE], tok, template, max_length)
    out["stages"]["sft"] = {"counts": counts, "error": None}
    out["tokens"] = {"sampled_rows": min(len(table.rows), TOKEN_SAMPLE), "max_length": max_length,
                     "prompt": _stats([f["prompt_len"] for f in feats]),
                     "answer": _stats([len(f["input_ids"]) - f["prompt_len"] for f in feats]),
                     "total": _stats([len(f["input_ids"]) for f in feats])}
    return out


def _pair_tokens(pairs, tok, template: str, max_length: int, stage: str) -> dict[str, Any] | None:
    if tok is None or not pairs:
        return None
    from midpo_cli.data.tokenize import encode_pairs

    sample = pairs[:TOKEN_SAMPLE]
    try:
        feats, counts = encode_pairs(sample, tok, template, max_length)
    except InputError as exc:  # the report still shows the counts; the message says what emptied it
        return {"stage": stage, "error": str(exc)}
    return {
        "stage": stage, "sampled_pairs": len(sample), "max_length": max_length, "counts": counts,
        "prompt": _stats([f["chosen_prompt_len"] for f in feats]),
        "chosen": _stats([len(f["chosen_input_ids"]) - f["chosen_prompt_len"] for f in feats]),
        "rejected": _stats([len(f["rejected_input_ids"]) - f["rejected_prompt_len"] for f in feats]),
        "total": _stats([len(f[k]) for f in feats for k in ("chosen_input_ids", "rejected_input_ids")]),
    }


def _prompt_tokens(prompts: list[str], tok, template: str) -> dict[str, Any] | None:
    if tok is None or not prompts:
        return None
    from midpo_cli.data.tokenize import encode_prompts

    ids, _ = encode_prompts(prompts[:TOKEN_SAMPLE], tok, template)
    return {"sampled_prompts": len(ids), "prompt": _stats([len(x) for x in ids])}


def _stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "p50": ordered[len(ordered) // 2],
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


def _shown_prompt(prompt: str, template: str, tok) -> str:
    from midpo_cli.data.template import format_prompt

    if template == "chat" and tok is None:
        return prompt
    return format_prompt(prompt, template, tok)


def _tokenizer(name: str | None):
    """(tokenizer or None, note). The default is skipped quietly when the embedded model is not shipped."""
    if name is not None and name.lower() == "none":
        return None, None
    if name is None:
        from midpo_cli.assets import resolve_embedded

        try:
            resolve_embedded(DEFAULT_TOKENIZER)
        except InputError:
            return None, None
        name = DEFAULT_TOKENIZER
    from midpo_cli.modeling.loading import load_tokenizer

    return load_tokenizer(name), name


def print_summary(summary: dict[str, Any]) -> None:
    """Rich tables on stderr: one column per stage, one row per count."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    err = console.err
    err.print(f"[bold]{escape(summary['source'])}[/bold]: {summary['rows']} rows ({summary['kind']}); "
              f"columns: {escape(', '.join(map(str, summary['columns'])))}", highlight=False)
    for key, value in (summary.get("skipped") or {}).items():
        err.print(f"skipped while reading: {key} {value}", markup=False)
    stages = summary["stages"]
    keys: dict[str, None] = {}
    for s in stages.values():
        for k in [*s.get("steps", {}), *s["counts"]]:
            keys.setdefault(k, None)
    table = RichTable(title="rows per stage (steps: rows left; dropped: by reason)")  # cells: our own names
    table.add_column("")
    for name in stages:
        table.add_column(name, justify="right")
    for k in keys:
        cells = [str(s.get("steps", {}).get(k, s["counts"].get(k, ""))) for s in stages.values()]
        table.add_row(escape(str(k)), *cells)
    err.print(table)
    for name, s in stages.items():
        if s.get("error"):
            console.warn(s["error"])
        for reason, where in (s.get("drop_examples") or {}).items():
            err.print(f"  {name}: {reason}: {escape('; '.join(where))}", highlight=False)
    tokens = summary.get("tokens")
    if tokens and "error" not in tokens:
        t = RichTable(title=f"token lengths ({escape(str(summary.get('tokenizer')))})")
        t.add_column("")
        for c in ("min", "mean", "p50", "p95", "max"):
            t.add_column(c, justify="right")
        for part in ("prompt", "chosen", "rejected", "answer", "total"):
            if tokens.get(part):
                t.add_row(part, *[str(tokens[part][c]) for c in ("min", "mean", "p50", "p95", "max")])
        err.print(t)
        if tokens.get("counts"):
            err.print(f"encoding: {tokens['counts']}", highlight=False, markup=False)
    elif tokens:
        console.warn(tokens["error"])
    elif summary.get("tokenizer") is None:
        err.print(f"(no token statistics: pass --tokenizer NAME; the default {DEFAULT_TOKENIZER} is used "
                  "when it is shipped)", markup=False)
    for ex in summary.get("examples", []):
        err.print(f"[dim]── row {ex['row']}[/dim]", highlight=False)
        for k, v in ex.items():
            if k != "row":
                err.print(f"[bold]{escape(str(k))}[/bold]: {escape(str(v))}", highlight=False)
