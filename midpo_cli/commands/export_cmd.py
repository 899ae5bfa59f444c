"""`midpo export`: a trained MidPO model as a plain HF folder, as PEFT adapters, or as an uploadable folder."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    model: Path = typer.Argument(..., help="MidPO model folder (midpo_config.json), e.g. runs/x/router/model; with "
                                 "--adapters also one adapter folder (an expert's or a baseline's)."),
    to: Path = typer.Option(..., "--to", help="Output folder; must not exist or be empty."),
    merged: bool = typer.Option(False, "--merged", help="Fold both experts at --gates into a plain HF model."),
    adapters: bool = typer.Option(False, "--adapters", help="Each expert as a PEFT adapter (vLLM multi-LoRA), with "
                                  "the chat template and, for a probe switch, the classifier that picks the expert."),
    midpo: bool = typer.Option(False, "--midpo", help="A self-contained MidPO folder with a model card."),
    gates: str = typer.Option(None, "--gates", help="G_SAFETY,G_HELPFULNESS in [0, 1] for --merged."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (--merged, --adapters)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run the model came from, for the --midpo card "
                                 "(default: found from <run_dir>/router/model)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
    as_json: bool = JsonOpt,
) -> None:
    """Export a MidPO model for serving stacks that do not know midpo; verified before it is renamed into place."""
    from midpo_cli.errors import InputError

    targets = [name for name, on in (("--merged", merged), ("--adapters", adapters), ("--midpo", midpo)) if on]
    if len(targets) != 1:
        raise InputError(f"choose exactly one of --merged, --adapters, --midpo (got {' '.join(targets) or 'none'})")
    if gates is not None and not merged:
        raise InputError("--gates applies to --merged only")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise InputError(f"--dtype {dtype!r}: choose fp32, bf16 or fp16")

    if merged and gates is None:
        raise InputError("--merged needs --gates G_SAFETY,G_HELPFULNESS (the fixed mix to fold in), e.g. 0.5,0.5")

    from midpo_cli.evaluation.labels import parse_gates
    from midpo_cli.modeling import export as ex

    fixed = parse_gates(gates) if merged else None
    ex.check_destination(to)
    from midpo_cli.modeling.export_adapter import export_adapter, is_adapter_folder

    single = adapters and is_adapter_folder(model)  # one expert or baseline adapter, not a MidPO model
    if not single:
        ex.midpo_config(model, targets[0])
    if single:
        result = export_adapter(model, to, dtype=dtype, trust_remote_code=trust_remote_code)
    elif fixed is not None:
        result = ex.export_merged(model, to, fixed, dtype=dtype, trust_remote_code=trust_remote_code)
    elif adapters:
        result = ex.export_adapters(model, to, dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        result = ex.export_midpo(model, to, run_dir=run_dir, trust_remote_code=trust_remote_code)
    console.log(f"export: {result['target']} → {to} (verified against {model})")
    if as_json:
        console.emit_json(result)
