"""Why a finished stage re-runs, in recipe keys: `stages.sft.lr 0.002 → 0.001`, `inputs: sft re-runs`.

A stage folder keeps the settings slice its fingerprint covered (`.settings.json`, written when the
folder is prepared); comparing it with what the recipe asks now names the keys. Folders from before
that file only have `config.yaml` (the stage's own section), so only `stages.<stage>.*` can be named.
No torch here: `pipeline plan` uses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from midpo_cli.io import try_read_json

SETTINGS_FILE = ".settings.json"
SHOWN = 4  # keys named per stage; the rest are counted


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def recipe_keys(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    """A stage's fingerprinted settings (graph.stage_config) as recipe keys: `stage.lr` → `stages.sft.lr`."""
    renamed = {"stage": f"stages.{stage}", "zero_stage": "deepspeed.zero_stage"}
    return flatten({renamed.get(k, k): v for k, v in config.items()})


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key old → new` for every flattened key whose value differs (a missing key shows as `unset`)."""
    out = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, "unset"), now.get(key, "unset")
        if old != new:
            out.append(f"{key} {_short(old)} → {_short(new)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def recorded_settings(folder: Path, stage: str) -> dict[str, Any] | None:
    """The recipe keys the finished result in `folder` was made with, or None when nothing says."""
    settings = folder / SETTINGS_FILE
    if settings.is_file():
        recorded = try_read_json(settings)
        return recipe_keys(stage, recorded) if isinstance(recorded, dict) else None
    config = folder / "config.yaml"
    if config.is_file():
        try:
            return flatten(yaml.safe_load(config.read_text(encoding="utf-8")) or {}, f"stages.{stage}")
        except (OSError, yaml.YAMLError):
            return None
    return None


def why_rerun(folder: Path, stage: str, config_now: dict[str, Any], rerunning_inputs: list[str]) -> str:
    """One line naming what changed since the finished result: keys, then inputs that re-run."""
    parts = []
    before = recorded_settings(folder, stage)
    if before is not None:
        now = recipe_keys(stage, config_now)
        if not (folder / SETTINGS_FILE).is_file():  # config.yaml: only the keys it holds are known
            now = {k: v for k, v in now.items() if k in before}
        keys = changed_keys(before, now)
        if keys:
            more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
            parts.append("settings: " + "; ".join(keys[:SHOWN]) + more)
    if rerunning_inputs:
        parts.append(f"inputs: {', '.join(rerunning_inputs)} re-run{'s' if len(rerunning_inputs) == 1 else ''}")
    return "; ".join(parts) or "settings or inputs changed (midpo version, or an input's result)"
