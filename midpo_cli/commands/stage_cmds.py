"""Training and ranking commands: options → recipe overrides → the same stage function the pipeline calls.

`train-sft`, `train-rm`, `train-cost`, `train-expert`, `train-baseline`, `rank`, `train-router`. With a launcher,
the command resolves the recipe, writes it into the stage folder, and runs
`python -m midpo_cli.worker` under `deepspeed`/`torchrun` (argv list, never a shell string).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt, RecipeOpt, SetOpt, recipe_from
from midpo_cli.recipe import BASELINE_KINDS, LAUNCHER_KINDS, RANK_RULES, dump_yaml


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice over one of the recipe's lists, so a new launcher or baseline is one edit in recipe.py."""
    return Enum(name, [(v, v) for v in values], type=str, module=__name__)


Launcher = _choices("Launcher", LAUNCHER_KINDS)
BaselineKind = _choices("BaselineKind", BASELINE_KINDS)


class ExpertKind(str, Enum):
    safety = "safety"
    helpfulness = "helpfulness"
    dpo = "dpo"


LauncherOpt = typer.Option(None, "--launcher", help="Run under a multi-process launcher.")
GpusOpt = typer.Option(None, "--num-gpus", min=1, help="Processes (GPUs) per node.")
NodesOpt = typer.Option(None, "--num-nodes", min=1, help="Number of nodes.")
HostfileOpt = typer.Option(None, "--hostfile", help="DeepSpeed hostfile (multi-node).")
PortOpt = typer.Option(None, "--master-port", help="Rendezvous port.")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the launcher command and exit.")
ResumeOpt = typer.Option(False, "--resume", help="Continue from the stage's latest checkpoint.")


def _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port) -> list[tuple[str, str]]:
    """Launcher flags as recipe overrides, each labelled with its flag so a bad value names the flag."""
    sets = []
    if launcher is not None:
        sets.append((f"launcher.kind={launcher.value}", "--launcher"))
    if num_gpus is not None:
        sets.append((f"launcher.num_gpus={num_gpus}", "--num-gpus"))
    if num_nodes is not None:
        sets.append((f"launcher.num_nodes={num_nodes}", "--num-nodes"))
    if hostfile is not None:
        sets.append((f"launcher.hostfile={hostfile}", "--hostfile"))
    if master_port is not None:
        sets.append((f"launcher.master_port={master_port}", "--master-port"))
    return sets


def run_stage_command(
    stage: str,
    recipe_path: Path | None,
    overrides: list[str] | None,
    extra: list[str],
    *,
    resume: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Shared body of every stage command (also used by the worker through `execute`)."""
    recipe = recipe_from(recipe_path, overrides, extra)
    if recipe.launcher.kind != "none":
        code = launch(stage, recipe, resume=resume, dry_run=dry_run)
        raise typer.Exit(code)
    if dry_run:
        console.log("--dry-run only applies with --launcher deepspeed|torchrun")
        raise typer.Exit(0)
    manifest = execute(stage, recipe, resume=resume)
    if as_json:
        console.emit_json(manifest)


def execute(stage: str, recipe, *, resume: bool, lock: bool = True) -> dict:
    """Run one stage under the run-dir lock (the worker passes lock=False: its launcher holds it)."""
    import contextlib

    from midpo_cli.engine.subnormals import flush_subnormals
    from midpo_cli.errors import Interrupted
    from midpo_cli.pipeline.run import run_lock, run_stage

    flush_subnormals()  # before any tensor op starts the intra-op threads (engine/subnormals.py)
    held = run_lock(recipe.run_dir, command=COMMANDS.get(stage, stage)) if lock else contextlib.nullcontext()
    with held:
        try:
            return run_stage(recipe, stage, resume=resume)
        except Interrupted as exc:
            raise exc.continue_with("rerun the same command with --resume to continue from it") from None


def launch(stage: str, recipe, *, resume: bool, dry_run: bool) -> int:
    import sys

    from midpo_cli.engine.launch import build_launcher_argv, format_argv, run_argv
    from midpo_cli.io import atomic_write_text
    from midpo_cli.manifest import stage_dir
    lc = recipe.launcher
    config = stage_dir(recipe.run_dir, stage) / "resolved.yaml"
    worker = ["--stage", stage, "--config", str(config)] + (["--resume"] if resume else [])
    argv = build_launcher_argv(
        lc.kind, num_gpus=lc.num_gpus, num_nodes=lc.num_nodes, hostfile=lc.hostfile,
        master_port=lc.master_port, worker_argv=worker,
    )
    if dry_run:
        sys.stdout.write(format_argv(argv) + "\n")
        return 0
    from midpo_cli.pipeline.folders import abandon_folder, finish_folder
    from midpo_cli.pipeline.owned import recording
    from midpo_cli.pipeline.run import make_context, run_lock

    with run_lock(recipe.run_dir, command=COMMANDS.get(stage, stage)):  # held for every rank's run
        ctx = make_context(recipe, stage, resume=resume)  # check and prepare once, before the ranks start
        payload = recipe.model_dump(mode="json")
        payload["launcher"]["kind"] = "none"  # the worker runs the stage in-process
        with recording(ctx.folder):  # what the ranks write is midpo's: a re-run may clear it
            atomic_write_text(config, dump_yaml(payload))
            console.log(f"launching: {format_argv(argv)}")
            code = run_argv(argv)
        (finish_folder if code == 0 else abandon_folder)(ctx.folder)
    return code


COMMANDS = {"sft": "train-sft", "reward_model": "train-rm", "cost_model": "train-cost",
            "safety_expert": "train-expert --kind safety", "helpfulness_expert": "train-expert --kind helpfulness",
            "dpo_expert": "train-expert --kind dpo", "rank": "rank", "router": "train-router",
            **{f"baseline_{k.value}": f"train-baseline --kind {k.value}" for k in BaselineKind}}


def register(app: typer.Typer) -> None:
    app.command("train-sft")(train_sft)
    app.command("train-rm")(train_rm)
    app.command("train-cost")(train_cost)
    app.command("train-expert")(train_expert)
    app.command("train-baseline")(train_baseline)
    app.command("rank")(rank)
    app.command("train-router")(train_router)


def train_sft(
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    answers: str = typer.Option(None, "--answers", help="From pair data: better or safer."),
    resume: bool = ResumeOpt,
    launcher: Launcher = LauncherOpt,
    num_gpus: int = GpusOpt,
    num_nodes: int = NodesOpt,
    hostfile: Path = HostfileOpt,
    master_port: int = PortOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Supervised fine-tuning on prompt/answer text (loss on answer tokens only)."""
    extra = _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port)
    if answers:
        extra.append((f"stages.sft.answers={answers}", "--answers"))
    run_stage_command("sft", recipe, overrides, extra, resume=resume, dry_run=dry_run, as_json=as_json)


def train_rm(
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    resume: bool = ResumeOpt,
    launcher: Launcher = LauncherOpt,
    num_gpus: int = GpusOpt,
    num_nodes: int = NodesOpt,
    hostfile: Path = HostfileOpt,
    master_port: int = PortOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train the reward (helpfulness score) model on pairs ordered by `better`."""
    extra = _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port)
    run_stage_command("reward_model", recipe, overrides, extra, resume=resume, dry_run=dry_run, as_json=as_json)


def train_cost(
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    resume: bool = ResumeOpt,
    launcher: Launcher = LauncherOpt,
    num_gpus: int = GpusOpt,
    num_nodes: int = NodesOpt,
    hostfile: Path = HostfileOpt,
    master_port: int = PortOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train the cost (safety score) model: safer pairs plus safe/unsafe signs, cost < 0 ⇔ safe."""
    extra = _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port)
    run_stage_command("cost_model", recipe, overrides, extra, resume=resume, dry_run=dry_run, as_json=as_json)


def train_expert(
    kind: ExpertKind = typer.Option(..., "--kind", help="Which expert; dpo is the plain-DPO baseline."),
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    resume: bool = ResumeOpt,
    launcher: Launcher = LauncherOpt,
    num_gpus: int = GpusOpt,
    num_nodes: int = NodesOpt,
    hostfile: Path = HostfileOpt,
    master_port: int = PortOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a LoRA expert with SPE-DPO (margin from the score model); --kind dpo: plain DPO on `better`."""
    extra = _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port)
    stage = {"safety": "safety_expert", "helpfulness": "helpfulness_expert", "dpo": "dpo_expert"}[kind.value]
    run_stage_command(stage, recipe, overrides, extra, resume=resume, dry_run=dry_run, as_json=as_json)


def train_baseline(
    kind: BaselineKind = typer.Option(..., "--kind", help=f"{' | '.join(BASELINE_KINDS)}."),
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    resume: bool = ResumeOpt,
    launcher: Launcher = LauncherOpt,
    num_gpus: int = GpusOpt,
    num_nodes: int = NodesOpt,
    hostfile: Path = HostfileOpt,
    master_port: int = PortOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train one baseline MidPO is compared with (a LoRA adapter on the experts' base, pairs and settings)."""
    extra = _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port)
    run_stage_command(f"baseline_{kind.value}", recipe, overrides, extra, resume=resume, dry_run=dry_run,
                      as_json=as_json)


def rank(
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    rule: str = typer.Option(None, "--rule", help=f"{' | '.join(RANK_RULES)} (default: the recipe's)."),
    as_json: bool = JsonOpt,
) -> None:
    """Score every pair with the reward and cost models and write D_dual by the chosen rule."""
    extra = [(f"stages.rank.rule={rule}", "--rule")] if rule else []
    run_stage_command("rank", recipe, overrides, extra, resume=False, dry_run=False, as_json=as_json)


def train_router(
    recipe: Path = RecipeOpt,
    overrides: list[str] = SetOpt,
    resume: bool = ResumeOpt,
    launcher: Launcher = LauncherOpt,
    num_gpus: int = GpusOpt,
    num_nodes: int = NodesOpt,
    hostfile: Path = HostfileOpt,
    master_port: int = PortOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train the per-layer routers that mix the two experts (everything else frozen)."""
    extra = _launcher_sets(launcher, num_gpus, num_nodes, hostfile, master_port)
    run_stage_command("router", recipe, overrides, extra, resume=resume, dry_run=dry_run, as_json=as_json)
