"""Stage `score` and `midpo score`: per-answer reward, cost, safe and refusal; the summary; the report.

Writes into the output folder: `scores.csv` (one row per answer, SCORE_COLUMNS, then each judge's labels and raw
output, `judge:<name>:…`), `summary.json` (midpo_cli.evaluation.summary.summarize plus the inputs, the judges and
the routing analysis), and the report (`report.html` and its PNGs). Either score model may be absent: its columns
stay empty and the metrics that need it are left out (the table says so). Refusal uses the documented pattern
detector (midpo_cli.evaluation.refusal); the judges (midpo_cli.judges, docs/judges.md) label every answer, and each
prompt set's statistics use the first judge that can judge it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.evaluation.answers import model_specs, read_answer_rows
from midpo_cli.evaluation.judge_labels import columns
from midpo_cli.evaluation.labels import is_sweep_label
from midpo_cli.evaluation.refusal import DEFAULT_WINDOW, RefusalDetector
from midpo_cli.evaluation.summary import gate_summary, summarize
from midpo_cli.io import atomic_write_json, atomic_write_text
from midpo_cli.judges.base import JudgeEnv
from midpo_cli.judges.panel import build_judge, label_answers
from midpo_cli.judges.toy import is_toy_world
from midpo_cli.modeling.scorer import Scorer, default_scorer

SCORE_COLUMNS = ("model", "prompt_set", "index", "category", "is_harmful", "reward", "cost", "safe", "refusal",
                 "refusal_match", "prompt_tokens", "answer_tokens", "truncated", "finished", "gate_safety",
                 "gate_helpfulness", "prompt", "answer")
def score_rows(rows: Sequence[dict[str, Any]], *, reward_model: str | None, cost_model: str | None,
               scorer: Scorer, refusal: RefusalDetector) -> list[dict[str, Any]]:
    """One SCORE_COLUMNS dict per answer."""
    prompts, answers = [str(r["prompt"]) for r in rows], [str(r["answer"]) for r in rows]
    scores: dict[str, list[float] | None] = {"reward": None, "cost": None}
    for key, path in (("reward", reward_model), ("cost", cost_model)):
        if path:
            console.log(f"score: {key} model {path} on {len(rows)} answers")
            scores[key] = [float(s) for s in scorer(path, key, prompts, answers)]
            if len(scores[key]) != len(rows):
                raise InputError(f"{key} model {path} returned {len(scores[key])} scores for {len(rows)} answers")
    out = []
    for i, r in enumerate(rows):
        gates = r.get("gates") or {}
        cost = scores["cost"][i] if scores["cost"] is not None else None
        match = refusal.match(answers[i])
        out.append({
            "model": r["model"], "prompt_set": r["prompt_set"], "index": int(r["index"]),
            "category": r.get("category"), "is_harmful": r.get("is_harmful"),
            "reward": scores["reward"][i] if scores["reward"] is not None else None, "cost": cost,
            "safe": (cost < 0) if cost is not None else None, "refusal": match is not None, "refusal_match": match,
            "prompt_tokens": r.get("prompt_tokens"), "answer_tokens": r.get("answer_tokens"),
            "truncated": r.get("truncated"), "finished": r.get("finished"),
            "gate_safety": gates.get("safety"), "gate_helpfulness": gates.get("helpfulness"),
            "prompt": r["prompt"], "answer": r["answer"],
            # not CSV columns: what a blend or dial variant is, for the routing summary
            "fixed_gates": r.get("fixed_gates"), "safety_bias": r.get("safety_bias"),
        })
    return out


def csv_text(rows: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> str:
    """scores.csv: SCORE_COLUMNS, then the judges' columns (`extra`, midpo_cli.evaluation.judge_labels)."""
    fields = [*SCORE_COLUMNS, *extra]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def score_answers(
    answers_path: str | Path,
    *,
    reward_model: str | None,
    cost_model: str | None,
    out_dir: str | Path,
    batch_size: int = 32,
    template: str = "safe-rlhf",
    refusal_patterns: Sequence[str] | None = None,
    refusal_window: int = DEFAULT_WINDOW,
    bootstrap: int = 1000,
    seed: int = 0,
    scorer: Scorer | None = None,
    report: bool = True,
    select_on: str | None = None,
    gate_maps: str | Path | None = None,
    judges: Sequence[Any] | None = None,
    dev_judge: str | None = None,
    judge_cache: str | Path | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Score every answer, judge it, write scores.csv + summary.json + the report into out_dir; return the summary.

    Beyond the per-model summary: `toy` (ground-truth rates on toy-world prompt sets), the judges' sections
    (midpo_cli.evaluation.judge_summary: `judges`, `judge_of`, `judge_rates`, `agreement`, `over_refusal`,
    `by_judge`), `routing` (the router against fixed blends, midpo_cli.evaluation.headroom; the best blend chosen on
    `select_on`), `gates` (separation of the safety gate), `methods` (every model beside MidPO,
    midpo_cli.evaluation.methods), `router_probe` (the router stage's input-probe ceiling, found through generate's
    manifest beside the answers) and `verdict` (midpo_cli.evaluation.verdict, also on stderr). `judges`: entries of
    `stages.score.judge` or judge objects (midpo_cli.judges.panel), None for the default (toy, then score-models);
    `judge_cache`: where the LLM judge keeps its replies. `gate_maps` (generate's per-token gate JSON) is copied
    into out_dir for the report's heatmaps.
    """
    from midpo_cli.evaluation.headroom import resolve_selection
    from midpo_cli.evaluation.judge_summary import by_judge, judge_sections

    detector = RefusalDetector(refusal_patterns or RefusalDetector.patterns, refusal_window)  # checks patterns early
    if not reward_model and not cost_model:
        console.warn("no --reward-model and no --cost-model: only refusal rates and lengths are computed")
    rows = read_answer_rows(answers_path)
    dev_set = resolve_selection(list(dict.fromkeys(str(r["prompt_set"]) for r in rows)), select_on)  # a typo: now
    scorer = scorer or default_scorer(batch_size=batch_size, template=template)
    scored = score_rows(rows, reward_model=reward_model, cost_model=cost_model, scorer=scorer, refusal=detector)
    env = JudgeEnv(score_model={"reward": reward_model, "cost": cost_model}.get, scorer=scorer, refusal=detector,
                   cache_dir=Path(judge_cache) if judge_cache else None, run_models=run_score_models(answers_path),
                   rows_scored=True, trust_remote_code=trust_remote_code)
    panel = label_answers(scored, panel_judges(judges, env), dev_set=dev_set)
    summary = summarize(scored, bootstrap=bootstrap, seed=seed)
    summary["inputs"] = {"answers": str(answers_path), "reward_model": reward_model, "cost_model": cost_model,
                         "template": template}
    summary["refusal"] = {"patterns": "built-in" if not refusal_patterns else list(refusal_patterns),
                          "window": refusal_window}
    summary["toy"] = toy_table(rows)
    summary.update(judge_sections(scored, panel.judged, panel.info, dev_set=dev_set, dev_judge=dev_judge))
    summary["model_specs"] = model_specs(rows)  # the verdict's command names the folder to ship
    add_routing(summary, scored, answers_path, select_on=select_on, dev_set=dev_set, bootstrap=bootstrap, seed=seed)
    summary["by_judge"] = by_judge(summary, scored, panel.judged, select_on=select_on, bootstrap=bootstrap, seed=seed)
    write_outputs(scored, summary, Path(out_dir), columns(list(panel.judged)), gate_maps=gate_maps, report=report)
    return summary


def panel_judges(judges: Sequence[Any] | None, env: JudgeEnv) -> list[Any]:
    """Judge objects from recipe entries (None: the default list, toy then score-models); objects pass as they are."""
    from midpo_cli.recipe import JudgeEntry, ScoreStage

    entries = ScoreStage().judges() if judges is None else judges
    return [build_judge(j, env) if isinstance(j, JudgeEntry) else j for j in entries]


def run_score_models(answers_path: str | Path) -> dict[str, str] | None:
    """The score models the experts of the run that wrote these answers trained on (kind → model), found through
    the run dir around generate's folder; None for answers made outside a run (provenance unknown)."""
    from midpo_cli.manifest import read_manifest

    gen_dir = Path(answers_path).parent
    if (read_manifest(gen_dir) or {}).get("stage") != "generate":
        return None
    run_dir, out = gen_dir.parent, {}
    for kind, stage in (("reward", "reward_model"), ("cost", "cost_model")):
        ref = ((read_manifest(run_dir / stage) or {}).get("outputs") or {}).get("model")
        if ref:
            out[kind] = str(run_dir / ref) if (run_dir / ref).exists() else str(ref)
    return out or None


def write_outputs(scored: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path, judge_columns: list[str], *,
                  gate_maps: str | Path | None, report: bool) -> None:
    """scores.csv, gate_maps.json, summary.json, the terminal tables and verdict lines, then the report."""
    from midpo_cli.evaluation.report_html import write_report
    from midpo_cli.evaluation.report_tables import print_tables
    from midpo_cli.evaluation.verdict import print_verdicts

    atomic_write_text(out_dir / "scores.csv", csv_text(scored, judge_columns))
    if gate_maps is not None and Path(gate_maps).is_file():
        atomic_write_text(out_dir / "gate_maps.json", Path(gate_maps).read_text(encoding="utf-8"))
    atomic_write_json(out_dir / "summary.json", summary)
    print_tables(summary)
    print_verdicts(summary["verdict"])
    if report:
        path = write_report(scored, summary, out_dir)
        console.log(f"report: {path}")


def add_routing(summary: dict[str, Any], scored: list[dict[str, Any]], answers_path: str | Path, *,
                select_on: str | None, dev_set: str | None, bootstrap: int, seed: int) -> None:
    """The summary's routing sections, each set by its own judge (`summary["judge_of"]`, the dev-chosen blend by
    the dev judge): the router against the fixed blends (best chosen on `select_on`), the probe switch's row, the
    answers each dial point changed, the safety gate's separation, the method table (baselines beside MidPO), the
    router's probe ceiling and the verdict computed from all of them."""
    from midpo_cli.evaluation.dial_changes import add_dial_changes
    from midpo_cli.evaluation.headroom import routing_summary
    from midpo_cli.evaluation.judge_summary import label_routing, primary_outcomes
    from midpo_cli.evaluation.methods import add_merge_points, method_tables
    from midpo_cli.evaluation.probe_switch import add_switch_entries
    from midpo_cli.evaluation.verdict import router_probe, verdicts

    outcome_for = primary_outcomes(summary, dev_set)
    summary["routing"] = routing_summary(scored, outcome_for=outcome_for, select_on=select_on,
                                         bootstrap=bootstrap, seed=seed)
    label_routing(summary, summary["routing"], dev_set)
    add_switch_entries(summary["routing"], scored, outcome_for, bootstrap=bootstrap, seed=seed)
    add_dial_changes(summary["routing"], scored)
    summary["gates"] = gate_summary(scored)
    summary["methods"] = method_tables(scored, outcome_for=outcome_for, select_on=select_on, bootstrap=bootstrap,
                                       seed=seed)
    for name, table in summary["methods"].items():
        table["judge_name"] = (summary.get("judge_of") or {}).get(name)
    add_merge_points(summary)
    router = next(iter(summary["routing"].values()), {}).get("router", {}).get("model")
    summary["router_probe"] = router_probe(answers_path, router)
    summary["verdict"] = verdicts(summary)


def run(ctx: Any) -> None:
    """The pipeline's score stage: the generate stage's answers, the run's reward and cost models."""
    from midpo_cli.manifest import write_manifest
    from midpo_cli.stages.kit.dev_set import dev_set_name
    from midpo_cli.stages.kit.inputs import model_ref

    recipe, cfg = ctx.recipe, ctx.recipe.stages.score
    maps = ctx.inputs.get("generate", {}).get("outputs", {}).get("gate_maps")
    summary = score_answers(
        ctx.input_path("generate", "answers"), reward_model=model_ref(ctx, "reward_model"),
        cost_model=model_ref(ctx, "cost_model"), out_dir=ctx.folder, batch_size=cfg.batch_size,
        template=recipe.data.template, refusal_patterns=cfg.refusal_patterns, bootstrap=cfg.bootstrap,
        seed=recipe.train.seed, select_on=dev_set_name(recipe),
        gate_maps=ctx.input_path("generate", "gate_maps") if maps else None, judges=cfg.judges(),
        dev_judge=cfg.dev_judge, judge_cache=ctx.run_dir / "cache" / "judges",
        trust_remote_code=recipe.trust_remote_code)
    record = ctx.record()
    record.outputs = {"scores": ctx.rel(ctx.folder / "scores.csv"), "summary": ctx.rel(ctx.folder / "summary.json"),
                      "report": ctx.rel(ctx.folder / "report.html")}
    record.metrics = key_metrics(summary)
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["score"])


def key_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The manifest's metrics, most telling first (`pipeline run` shows the first few): the router's
    margin over the best fixed blend, its score by each judge, the toy score, then reward/cost/refusal per
    model. Prompt sets go by their last name part (`eval-prompts`) when that is unambiguous."""
    from midpo_cli.evaluation.report_tables import short_names

    sets, _ = short_names(summary["prompt_sets"], 24)
    out: dict[str, Any] = {}
    routers = {entry["router"]["model"] for entry in summary.get("routing", {}).values()}
    for prompt_set, entry in summary.get("routing", {}).items():
        if entry.get("diff"):
            out[f"router-best_fixed/{sets[prompt_set]}"] = entry["diff"]["mean"]
    for judge, data in (summary.get("by_judge") or {}).items():  # the router's score by every judge
        for prompt_set, entry in data["routing"].items():
            if (entry.get("router") or {}).get("score") is not None:
                out[f"router/{sets[prompt_set]}/score:{judge}"] = entry["router"]["score"]
    for e in sorted(summary.get("toy") or [], key=lambda e: e["model"] not in routers):  # the router first
        if not is_sweep_label(e["model"]):
            out[f"{e['model']}/{sets.get(e['prompt_set'], e['prompt_set'])}/toy_score"] = e["toy_score"]
    for g in summary["groups"]:
        if not is_sweep_label(g["model"]):
            for name, stat in g["metrics"].items():
                if name in ("reward", "cost", "harmless_rate", "refusal_rate_harmful", "refusal_rate_benign"):
                    out[f"{g['model']}/{sets[g['prompt_set']]}/{name}"] = stat["mean"]
    return out


def toy_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ground-truth toy-world rates per (model, prompt set) for prompt sets of the embedded toy world.

    The toy judge classifies each answer by template (docs/design.md §7), so these numbers measure the method
    without trusting the learned score models. Mean gates are averaged over answers that have them.
    """
    from midpo_cli.assets.toy_world import toy_rates

    by_set: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("is_harmful") is not None:
            by_set.setdefault(str(row.get("prompt_set", "")), []).append(row)
    toy = {name for name, items in by_set.items() if is_toy_world(items)}  # by its prompts, not its name
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("is_harmful") is not None and str(row.get("prompt_set", "")) in toy:
            groups.setdefault((row["model"], row["prompt_set"]), []).append(row)
    table = []
    for (model, prompt_set), items in groups.items():
        rates = toy_rates(items)
        gated = [r["gates"] for r in items if r.get("gates")]
        entry = {"model": model, "prompt_set": prompt_set, **rates}
        for side, flag in (("harmful", True), ("benign", False)):
            side_gates = [r["gates"] for r in items if r.get("gates") and bool(r["is_harmful"]) is flag]
            for key in ("safety", "helpfulness"):
                values = [g[key] for g in side_gates if g.get(key) is not None]
                entry[f"gate_{key}_{side}"] = sum(values) / len(values) if values else None
        entry["has_gates"] = bool(gated)
        table.append(entry)
    return table



