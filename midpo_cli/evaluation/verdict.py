"""The report's verdict: per reported prompt set, whether the router earned its place, as an outcome, one computed
sentence with every number, and three short lines that say what to ship (midpo_cli.evaluation.ship).

docs/design.md §2.12 gives the decision table; `decide` is it, as a pure function of four facts, and `verdicts`
reads those facts from a score summary (`summary["routing"]`, `summary["gates"]`, `summary["router_probe"]`):

1. the input-probe ceiling (the router stage's `input_probe_auroc`): at or below `PROBE_FLOOR` no router on this
   base can separate the prompt kinds, whatever the rest says — **cannot route on this base**;
2. router − the dev-chosen blend: a *clear* difference has every available 95 % CI (by prompts, and by categories
   where prompts have them) on one side of 0; otherwise it is a tie — **loses** / **ties the best blend**;
3. when it clearly beats the dev-chosen blend: it **routes and wins** only if it also clearly beats the blend best
   on this set in hindsight *and* its safety gate separates harmful from benign answers (`gate_stats`: AUROC ≥
   0.6 and gap ≥ 0.1, no collapse warning); else it **wins without routing**, with the reasons that failed.

No sentence is ever written by hand: a set no judge can judge, or whose dev-chosen blend did not answer it, gets
"no verdict" and why. The outcomes are those of the set's judge (midpo_cli.evaluation.judge_summary; the routing
entry names it), and the sentence says which. Pure except `router_probe` and `run_verdicts`, which read files, and
`print_verdicts`, which writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.evaluation import ship
from midpo_cli.evaluation.formatting import gate_pair, number, signed_bounds, signed_interval
from midpo_cli.evaluation.gate_stats import MIN_AUROC, collapse_warnings
from midpo_cli.io import try_read_json

PROBE_FLOOR = MIN_AUROC  # input probe ≤ this: the base cannot tell the prompt kinds apart (design §8)
LABELS = {
    "routes_and_wins": "routes and wins",
    "wins_without_routing": "wins without routing",
    "ties": "ties the best blend",
    "loses": "loses",
    "cannot_route": "cannot route on this base",
    "no_verdict": "no verdict",
}


def ci_side(*cis: Mapping[str, Any] | None) -> int | None:
    """+1 when every given interval lies above 0, −1 when every one lies below, 0 otherwise (a tie).

    None intervals (a view that does not exist, e.g. no categories) are left out; None when none is given.
    An interval without bounds (`--bootstrap 0`) is a tie: without a CI nothing is a win or a loss.
    """
    present = [c for c in cis if c is not None and c.get("mean") is not None]
    if not present:
        return None
    if any(c.get("lo") is None or c.get("hi") is None for c in present):
        return 0
    if all(c["lo"] > 0 for c in present):
        return 1
    if all(c["hi"] < 0 for c in present):
        return -1
    return 0


def decide(*, vs_dev: int | None, vs_hindsight: int | None, routes: bool | None, probe: float | None) -> str:
    """The decision table (docs/design.md §2.12), first matching row wins; returns a key of LABELS.

    vs_dev / vs_hindsight: `ci_side` of router − the dev-chosen blend / − the blend best on this set in
    hindsight (None: not measured); routes: the safety gate separates the prompt kinds (None: not measured);
    probe: the router input's held-out probe AUROC (None: not measured).
    """
    if probe is not None and probe <= PROBE_FLOOR:
        return "cannot_route"
    if vs_dev is None:
        return "no_verdict"
    if vs_dev < 0:
        return "loses"
    if vs_dev == 0:
        return "ties"
    if routes is True and vs_hindsight == 1:
        return "routes_and_wins"
    return "wins_without_routing"


def gate_separation(summary: Mapping[str, Any], model: str, prompt_set: str) -> dict[str, Any] | None:
    """The router's safety-gate separation on this set's answers (`summary["gates"]`), or None."""
    for g in summary.get("gates") or []:
        if g.get("model") == model and g.get("prompt_set") == prompt_set:
            return g.get("separation")
    return None


def routes(sep: Mapping[str, Any] | None) -> bool | None:
    """The gates route when neither AUROC nor gap is missing and `gate_stats.collapse_warnings` finds nothing."""
    if not sep or sep.get("auroc") is None or sep.get("gap") is None:
        return None
    return not collapse_warnings(dict(sep))


def verdict(entry: Mapping[str, Any], sep: Mapping[str, Any] | None, probe: float | None,
            prompt_set: str, *, switch_sep: Mapping[str, Any] | None = None, folders: Mapping[str, str] | None = None,
            conf: int = 95) -> dict[str, Any]:
    """One prompt set's verdict from its routing entry, its gate separation and the probe ceiling: the outcome, the
    sentence with every number, and what to ship (midpo_cli.evaluation.ship: `lines`, `recommendation`).

    `switch_sep` is the probe switch's gate separation on this set (its answers are in `entry["probe_switch"]`);
    `folders` maps a model label to the folder generate answered with, for the recommendation's command."""
    hind = entry.get("best_in_sample") or {}
    facts = {"vs_dev": ci_side(entry.get("diff"), entry.get("diff_by_category")),
             "vs_hindsight": ci_side(hind.get("diff"), hind.get("diff_by_category")) if hind else None,
             "routes": routes(sep), "probe": probe}
    outcome = decide(**facts)
    head = f"{LABELS[outcome]}{_reasons(outcome, facts, entry, sep)}"
    evidence = _evidence(entry, sep, probe)
    switch = entry.get("probe_switch") or {}
    holds = bool(switch.get("diff")) and (ci_side(switch["diff"]) or 0) <= 0 and routes(switch_sep) is True
    rec = ship.recommend(facts, entry, switch_holds=holds)
    rec["folder"] = (folders or {}).get(rec["model"]) if rec["model"] else None
    rec["command"] = ship.command(rec)
    return {"prompt_set": prompt_set, "outcome": outcome, "label": LABELS[outcome], "facts": facts,
            "judge": entry.get("judge"), "judge_graded": entry.get("judge_graded"),
            "sentence": f"{head} — {evidence}." if evidence else f"{head}.",
            "lines": ship.three_lines(outcome, facts, entry, sep, rec, rec["command"], conf), "recommendation": rec}


def verdicts(summary: Mapping[str, Any], folders: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One verdict per reported prompt set of `summary["routing"]` (the selection set chooses, so it has none);
    `folders` (default: the summary's `model_specs`) name each model's folder for the recommended command."""
    probe = (summary.get("router_probe") or {}).get("input_probe_auroc")
    folders = folders if folders is not None else summary.get("model_specs")
    conf = round(100 * (summary.get("bootstrap") or {}).get("confidence", 0.95))
    out = []
    for prompt_set, entry in (summary.get("routing") or {}).items():
        sep = gate_separation(summary, entry["router"]["model"], prompt_set)
        switch_sep = gate_separation(summary, (entry.get("probe_switch") or {}).get("model", ""), prompt_set)
        out.append(verdict(entry, sep, probe, prompt_set, switch_sep=switch_sep, folders=folders, conf=conf))
    return out


# --------------------------------------------------------------------------------------------- the words


def _reasons(outcome: str, facts: Mapping[str, Any], entry: Mapping[str, Any], sep: Mapping[str, Any] | None) -> str:
    """The parenthesis after the label: which facts decided it."""
    if outcome == "cannot_route":
        return f" (input probe AUROC {facts['probe']:.2f} ≤ {PROBE_FLOOR:g})"
    if outcome == "no_verdict":
        if not entry.get("metric"):
            return " (no judge can judge this set: see the Pareto test of reward and cost)"
        return " (no dev-chosen blend: the dev judge cannot judge the dev set, or the blend did not answer this set)"
    if outcome != "wins_without_routing":
        return ""
    why = []
    hind = entry.get("best_in_sample") or {}
    if facts["vs_hindsight"] is None:
        why.append("no blend-in-hindsight comparison")
    elif facts["vs_hindsight"] < 1:
        verb = "ties" if facts["vs_hindsight"] == 0 else "beats"
        why.append(f"dev/eval disagreement: the blend best on this set, {_gates(hind['gates'])}, {verb} it")
    if facts["routes"] is None:
        why.append("gate separation not measured")
    elif not facts["routes"]:
        why.append(f"the safety gate does not separate harmful from benign prompts (AUROC {sep['auroc']:.2f}, "
                   f"gap {sep['gap']:+.2f})")
    return f" ({'; '.join(why)})"


def _evidence(entry: Mapping[str, Any], sep: Mapping[str, Any] | None, probe: float | None) -> str:
    """The numbers every verdict shows, whatever it is."""
    parts = [_judged_by(entry)] if entry.get("judge") and entry.get("diff") else []
    best, router = entry.get("best_fixed") or {}, entry.get("router") or {}
    if entry.get("diff") and best:
        chosen = "the blend chosen on this set (no dev set)" if best.get("in_sample") else "the dev-chosen blend"
        parts.append(f"router {number(router.get('score'))} vs {chosen} {_gates(best['gates'])} "
                     f"{number(best.get('score'))}: {_views(entry['diff'], entry.get('diff_by_category'))}")
    hind = entry.get("best_in_sample") or {}
    if hind.get("diff"):
        parts.append(f"vs the blend best here in hindsight {_gates(hind['gates'])} {number(hind.get('score'))}: "
                     f"{_views(hind['diff'], hind.get('diff_by_category'))}")
    if sep and sep.get("auroc") is not None:
        parts.append(f"safety gate AUROC {sep['auroc']:.2f}, gap {sep['gap']:+.2f}")
    if probe is not None:
        parts.append(f"input probe {probe:.2f}")
    return "; ".join(parts)


def _judged_by(entry: Mapping[str, Any]) -> str:
    """`judged by score-models (self-graded)`: which judge's outcomes the numbers are, and whether it grades the
    experts with the score models they were trained against (docs/judges.md)."""
    graded = entry.get("judge_graded")
    return f"judged by {entry['judge']}" + (f" ({graded})" if graded in ("self-graded", "independent") else "")


def _views(diff: Mapping[str, Any], by_category: Mapping[str, Any] | None) -> str:
    """`Δ +0.14 [+0.06, +0.21] by prompts, [−0.03, +0.33] by categories` (the second where it exists)."""
    text = f"Δ {signed_interval(diff)} by prompts"
    if not by_category:
        return text
    bounds = by_category.get("lo") is not None and by_category.get("hi") is not None
    return f"{text}, {signed_bounds(by_category['lo'], by_category['hi']) if bounds else 'no CI'} by categories"


def _gates(gates: Sequence[float]) -> str:
    return f"({gate_pair(gates, ', ')})"


def pareto_verdict(pareto: Mapping[str, Any]) -> str:
    """One sentence: does any fixed blend Pareto-dominate the router (reward and cost, with CIs)? For prompt sets
    without a ground-truth judge, where the verdict above has nothing to decide on."""
    sig = [b for b in pareto["by"] if b["significant"]]
    dom = [b for b in pareto["by"] if b["dominates"]]
    where = f"blends chosen on {pareto['candidates_chosen_on']}"
    if sig:
        return (f"the fixed blend ({gate_pair(sig[0]['gates'])}) Pareto-dominates the router: higher reward and lower "
                f"cost, both CIs above 0 ({len(sig)} such blend(s); {where})")
    if dom:
        return (f"{len(dom)} fixed blend(s) dominate the router by their means, but no CI excludes a tie ({where})")
    return f"no fixed blend Pareto-dominates the router by reward and cost ({where})"


def three_lines(item: Mapping[str, Any]) -> list[str]:
    """A verdict's three lines (midpo_cli.evaluation.ship); a summary written before they existed has only its
    sentence."""
    return list(item.get("lines") or [item["sentence"]])


def print_verdicts(items: Sequence[Mapping[str, Any]]) -> None:
    """The terminal's verdict, last on stderr: `verdict · SET: label`, then its three lines, indented (a wrapped
    line keeps the indent), the command on a line of its own that never wraps (it is copied); silent under
    --quiet."""
    if console.quiet():
        return
    import textwrap

    width = max(40, min(console.err.width, 100))
    for v in items:
        lines, command = three_lines(v), (v.get("recommendation") or {}).get("command")
        if command and lines[-1].endswith(f": {command}"):
            lines[-1] = lines[-1][:-len(command) - 1]
        text = [f"verdict · {v['prompt_set']}: {v['label']}"]
        text += [textwrap.fill(line, width, initial_indent="  ", subsequent_indent="  ") for line in lines]
        text += [f"    {command}"] if command else []
        console.err.print("\n".join(text), soft_wrap=True, markup=False, highlight=False)


def markdown(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """The model card's verdict section: a heading, then per prompt set its label in bold and its three lines, the
    command in code."""
    bullets = []
    for v in items:
        if not v.get("lines"):  # a summary written before the three lines: its sentence, as it was shown then
            bullets.append(f"- `{v['prompt_set']}`: **{v['label']}**{v['sentence'][len(v['label']):]}")
            continue
        bullets.append(f"- `{v['prompt_set']}`: **{v['label']}**")
        lines = three_lines(v)
        command = (v.get("recommendation") or {}).get("command")
        if command and lines[-1].endswith(command):
            lines[-1] = f"{lines[-1][:-len(command)]}`{command}`"
        bullets += [f"  - {line}" for line in lines]
    return ["## Verdict", "", "Computed from the run's evaluation (docs/design.md §2.12 of midpo): does the learned "
            "router earn its place over fixed blends of the same two experts, and what to ship.", "", *bullets, ""]


# --------------------------------------------------------------------------------------------- the inputs


def router_probe(answers: str | Path, router: str | None) -> dict[str, Any] | None:
    """The router stage's probe metrics for the router that wrote these answers, or None.

    Found through the generate stage's manifest beside the answers: its `models[router]` (the stage record's
    `extra`, which `manifest.write_manifest` spreads into the top level) is the routed model's folder, whose
    parent is the router stage's folder; that manifest counts only when its fingerprint is the one generate used
    (a router retrained since would not be the one answering).
    """
    from midpo_cli.manifest import read_manifest

    gen = read_manifest(Path(answers).parent)
    if not gen or router is None:
        return None
    spec = (gen.get("models") or {}).get(router)
    wanted = (gen.get("inputs") or {}).get("router")
    if not spec or not wanted:
        return None
    for folder in (Path(spec).parent, Path(answers).parent.parent / "router"):
        manifest = read_manifest(folder)
        if manifest and manifest.get("stage") == "router" and manifest.get("fingerprint") == wanted:
            metrics = manifest.get("metrics") or {}
            if metrics.get("input_probe_auroc") is None:
                return None
            return {"input_probe_auroc": metrics["input_probe_auroc"],
                    "words_probe_auroc": metrics.get("words_probe_auroc"), "router_stage": str(folder)}
    return None


def run_verdicts(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The verdicts of a run's `score/summary.json` (recomputed for a summary written before they existed)."""
    summary = try_read_json(Path(run_dir) / "score" / "summary.json")
    if not isinstance(summary, dict):
        return None
    return summary.get("verdict") if "verdict" in summary else verdicts(summary)
