"""The summary's judge sections (docs/judges.md): which judge every prompt set's numbers come from, each judge's
rates, verdict and the numbers behind it, their agreement and over-refusal. Pure: scored rows with the judges'
columns (midpo_cli.judges.panel) in, JSON-ready dicts out.

Which judge: each prompt set's statistics (`summary["routing"]`, `"methods"`, `"verdict"`, the existing keys, as
before) use the first judge of the recipe's list that judged the set (`judge_of`); the dev-chosen blend is chosen
by the dev judge (`stages.score.dev_judge`, else the dev set's own first judge). Every judge also gets its own
routing table and verdict (`by_judge`), each judge choosing its own blend on dev, so two judges' verdicts can be
read side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from midpo_cli.evaluation.agreement import agreement, over_refusal
from midpo_cli.evaluation.headroom import routing_summary
from midpo_cli.evaluation.judge_labels import judge_rates, outcome_for, primary_judges
from midpo_cli.evaluation.verdict import verdicts

COMPACT = ("judge", "chosen_by", "metric", "diff", "diff_by_category", "headroom", "share", "in_sample")


def judge_sections(rows: Sequence[Mapping[str, Any]], judged: Mapping[str, Sequence[str]],
                   info: Mapping[str, Mapping[str, Any]], *, dev_set: str | None,
                   dev_judge: str | None) -> dict[str, Any]:
    """`judges`, `judge_of`, `dev_judge`, `judge_rates`, `agreement` and `over_refusal` (module docstring).
    judged: judge → the sets it labelled, in the recipe's order; info: each judge's report entry."""
    sets = list(dict.fromkeys(str(r["prompt_set"]) for r in rows))
    judge_of = primary_judges(list(judged), judged, sets)
    dev = dev_judge if dev_judge is not None else judge_of.get(dev_set) if dev_set else None
    entries = [{**info[name], "primary_on": [s for s in sets if judge_of[s] == name], "makes_dev_choices": name == dev}
               for name in judged]
    truth = next((n for n in judged if (info[n] or {}).get("ground_truth")), None)
    tellers = [n for n in judged if (info[n] or {}).get("tells_refusal")]
    return {"judges": entries, "judge_of": judge_of, "dev_judge": dev,
            "judge_rates": [e for name in judged for e in judge_rates(rows, name, judged[name])],
            "agreement": agreement(rows, judged, reference=truth), "over_refusal": over_refusal(rows, tellers)}


def primary_outcomes(summary: Mapping[str, Any], dev_set: str | None):
    """The outcome each set's statistics use: its own judge's, and the dev judge's on the dev set."""
    mapping = dict(summary.get("judge_of") or {})
    if dev_set is not None:
        mapping[dev_set] = summary.get("dev_judge")
    return outcome_for(mapping)


def label_routing(summary: Mapping[str, Any], routing: Mapping[str, dict[str, Any]], dev_set: str | None) -> None:
    """Name on each routing entry the judge of its numbers, how it grades (score models: self-graded or not), and
    the judge that chose its blend on dev."""
    graded = {j["name"]: j.get("graded") for j in summary.get("judges") or []}
    for name, entry in routing.items():
        judge = (summary.get("judge_of") or {}).get(name)
        entry["judge"] = judge
        entry["judge_graded"] = graded.get(judge)
        entry["chosen_by"] = summary.get("dev_judge") if dev_set is not None else judge


def by_judge(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], judged: Mapping[str, Sequence[str]], *,
             select_on: str | None, bootstrap: int, seed: int) -> dict[str, Any]:
    """judge → its own routing numbers (compact) and verdict, on the sets it judged, its blend chosen on dev by
    itself; the primary table is reused where it is the same computation."""
    out = {}
    for name, sets in judged.items():
        if not sets:
            continue
        mine = {s: name for s in sets}
        routing = routing_summary(rows, outcome_for=outcome_for(mine), select_on=select_on, bootstrap=bootstrap,
                                  seed=seed)
        routing = {s: e for s, e in routing.items() if s in mine}
        graded = next((j.get("graded") for j in summary.get("judges") or [] if j["name"] == name), None)
        for entry in routing.values():
            entry.update(judge=name, judge_graded=graded, chosen_by=name)
        view = {**summary, "routing": routing}
        out[name] = {"routing": {s: compact(e) for s, e in routing.items()}, "verdict": verdicts(view)}
    return out


def compact(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A routing entry without its grid, dial and model lists: the numbers a verdict and its reader need."""
    out = {k: entry.get(k) for k in COMPACT}
    for key in ("router", "best_fixed", "oracle"):
        part = entry.get(key) or {}
        out[key] = {k: part.get(k) for k in ("model", "gates", "score", "harmful_safe", "benign_helpful",
                                             "chosen_on") if k in part} or None
    hind = entry.get("best_in_sample") or {}
    out["best_in_sample"] = {k: hind.get(k) for k in ("model", "gates", "score", "diff", "diff_by_category")} \
        if hind else None
    if entry.get("probe_switch"):
        out["probe_switch"] = entry["probe_switch"]
    return out
