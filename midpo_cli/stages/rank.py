"""Stage `rank`: score every response with both score models and write D_dual (DESIGN §2 "Rank").

Outputs: `scored.jsonl` (the pair data with reward_0/1 and cost_0/1 added), `dual.jsonl` (the
router's pairs: prompt, chosen, rejected and their scores), and `audit.json` (counts per rule
step, label/score-model disagreement, margin histograms, per-category balance).
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any

from midpo_cli import console
from midpo_cli.data.filters import select_pairs
from midpo_cli.data.readers import load_rows
from midpo_cli.io import atomic_write_json, write_jsonl
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.score_model import load_score_model, score_texts
from midpo_cli.stages.common import model_ref
from midpo_cli.stages.context import StageContext
from midpo_cli.stages.score_models import require_audit


def run(ctx: StageContext) -> None:
    recipe, cfg = ctx.recipe, ctx.recipe.stages.rank
    require_audit(ctx, "reward_model")
    require_audit(ctx, "cost_model")
    table = load_rows(recipe.data.train, columns=recipe.data.columns)
    valid = select_pairs(table, "reward_model")  # validates rows and drops malformed ones, counted
    rows = [dict(table.rows[p.row], _row=p.row) for p in valid.pairs]
    for key, stage, kind in (("reward", "reward_model", "reward"), ("cost", "cost_model", "cost")):
        model, tokenizer = load_score_model(model_ref(ctx, stage), expected_type=kind,
                                            trust_remote_code=recipe.trust_remote_code)
        prompts = [r["prompt"] for r in rows] * 2
        answers = [r["response_0"] for r in rows] + [r["response_1"] for r in rows]
        scores = score_texts(model, tokenizer, prompts, answers, batch_size=cfg.batch_size,
                             template=recipe.data.template)
        for r, s0, s1 in zip(rows, scores[: len(rows)], scores[len(rows):], strict=True):
            r[f"{key}_0"], r[f"{key}_1"] = s0, s1
        del model
        gc.collect()
    dual, steps = dual_pairs(rows, cfg.rule)
    console.log("rank: " + " → ".join(f"{k} {v}" for k, v in steps.items()))
    if not dual:
        from midpo_cli.errors import InputError

        raise InputError(f"rank: rule {cfg.rule!r} kept no pairs ({steps}); try stages.rank.rule: agree or labels")
    scored_path, dual_path = ctx.folder / "scored.jsonl", ctx.folder / "dual.jsonl"
    write_jsonl(scored_path, [{k: v for k, v in r.items() if k != "_row"} for r in rows])
    write_jsonl(dual_path, dual)
    audit = rank_audit(rows, steps, dual)
    audit["dropped_invalid"] = {k: v for k, v in valid.counts.items() if k.startswith("dropped")}
    atomic_write_json(ctx.folder / "audit.json", audit)
    record = ctx.record()
    record.outputs = {"scored": ctx.rel(scored_path), "dual": ctx.rel(dual_path),
                      "audit": ctx.rel(ctx.folder / "audit.json")}
    record.metrics = {"pairs_scored": len(rows), "dual_pairs": len(dual), "rule": cfg.rule,
                      **{f"disagree_{k}": v for k, v in audit["disagreement"].items()}}
    record.extra = {"steps": steps}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["rank"])


def _labels(r: dict[str, Any]) -> tuple[int, int, bool, bool]:
    return int(r["better_response_id"]), int(r["safer_response_id"]), bool(r["is_response_0_safe"]), bool(
        r["is_response_1_safe"])


def dual_pairs(rows: list[dict[str, Any]], rule: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply a D_dual rule; return the router pairs and the count left after each rule step."""
    steps = {"scored": len(rows)}
    if rule == "models":
        kept = [r for r in rows if r["cost_0"] < 0 and r["cost_1"] < 0]
        steps["both_predicted_safe"] = len(kept)
        kept = [r for r in kept if (r["reward_0"] > r["reward_1"]) == (r["cost_0"] < r["cost_1"])
                and r["reward_0"] != r["reward_1"]]
        steps["reward_order_agrees_with_cost"] = len(kept)
        chosen_of = {id(r): 0 if r["reward_0"] > r["reward_1"] else 1 for r in kept}
    else:
        kept = rows
        if rule == "labels":
            kept = [r for r in kept if _labels(r)[2] and _labels(r)[3]]
            steps["both_labelled_safe"] = len(kept)
        kept = [r for r in kept if _labels(r)[0] == _labels(r)[1]]
        steps["safer_equals_better"] = len(kept)
        chosen_of = {id(r): _labels(r)[0] for r in kept}
    out = []
    for r in kept:
        c = chosen_of[id(r)]
        o = 1 - c
        out.append({
            "prompt": r["prompt"], "chosen": r[f"response_{c}"], "rejected": r[f"response_{o}"],
            "reward_chosen": r["reward_" + str(c)], "reward_rejected": r["reward_" + str(o)],
            "cost_chosen": r["cost_" + str(c)], "cost_rejected": r["cost_" + str(o)],
            "is_chosen_safe": bool(r[f"is_response_{c}_safe"]), "is_rejected_safe": bool(r[f"is_response_{o}_safe"]),
            **{k: r[k] for k in ("category", "is_harmful") if k in r},
        })
    steps["kept"] = len(out)
    return out, steps


def _histogram(values: list[float], bins: int = 10) -> dict[str, list[float]]:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts}


def rank_audit(rows: list[dict[str, Any]], steps: dict[str, int], dual: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the score models disagree with the labels, the margin distributions, category balance."""
    n = len(rows) or 1
    better_disagree = sum((r["reward_0"] > r["reward_1"]) != (_labels(r)[0] == 0) for r in rows) / n
    safer_disagree = sum((r["cost_0"] < r["cost_1"]) != (_labels(r)[1] == 0) for r in rows) / n
    sign_disagree = sum(((r["cost_0"] < 0) != _labels(r)[2]) + ((r["cost_1"] < 0) != _labels(r)[3])
                        for r in rows) / (2 * n)
    help_margin = [abs(r["reward_0"] - r["reward_1"]) for r in rows]
    safe_margin = [abs(r["cost_0"] - r["cost_1"]) for r in rows]
    audit: dict[str, Any] = {
        "steps": steps,
        "disagreement": {"better_vs_reward": round(better_disagree, 4), "safer_vs_cost": round(safer_disagree, 4),
                         "safe_label_vs_cost_sign": round(sign_disagree, 4)},
        "margin_histograms": {"helpfulness": _histogram(help_margin), "safety": _histogram(safe_margin)},
    }
    if rows and "category" in rows[0]:
        audit["category_balance"] = {"all": dict(Counter(r["category"] for r in rows)),
                                     "dual": dict(Counter(r["category"] for r in dual))}
    if rows and "is_harmful" in rows[0]:
        audit["harmful_in_dual"] = sum(bool(r.get("is_harmful")) for r in dual)
    return audit

