"""`midpo env`: what a bug report needs — versions, accelerator, DeepSpeed ops."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

import typer

from midpo_cli import __version__, console
from midpo_cli.commands.options import JsonOpt

PACKAGES = ("torch", "transformers", "peft", "datasets", "deepspeed", "safetensors", "typer", "pydantic")


def register(app: typer.Typer) -> None:
    app.command("env")(env)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _accelerator() -> dict[str, object]:
    import torch

    info: dict[str, object] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    else:
        info["devices"] = ["cpu"]
    info["cpu_threads"] = torch.get_num_threads()
    return info


def _deepspeed_ops() -> dict[str, object]:
    """Which DeepSpeed ops are pre-built or JIT-compatible here (what `ds_report` shows)."""
    try:
        from deepspeed.ops.op_builder.all_ops import ALL_OPS
    except Exception as exc:  # deepspeed missing or broken: the report itself says so
        return {"error": f"{type(exc).__name__}: {exc}"}
    status = {}
    for name, builder in sorted(ALL_OPS.items()):
        try:
            status[name] = bool(builder.is_compatible(verbose=False))
        except Exception:
            status[name] = False
    return status


def env(as_json: bool = JsonOpt) -> None:
    """Print Python, library and accelerator versions, and DeepSpeed's op compatibility."""
    import os

    if not _has_cuda_quick():  # silence DeepSpeed's accelerator guess on CPU machines
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    report = {
        "midpo": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": _versions(),
        "accelerator": _accelerator(),
        "deepspeed_ops": _deepspeed_ops(),
    }
    if as_json:
        console.emit_json(report)
        return
    from rich.table import Table

    table = Table(title="midpo env", show_header=False)
    table.add_row("midpo", report["midpo"])
    table.add_row("python", report["python"])
    table.add_row("platform", report["platform"])
    for name, version in report["packages"].items():
        table.add_row(name, version or "[red]not installed[/red]")
    for key, value in report["accelerator"].items():
        table.add_row(key, str(value))
    ops = report["deepspeed_ops"]
    table.add_row("deepspeed ops", ", ".join(f"{k}={'ok' if v else 'no'}" for k, v in ops.items()))
    console.err.print(table)


def _has_cuda_quick() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None
