"""Stage folders and their manifests (docs/design.md §3).

A stage is *done* when `<run_dir>/<stage>/manifest.json` exists and its fingerprint matches the
fingerprint of the stage's resolved config, its inputs' manifests and the code version. The
manifest is written last and atomically, so a crash mid-stage never looks finished.
No torch here: `midpo pipeline plan` reads manifests without loading a model.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli import __version__
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_write_json, atomic_write_text, read_json, try_read_json

MANIFEST = "manifest.json"


def fingerprint(payload: Any) -> str:
    """Stable short hash of a JSON-able payload (key order does not matter)."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """A stage folder's manifest, or None when it has none that reads as a JSON object (not finished)."""
    data = try_read_json(Path(folder) / MANIFEST)
    return data if isinstance(data, dict) else None  # a JSON list crashed status and plan


def read_checked(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), (None, None) when absent, or (None, why it cannot be used)."""
    if not path.is_file():
        return None, ("manifest.json is not a file" if path.exists() else None)
    try:
        data = read_json(path)
    except UnicodeDecodeError:
        return None, f"{path}: not UTF-8 text"
    except InputError as exc:  # invalid JSON, named by file and line
        return None, str(exc)
    except OSError as exc:
        return None, f"{path}: unreadable ({exc.strerror})"
    if not isinstance(data, dict):
        return None, f"{path}: holds a JSON {type(data).__name__}, not an object"
    return data, None


def stage_fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, dict[str, Any] | None]) -> str:
    """What makes a stage's output what it is: its config, its inputs' fingerprints, midpo's version."""
    return fingerprint(
        {
            "stage": stage,
            "config": config,
            "inputs": {name: (m or {}).get("fingerprint") for name, m in sorted(inputs.items())},
            "midpo": __version__,
        }
    )


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"midpo": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "peft", "deepspeed", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class StageRecord:
    """What a stage returns and what its manifest keeps."""

    stage: str
    fingerprint: str
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str | None] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)


def write_manifest(folder: str | Path, record: StageRecord, config: dict[str, Any]) -> Path:
    """Write config.yaml then manifest.json (last): the stage is finished once this returns."""
    import yaml

    folder = Path(folder)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    now = time.time()
    payload = {
        "stage": record.stage,
        "fingerprint": record.fingerprint,
        "inputs": record.inputs,
        "outputs": record.outputs,
        "metrics": record.metrics,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
        "wall_s": round(now - record.started, 2),
        "versions": versions(),
        **record.extra,
    }
    return atomic_write_json(folder / MANIFEST, payload)
