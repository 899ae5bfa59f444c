"""`midpo pipeline run|plan|status`: the whole method from one recipe, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt, SetOpt, recipe_from
from midpo_cli.evaluation.formatting import status_value
from midpo_cli.recipe import ALL_STAGES, BASELINE_STAGES, OPTIONAL_STAGES, STAGE_ORDER

StageHelp = f"One of: {', '.join(STAGE_ORDER)}."


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Run, plan and inspect the whole pipeline.", no_args_is_help=True)
    sub.command("run")(run)
    sub.command("plan")(plan)
    sub.command("status")(status)
    app.add_typer(sub, name="pipeline")


def _check_stage_names(names: list[str]) -> None:
    from midpo_cli.errors import InputError

    bad = [n for n in names if n not in ALL_STAGES]
    if bad:
        raise InputError(f"unknown stage {', '.join(bad)}; stages: {', '.join(ALL_STAGES)}")


def _selection(start: str | None, until: str | None, only: list[str] | None, recipe=None) -> list[str]:
    from midpo_cli.pipeline.graph import select_stages

    _check_stage_names([s for s in (start, until) if s] + list(only or []))
    return select_stages(start=start, until=until, only=only, recipe=recipe)


def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, or a shipped recipe by name (`midpo recipe show`)."),
    overrides: list[str] = SetOpt,
    start: str = typer.Option(None, "--from", help=f"First stage to run. {StageHelp}"),
    until: str = typer.Option(None, "--until", help="Last stage to run."),
    only: list[str] = typer.Option(None, "--only", help="Run only this stage (repeatable)."),
    force: list[str] = typer.Option(None, "--force", help="Re-run this stage even if done (repeatable)."),
    launcher: str = typer.Option(None, "--launcher", help="none | deepspeed | torchrun for training stages."),
    num_gpus: int = typer.Option(None, "--num-gpus", min=1),
    as_json: bool = JsonOpt,
) -> None:
    """Run every stage in dependency order; finished stages with unchanged settings are skipped."""
    from midpo_cli.pipeline.run import run_pipeline

    extra = [(f"launcher.kind={launcher}", "--launcher")] if launcher else []
    extra += [(f"launcher.num_gpus={num_gpus}", "--num-gpus")] if num_gpus else []
    cfg = recipe_from(recipe, overrides, extra)
    _check_stage_names(list(force or []))
    stages = _selection(start, until, only, cfg)
    summary = run_pipeline(cfg, stages=stages, force=set(force or []))
    _print_summary(cfg, summary)
    verdict = _print_verdict(Path(cfg.run_dir)) if any(row["stage"] == "score" for row in summary) else None
    steps = _print_next_steps(Path(cfg.run_dir), verdict)
    if as_json:
        console.emit_json({"run_dir": cfg.run_dir, "stages": summary, "verdict": verdict, "next_steps": steps})


def _print_verdict(run_dir: Path) -> list[dict] | None:
    """The score stage's verdict (midpo_cli.evaluation.verdict), below the stage table, where a finished run ends."""
    from midpo_cli.evaluation.verdict import print_verdicts, run_verdicts

    verdict = run_verdicts(run_dir)
    print_verdicts(verdict or [])
    return verdict


def _print_next_steps(run_dir: Path, verdict: list[dict] | None) -> list[dict]:
    """The commands that chat with, export and serve what the verdict recommends (midpo_cli.pipeline.outcome)."""
    from midpo_cli.pipeline.outcome import next_steps, print_next_steps

    steps = next_steps(run_dir, verdict, report=report_path(run_dir))
    print_next_steps(steps)
    return steps


def _print_summary(cfg, summary: list[dict]) -> None:
    from rich.text import Text

    from midpo_cli.pipeline.outcome import stage_lines

    # progress, so on stderr; wrapped like the status table (a metric name folds, never ends in '…')
    table = console.table(f"pipeline {cfg.run_dir}", ["stage", "action", "wall s", "key metrics"])
    for row in summary:
        lines = stage_lines(row["stage"], row["metrics"], Path(cfg.run_dir))
        table.add_row(row["stage"], row["action"], f"{row['wall_s']:.0f}", Text("\n".join(lines)))
    if not console.quiet():
        console.err.print(table)


def report_path(run_dir: Path) -> Path | None:
    """The score stage's report.html: the path its manifest records, else `score/report.html`."""
    from midpo_cli.manifest import read_manifest

    outputs = (read_manifest(run_dir / "score") or {}).get("outputs", {})
    candidates = [Path(outputs["report"])] if outputs.get("report") else []
    candidates = [c if c.is_absolute() else run_dir / c for c in candidates]
    for path in [*candidates, run_dir / "score" / "report.html", run_dir / "score" / "report" / "report.html"]:
        if path.is_file():
            return path
    return None


def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML, or a shipped recipe by name (`midpo recipe show`)."),
    overrides: list[str] = SetOpt,
    start: str = typer.Option(None, "--from"),
    until: str = typer.Option(None, "--until"),
    only: list[str] = typer.Option(None, "--only"),
    force: list[str] = typer.Option(None, "--force"),
    as_json: bool = JsonOpt,
) -> None:
    """Show each stage's status (done / will run / will resume / will restore / will fail / blocked / refused) and
    why; loads no model."""
    from rich.text import Text

    from midpo_cli.pipeline.graph import plan as make_plan
    from midpo_cli.pipeline.preflight import plan_with_problems

    cfg = recipe_from(recipe, overrides)
    rows = plan_with_problems(cfg, make_plan(cfg, _selection(start, until, only, cfg), set(force or [])))
    if as_json:
        console.emit_json({"run_dir": cfg.run_dir, "stages": rows})
        return
    table = console.table(f"plan for {cfg.run_dir}", ["stage", "status", "why", "depends on"])
    colours = {"done": "green", "will run": "yellow", "will resume": "cyan", "will restore": "cyan", "blocked": "red",
               "refused": "red", "will fail": "red"}
    for row in rows:
        table.add_row(row["stage"], Text(row["status"], style=colours[row["status"]]), Text(row["why"]),
                      ", ".join(row["depends_on"]))
    console.print_result(table)


def status(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = JsonOpt,
) -> None:
    """What ran, when, how long, and its key metrics."""
    from midpo_cli.errors import InputError
    from midpo_cli.pipeline.status import stage_state

    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    rows = []
    for stage in ALL_STAGES:
        if stage in (*OPTIONAL_STAGES, *BASELINE_STAGES) and not (run_dir / stage).exists():
            continue
        found = stage_state(run_dir, stage)
        m = found["manifest"] or {}
        metrics = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
        rows.append({"stage": stage, "state": found["state"], "why": found["why"], "finished_at": m.get("finished_at"),
                     "wall_s": m.get("wall_s"), "metrics": metrics})
    if as_json:
        console.emit_json({"run_dir": str(run_dir), "stages": rows})
        return
    from rich.text import Text

    table = console.table(f"status of {run_dir}", ["stage", "state", "why", "finished", "wall s", "key metrics"])
    for r in rows:
        numbers = [(k, v) for k, v in r["metrics"].items() if isinstance(v, int | float)][:5]
        metrics = "\n".join(f"{k}={status_value(v)}" for k, v in numbers)  # one a line: a long name folds alone
        wall = r["wall_s"] if isinstance(r["wall_s"], int | float) else 0
        table.add_row(r["stage"], r["state"], Text(r["why"]), _when(r["finished_at"]), f"{wall:.0f}", Text(metrics))
    console.print_result(table)


def _when(finished_at: str | None) -> str:
    """`2026-12-05T08:20:11+00:00` as `2026-12-05 08:20`: two short words that wrap at 80 columns."""
    return (str(finished_at) if finished_at else "")[:16].replace("T", " ")
