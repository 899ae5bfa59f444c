"""`midpo recipe check|show|new`: validate a recipe (every error at once, and every file the run needs) and print it
resolved; print or copy a shipped recipe; write a recipe for your own model and preference file."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt, SetOpt


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Validate and inspect recipes.", no_args_is_help=True)
    sub.command("check")(check)
    sub.command("show")(show)
    sub.command("new")(new)
    app.add_typer(sub, name="recipe")


def check(
    file: Path = typer.Argument(..., help="Recipe YAML file, or a shipped recipe's name."),
    overrides: list[str] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Validate FILE (and --set overrides) and every file, folder and model the stages that would run name; print
    the resolved recipe, or every problem with its line or key."""
    from rich.markup import escape

    from midpo_cli.pipeline.preflight import check_whole_run
    from midpo_cli.recipe import dump_yaml, load_recipe

    recipe = load_recipe(file, overrides or [])
    check_whole_run(recipe)
    resolved = recipe.resolved()
    if as_json:
        console.emit_json(resolved)
    else:
        typer.echo(dump_yaml(resolved), nl=False)
    console.log(f"[green]ok[/green] {escape(str(file))}", markup=True)


def show(
    name: str = typer.Argument(None, help="A shipped recipe: quickstart, local-model-cpu, ... (none: list them)."),
    to: Path = typer.Option(None, "--to", help="Copy it to this file (refused if the file exists)."),
) -> None:
    """Print a recipe shipped with midpo, or copy it with --to to edit; no NAME lists the shipped recipes."""
    from midpo_cli.errors import InputError
    from midpo_cli.io import atomic_write_text, check_output
    from midpo_cli.recipe import shipped_names, shipped_recipe

    if name is None:
        console.print_result("\n".join(shipped_names()))
        return
    text = shipped_recipe(name).read_text(encoding="utf-8")
    if to is None:
        typer.echo(text, nl=False)
        return
    if to.exists() or to.is_symlink():  # a dangling link too: the copy would replace it
        raise InputError(f"--to {to}: exists; choose another file or remove it first")
    atomic_write_text(check_output(to, "--to"), text)
    console.log(f"wrote {to}; run it with `midpo pipeline run {to}`")


def new(
    model: str = typer.Option(..., "--model", help="The model to align: a local folder, a hub name or embedded:."),
    data: str = typer.Option(..., "--data", help="One preference file in PKU-SafeRLHF's columns: .jsonl/.json/"
                             ".csv/.parquet, a save_to_disk folder (FOLDER:SPLIT) or a hub dataset org/name[:split]."),
    to: Path = typer.Option(Path("midpo.yaml"), "--to", help="The recipe to write."),
    out_data: Path = typer.Option(None, "--out-data", help="Folder for the split files (default: next to the "
                                  "recipe, <name>-data/)."),
    run_dir: str = typer.Option(None, "--run-dir", help="The recipe's run_dir (default: runs/<name>)."),
    columns: str = typer.Option(None, "--columns", help="Map columns onto midpo's: prompt=question,"
                                "is_harmful=flag (data.columns' format)."),
    sft: str = typer.Option("auto", "--sft", help="auto (off when the model has a chat template, else on the "
                            "train pairs' better answers), off, or a prompt/answer file."),
    preset: str = typer.Option("auto", "--preset", help="Training settings: tiny (the embedded model from scratch), "
                               "pretrained, or auto (tiny for embedded:, else pretrained)."),
    dev: int = typer.Option(None, "--dev", help="Dev prompts (default: a tenth of the prompts, 4 … 100)."),
    eval_: int = typer.Option(None, "--eval", help="Eval prompts (default: as --dev)."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of the prompts whose pairs are test "
                                        "pairs (the score models' audits)."),
    max_train: int = typer.Option(None, "--max-train", help="At most this many train pairs (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split (and the recipe's train.seed)."),
    force: bool = typer.Option(False, "--force", help="Replace files that exist with other content."),
) -> None:
    """Split one preference file by prompt into train/test pairs and dev/eval prompt sets, and write a recipe
    for MODEL that runs on them; prints the one command that runs it (docs/own-data.md)."""
    from rich.markup import escape

    from midpo_cli.data.schema import parse_columns_option
    from midpo_cli.data.split import Sizes
    from midpo_cli.pipeline.new_recipe import NewOptions, new_recipe, summary_lines

    opts = NewOptions(model=model, data=data, to=to, out_data=out_data, run_dir=run_dir,
                      columns=parse_columns_option(columns), sft=sft, preset=preset, force=force,
                      sizes=Sizes(dev=dev, eval=eval_, test_fraction=test_fraction, max_train=max_train, seed=seed))
    run = new_recipe(opts)
    for line in summary_lines(run):
        console.log(escape(line))
    written = [str(p) for p in run.changed]
    console.log(f"wrote {escape(', '.join(written))}" if written else "every file was already up to date")
    typer.echo(f"midpo pipeline run {to}")  # stdout: the one command, for a script to run
