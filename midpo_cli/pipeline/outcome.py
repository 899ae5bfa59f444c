"""What `midpo pipeline run` shows when it ends, below the stages' own output: each stage's key numbers (the stage
table), the verdict of the score stage, and the next steps — the commands that chat with, export and serve what the
verdict recommends for this run.

The numbers are chosen per stage where the first few metric keys would say little: for `score`, the verdict and
router / best blend / Δ / oracle on the first reported set (the eval set), for `router`, the probe switch's threshold
and dev score and the input probe; every other stage shows its first metrics as `name=value`. Reads the run's
manifests and `score/summary.json`; no torch.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midpo_cli.evaluation.formatting import compact_interval, gate_value, number, status_value
from midpo_cli.io import try_read_json
from midpo_cli.manifest import read_manifest

ROUTER_KEYS = ("switch_threshold", "switch_dev_score", "input_probe_auroc", "gate_separation_auroc", "train_loss")
SHOWN = 4  # metrics a stage shows in the table


def stage_lines(stage: str, metrics: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The stage table's "key metrics" cell of one stage, one item a line."""
    if stage == "score":
        lines = score_lines(run_dir)
        if lines:
            return lines
    keys = [k for k in ROUTER_KEYS if metrics.get(k) is not None] if stage == "router" else list(metrics)
    return [f"{k}={status_value(metrics[k])}" for k in keys[:SHOWN]]


def score_lines(run_dir: Path) -> list[str]:
    """The verdict of each reported set, and router / best blend / Δ / oracle on the first one (the eval set)."""
    from midpo_cli.evaluation.verdict import run_verdicts

    summary = try_read_json(run_dir / "score" / "summary.json")
    items = run_verdicts(run_dir) or []
    if not isinstance(summary, dict) or not items:
        return []
    names = _short([v["prompt_set"] for v in items])
    first = (summary.get("routing") or {}).get(items[0]["prompt_set"]) or {}
    lines = [f"{names[items[0]['prompt_set']]}: {items[0]['label']}"]
    if first.get("diff"):
        best, oracle = first["best_fixed"], first.get("oracle") or {}
        blend = f"({gate_value(best['gates'][0])},{gate_value(best['gates'][1])})"
        lines += [f"router {number(first['router'].get('score'))} · best blend {number(best.get('score'))} {blend}",
                  f"Δ {compact_interval(first['diff'], signed=True)} · oracle {number(oracle.get('score'))}"]
    return lines + [f"{names[v['prompt_set']]}: {v['label']}" for v in items[1:]]


def _short(names: Sequence[str]) -> dict[str, str]:
    """`embedded:toy-safety/eval-prompts` → `eval-prompts`, when no two sets share that last part."""
    tails = [n.replace(":", "/").rstrip("/").rsplit("/", 1)[-1] for n in names]
    unique = len(set(tails)) == len(tails)
    return {n: t if unique else n for n, t in zip(names, tails, strict=True)}


# --------------------------------------------------------------------------------------------- next steps


def next_steps(run_dir: Path, items: Sequence[Mapping[str, Any]] | None, report: Path | None = None
               ) -> list[dict[str, str]]:
    """`[{"what", "command"}]`: chat with, export and serve what the first verdict recommends (else the run's
    router, as MidPO), then where the `report` is. Empty when neither names a model folder."""
    from midpo_cli.evaluation.ship import blend_name, command, export_folder

    rec = dict(((items or [{}])[0].get("recommendation")) or {})
    if not rec.get("folder"):
        router = (read_manifest(run_dir / "router") or {}).get("outputs") or {}
        rec = {"ship": "router", "folder": str(run_dir / router["model"])} if router.get("model") else {}
    if not rec:
        return [{"what": "read the report", "command": str(report)}] if report else []
    folder, q = rec["folder"], shlex.quote
    if rec["ship"] == "blend":
        gates = ",".join(f"{g:g}" for g in rec["gates"])
        steps = [("chat with it", f"midpo chat {q(folder)} --gates {gates}"), ("export it", command(rec)),
                 ("serve it", f"midpo serve {q(export_folder(folder, blend_name(rec['gates'])))}")]
    else:
        kind, to = ("--adapters", "switch") if rec["ship"] == "switch" else ("--midpo", "midpo")
        steps = [("chat with it", f"midpo chat {q(folder)}"),
                 ("export it", f"midpo export {q(folder)} {kind} --to {q(export_folder(folder, to))}"),
                 ("serve it", f"midpo serve {q(folder)}")]
    steps += [("read the report", str(report))] if report else []
    return [{"what": what, "command": text} for what, text in steps]


def print_next_steps(steps: Sequence[Mapping[str, str]]) -> None:
    """`next steps:` and one `  what: command` a line, never wrapped (commands are copied)."""
    from midpo_cli import console

    if steps and not console.quiet():
        width = max(len(s["what"]) for s in steps) + 1
        console.err.print("\n".join(["next steps:", *(f"  {s['what'] + ':':<{width}} {s['command']}" for s in steps)]),
                          soft_wrap=True, markup=False, highlight=False)
