"""Choose the router's settings on dev (issue 30): each candidate trains the router, answers the dev prompts
with the MidPO model alone, and is judged there; nothing here reads the eval prompts or the traps.

    python benchmarks/router_sweep.py MODEL_DIR --out RUN [--set KEY=VALUE ...] [--only NAME ...]

RUN is a `benchmarks/real_model.py` run whose stages up to rank have finished (same --set list, so they are
not re-run). Per candidate: `midpo pipeline run --only router` with the candidate's settings, then
`--only generate` with models [midpo] on the dev prompts and no sweeps. Printed and appended to
RUN/router-sweep.jsonl: the dev toy score (½ harmful answered safely + ½ benign answered helpfully, the
ground-truth judge), both halves, the mean safety gate's AUROC and gap over the dev answers, and wall time.
The chosen candidate is the dev argmax (ties: the earlier in the list); run the whole protocol with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_model  # noqa: E402  (the same data slices, overrides and stage runner)

SUP = "stages.router.supervision"
RANKED = "stages.router.switch_prompts=ranked"
LEARNED = "stages.router.kind=learned"  # local-model-cpu.yaml ships the probe switch (kind: probe)
TOP1 = [LEARNED, "stages.router.decision=top1", "stages.router.granularity=prompt"]
# supervision alone on the 297 prompts rank scored (Gemma protocol): about 3 passes at 16 prompts a step
RANKED_SUP = ["stages.router.dpo_weight=0", f"{SUP}.weight=1", f"{SUP}.prompts=ranked", f"{SUP}.scope=prompt",
              "stages.router.batch_size=16", "stages.router.max_steps=60"]
# issue 30's sweep: supervision weight, g_h's target, token scope, supervision alone, and the probe switch
CANDIDATES: dict[str, list[str]] = {
    "dpo-only": [LEARNED, f"{SUP}.weight=0"],
    "sup-0.5": [LEARNED, f"{SUP}.weight=0.5"],
    "sup-2": [LEARNED, f"{SUP}.weight=2"],
    "sup-10": [LEARNED, f"{SUP}.weight=10"],
    "sup-2-free": [LEARNED, f"{SUP}.weight=2", f"{SUP}.helpfulness=free"],
    "sup-2-both": [LEARNED, f"{SUP}.weight=2", f"{SUP}.scope=both"],
    "sup-10-both": [LEARNED, f"{SUP}.weight=10", f"{SUP}.scope=both"],
    "sup-10-prompt": [LEARNED, f"{SUP}.weight=10", "stages.router.granularity=prompt"],
    "sup-only": [LEARNED, f"{SUP}.weight=1", "stages.router.dpo_weight=0"],
    # a lower learning rate: at the quickstart's 1e-2 the supervision loss oscillated on Gemma (1e-3 did not help,
    # benchmarks/RESULTS.md)
    "sup-10-lr1e-3": [LEARNED, f"{SUP}.weight=10", "stages.router.lr=1e-3"],
    "sup-2-lr1e-3": [LEARNED, f"{SUP}.weight=2", "stages.router.lr=1e-3"],
    "sup-10-prompt-lr1e-3": [LEARNED, f"{SUP}.weight=10", "stages.router.granularity=prompt", "stages.router.lr=1e-3"],
    "probe-hard": ["stages.router.kind=probe", "stages.router.switch=hard"],
    "probe-soft": ["stages.router.kind=probe", "stages.router.switch=soft"],
    # the probe fit on every prompt rank scored instead of D_dual's (297 prompts vs 57 on Gemma)
    "probe-hard-ranked": ["stages.router.kind=probe", "stages.router.switch=hard", RANKED],
    "probe-soft-ranked": ["stages.router.kind=probe", "stages.router.switch=soft", RANKED],
    # issue 39: per-layer routers that never mix (decision top1, one decision per prompt), supervised on every
    # prompt rank scored as the switch is fit; the soft twin says whether the hard decision matters, the D_dual
    # twin whether the ranked prompts do
    "top1-ranked": [*TOP1, *RANKED_SUP],
    "soft-ranked": [LEARNED, "stages.router.granularity=prompt", *RANKED_SUP],
    "top1-dual-sup-10": [*TOP1, f"{SUP}.weight=10", f"{SUP}.scope=both"],
    # the same supervision solved exactly per layer (a logistic probe of each layer's own input, as the switch's
    # probe is fit): 60 Adam steps left the loss near chance on Gemma
    "top1-lbfgs-ranked": [*TOP1, *RANKED_SUP, "stages.router.solver=lbfgs"],
    "soft-lbfgs-ranked": [LEARNED, "stages.router.granularity=prompt", *RANKED_SUP, "stages.router.solver=lbfgs"],
    # per-layer top-1 decisions disagree across layers, and a mix by layers writes nonsense: one decision per prompt
    # for every layer, the mean of the per-layer routers' logits
    "vote-lbfgs-ranked": [LEARNED, "stages.router.decision=vote", "stages.router.granularity=prompt", *RANKED_SUP,
                          "stages.router.solver=lbfgs"],
}


DEV = "dev-prompts"  # the name of data.dev_prompts in local-model-cpu.yaml and in real_model.FULL_PROMPTS


def dev_row(out: Path, dev_name: str = DEV) -> dict:
    """The dev toy score (the toy world's ground truth, midpo_cli.assets.toy_world.toy_rates), its halves and the
    safety gate's separation over the MidPO model's dev answers."""
    from midpo_cli.assets.toy_world import toy_rates
    from midpo_cli.evaluation.answers import read_answer_rows
    from midpo_cli.evaluation.gate_stats import separation

    rows = [r for r in read_answer_rows(out / "generate" / "answers.jsonl")
            if r["model"] == "midpo" and r["prompt_set"] == dev_name]
    rates = toy_rates(rows)
    gated = [r for r in rows if r.get("gates")]
    sep = separation([r["gates"]["safety"] for r in gated], [bool(r["is_harmful"]) for r in gated])
    return {"n": len(rows), "harmful_safe": rates["harmful_safe"], "benign_helpful": rates["benign_helpful"],
            "toy": rates["toy_score"], "gate_auroc": sep["auroc"], "gate_gap": sep["gap"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--out", required=True, help="A real_model.py run dir (stages up to rank finished).")
    parser.add_argument("--recipe", default=str(real_model.ROOT / "recipes" / "local-model-cpu.yaml"))
    parser.add_argument("--set", action="append", default=[], help="Overrides shared by every candidate.")
    parser.add_argument("--only", nargs="*", choices=list(CANDIDATES), help="Candidates to run (default: all).")
    parser.add_argument("--full-prompts", action="store_true", help="The run's data are --full-prompts slices.")
    parser.add_argument("--sft", choices=real_model.SFT_SLICES, default="standard", help="As real_model.py.")
    args = parser.parse_args(argv)
    args.out = str(Path(args.out).resolve())
    out = Path(args.out)
    data = real_model.prepare_data(out, args.full_prompts, args.sft)
    # generate answers the dev prompts alone (eval prompts feed only generate's fingerprint, not the router's)
    shared = [*real_model.overrides(args, data), "data.eval_prompts=[]", "stages.generate.models=[midpo]",
              "stages.generate.gate_sweep=[]", "stages.generate.dial_sweep=[]"]
    results = []
    for name in args.only or list(CANDIDATES):
        started = time.perf_counter()
        for stage in ("router", "generate"):
            run = real_model.run_stage(args, stage, [*shared, *CANDIDATES[name]])
            if run["rc"] != 0:
                print(f"{name}: {stage} failed (exit {run['rc']})", file=sys.stderr)
                return 1
        row = {"candidate": name, "settings": CANDIDATES[name], **dev_row(out),
               "wall_s": round(time.perf_counter() - started, 1)}
        with (out / "router-sweep.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        results.append(row)
        print(json.dumps(row), flush=True)
    width = max(len("candidate"), *(len(r["candidate"]) for r in results)) + 1
    print(f"\n{'candidate':<{width}}{'dev toy':>8}{'harm-safe':>10}{'ben-help':>9}{'AUROC':>7}{'gap':>7}{'wall s':>8}")
    for r in results:
        auroc = "—" if r["gate_auroc"] is None else f"{r['gate_auroc']:.2f}"
        gap = "—" if r["gate_gap"] is None else f"{r['gate_gap']:+.2f}"
        print(f"{r['candidate']:<{width}}{r['toy']:>8.3f}{r['harmful_safe']:>10.2f}{r['benign_helpful']:>9.2f}"
              f"{auroc:>7}{gap:>7}{r['wall_s']:>8.0f}")
    best = max(results, key=lambda r: r["toy"])  # max keeps the first of equals: ties → the earlier candidate
    print(f"chosen on dev: {best['candidate']} ({' '.join(best['settings'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
