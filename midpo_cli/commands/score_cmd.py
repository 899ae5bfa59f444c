"""`midpo score` (score answers, summarise, write the report) and `midpo report` (re-draw a report)."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.command("report")(report)


def score(
    answers: Path = typer.Argument(..., help="Answers JSONL from `midpo generate`."),
    reward_model: str = typer.Option(None, "--reward-model", help="Reward (helpfulness) score model."),
    cost_model: str = typer.Option(None, "--cost-model", help="Cost (safety) score model; cost < 0 = safe."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for scores.csv, summary.json, report.html."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Scoring batch size."),
    template: str = typer.Option("auto", "--template", help="Prompt template the score models expect: auto (the "
                                 "score model tokenizer's chat template if any, else safe-rlhf), safe-rlhf, chat."),
    refusal_pattern: list[str] = typer.Option(None, "--refusal-pattern",
                                              help="Regex marking a refusal; repeatable; replaces the built-in set."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples (0: no intervals)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the plots and report.html."),
    select_on: str = typer.Option(None, "--select-on", help="Prompt set that chooses the best fixed gate blend "
                                  "(default: the one named *dev-prompts; without one, each set in-sample)."),
    judge: list[str] = typer.Option(None, "--judge", help="A judge, as in a recipe's stages.score.judge: toy, "
                                    "score-models, 'guard: FOLDER', '{openai: {base_url: URL, model: NAME, "
                                    "api_key_env: VAR}}'; repeatable, first = each set's judge (default: toy, then "
                                    "score-models; docs/judges.md)."),
    dev_judge: str = typer.Option(None, "--dev-judge", help="The judge (by name) that chooses the dev blend "
                                  "(default: the first that can judge the dev set)."),
    judge_cache: Path = typer.Option(None, "--judge-cache", help="Folder for the LLM judge's replies (default: "
                                     "OUTPUT/judge-cache)."),
    as_json: bool = JsonOpt,
) -> None:
    """Score answers with the reward and cost models; judge them; per-model summary with bootstrap CIs; report."""
    from midpo_cli.data.template import check_template
    from midpo_cli.stages.score import score_answers

    check_template(template)
    check_score_inputs(answers, output, reward_model, cost_model, select_on)
    judges = judge_entries(judge, dev_judge)
    summary = score_answers(answers, reward_model=reward_model, cost_model=cost_model, out_dir=output,
                            batch_size=batch_size, template=template, refusal_patterns=refusal_pattern or None,
                            bootstrap=bootstrap, seed=seed, report=not no_report, select_on=select_on,
                            gate_maps=answers.parent / "gate_maps.json", judges=judges, dev_judge=dev_judge,
                            judge_cache=judge_cache or output / "judge-cache")
    console.log(f"score: {output / 'scores.csv'}, {output / 'summary.json'}")
    if as_json:
        console.emit_json(summary)


def judge_entries(specs: list[str] | None, dev_judge: str | None) -> list | None:
    """`--judge` values (YAML, as a recipe writes them) checked as a recipe's `stages.score.judge`; None: default.
    Everything a judge needs before it runs is checked here: a guard's model folder, the LLM judge's key variable
    and rubric file."""
    from pydantic import ValidationError

    from midpo_cli.errors import InputError
    from midpo_cli.pipeline.preflight import check_judges
    from midpo_cli.recipe import ScoreStage, parse_value

    values = [parse_value(s) for s in specs or []]
    try:
        stage = ScoreStage.model_validate({"judge": values or None, "dev_judge": dev_judge})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).endswith("]"))
        raise InputError(f"--judge: {where}: {first['msg'].removeprefix('Value error, ')}") from None
    check_judges(stage.judges(), "--judge")
    return stage.judge


def check_score_inputs(answers: Path, output: Path, reward_model: str | None, cost_model: str | None,
                       select_on: str | None = None) -> None:
    """Everything `score` can refuse before a score model loads: the output, the models, each row's index."""
    from midpo_cli.errors import InputError
    from midpo_cli.evaluation.answers import read_answer_rows
    from midpo_cli.io import check_output
    from midpo_cli.pipeline.preflight import check_model_ref

    check_output(output, "--output", folder=True)  # a file, or a path under one, failed after the scoring
    for flag, ref in (("--reward-model", reward_model), ("--cost-model", cost_model)):
        if ref:
            check_model_ref(flag, ref, score_model=True)
    rows = read_answer_rows(answers)
    if select_on is not None:  # a typo was ignored silently when the answers hold no gate blends
        from midpo_cli.evaluation.headroom import resolve_selection

        resolve_selection(list(dict.fromkeys(str(r["prompt_set"]) for r in rows)), f"{select_on}")
    for number, row in enumerate(rows, start=1):
        index = row.get("index")
        ok = isinstance(index, int) and not isinstance(index, bool)
        ok = ok or isinstance(index, str) and index.strip().lstrip("-").isdigit()
        if not ok:
            raise InputError(f"{answers}: row {number}: index must be an integer, got {index!r}")


def report(
    path: Path = typer.Argument(..., help="A `midpo score` output folder (or its summary.json), or a run dir."),
    screenshot: bool = typer.Option(False, "--screenshot", help="Also write report.png: the report's first screen "
                                    "at 1280×800, as headless Chromium draws it (needs chromium on PATH)."),
    as_json: bool = JsonOpt,
) -> None:
    """Re-draw the plots and report.html from scores.csv + summary.json."""
    from midpo_cli.evaluation.report_html import write_report
    from midpo_cli.evaluation.report_tables import print_tables
    from midpo_cli.evaluation.score_output import load_scores

    rows, summary, folder = load_scores(path)
    print_tables(summary)
    html = write_report(rows, summary, folder)
    console.log(f"report: {html}")
    png = None
    if screenshot:
        from midpo_cli.evaluation.report_screenshot import screenshot as take

        png = take(html)
        console.log(f"screenshot: {png}")
    if as_json:
        console.emit_json({"report": str(html), "folder": str(folder), "screenshot": str(png) if png else None})
