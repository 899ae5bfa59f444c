"""The report's verdict (midpo_cli.evaluation.verdict): each of the five outcomes of the decision table on
hand-made summaries, the boundaries of each threshold, and where the verdict is shown."""

from __future__ import annotations

import json

from midpo_cli.evaluation.verdict import PROBE_FLOOR, ci_side, decide, router_probe, run_verdicts, verdicts

SET = "toy/eval-prompts"


def ci(mean: float, lo: float | None, hi: float | None) -> dict:
    return {"mean": mean, "lo": lo, "hi": hi, "n": 40}


def summary(*, diff=ci(0.14, 0.06, 0.21), by_cat=ci(0.14, 0.02, 0.30), hind=ci(0.05, 0.01, 0.09),
            hind_cat=None, auroc=0.9, gap=0.3, probe=0.95) -> dict:
    """One reported set: router 0.64; dev-chosen blend (1, 0) 0.50; the blend best here (0.5, 1)."""
    entry = {"router": {"model": "midpo", "score": 0.64}, "metric": "toy_score",
             "best_fixed": {"model": "midpo@gates=1,0", "gates": [1.0, 0.0], "score": 0.50, "in_sample": False},
             "diff": diff, "diff_by_category": by_cat,
             "best_in_sample": {"model": "midpo@gates=0.5,1", "gates": [0.5, 1.0], "score": 0.63, "diff": hind,
                                "diff_by_category": hind_cat}}
    gates = [] if auroc is None else [{"model": "midpo", "prompt_set": SET, "separation": {
        "auroc": auroc, "gap": gap, "mean_harmful": 0.5 + gap / 2, "mean_benign": 0.5 - gap / 2}}]
    return {"routing": {SET: entry}, "gates": gates,
            "router_probe": None if probe is None else {"input_probe_auroc": probe}}


def one(s: dict) -> dict:
    [v] = verdicts(s)
    assert v["prompt_set"] == SET
    return v


def test_routes_and_wins() -> None:
    v = one(summary())
    assert v["outcome"] == "routes_and_wins" and v["label"] == "routes and wins"
    assert v["sentence"].startswith("routes and wins — router 0.64 vs the dev-chosen blend (1, 0) 0.50: "
                                    "Δ +0.14 [+0.06, +0.21] by prompts, [+0.02, +0.30] by categories")
    assert "safety gate AUROC 0.90, gap +0.30; input probe 0.95." in v["sentence"]


def test_without_a_dev_set_the_sentence_says_the_blend_was_chosen_in_sample() -> None:
    s = summary()
    s["routing"][SET]["best_fixed"]["in_sample"] = True
    assert "router 0.64 vs the blend chosen on this set (no dev set) (1, 0) 0.50" in one(s)["sentence"]


def test_wins_without_routing_the_issue_28_run() -> None:
    """The run of issue 28: +0.14 over a poor dev-chosen blend, the blend best on eval within 0.01, gates flat."""
    v = one(summary(hind=ci(-0.01, -0.02, 0.0), auroc=0.38, gap=0.0, probe=0.79))
    assert v["outcome"] == "wins_without_routing"
    assert v["sentence"].startswith("wins without routing (dev/eval disagreement: the blend best on this set, "
                                    "(0.5, 1), ties it; the safety gate does not separate harmful from benign "
                                    "prompts (AUROC 0.38, gap +0.00))")
    # each reason alone is enough
    assert one(summary(hind=ci(0.0, -0.02, 0.03)))["outcome"] == "wins_without_routing"
    assert one(summary(auroc=0.55))["outcome"] == "wins_without_routing"
    assert one(summary(gap=0.05))["outcome"] == "wins_without_routing"
    assert "gate separation not measured" in one(summary(auroc=None))["sentence"]


def test_ties_the_best_blend() -> None:
    v = one(summary(diff=ci(0.03, -0.01, 0.07)))
    assert v["outcome"] == "ties" and v["sentence"].startswith("ties the best blend — router")
    # by prompts clear, by categories not: a tie (one task asked 8 ways is one piece of evidence)
    assert one(summary(by_cat=ci(0.14, -0.03, 0.33)))["outcome"] == "ties"
    # without intervals (--bootstrap 0) nothing is a win or a loss
    assert one(summary(diff=ci(0.14, None, None), by_cat=None))["outcome"] == "ties"


def test_loses() -> None:
    v = one(summary(diff=ci(-0.10, -0.15, -0.05), by_cat=ci(-0.10, -0.2, -0.01)))
    assert v["outcome"] == "loses" and v["sentence"].startswith("loses — router")
    assert one(summary(diff=ci(-0.10, -0.15, -0.05), by_cat=ci(-0.10, -0.2, 0.02)))["outcome"] == "ties"


def test_cannot_route_on_this_base_comes_first() -> None:
    v = one(summary(probe=0.36))
    assert v["outcome"] == "cannot_route"
    assert v["sentence"].startswith("cannot route on this base (input probe AUROC 0.36 ≤ 0.6) — router 0.64")
    assert one(summary(probe=0.36, diff=ci(-0.1, -0.2, -0.05), by_cat=None))["outcome"] == "cannot_route"


def test_boundaries() -> None:
    assert one(summary(probe=PROBE_FLOOR))["outcome"] == "cannot_route"  # ≤ 0.6
    assert one(summary(probe=0.6001))["outcome"] == "routes_and_wins"
    assert one(summary(probe=None))["outcome"] == "routes_and_wins"  # not measured: not held against it
    assert one(summary(auroc=0.6, gap=0.1))["outcome"] == "routes_and_wins"  # gate_stats: AUROC ≥ 0.6, gap ≥ 0.1
    assert one(summary(auroc=0.5999, gap=0.1))["outcome"] == "wins_without_routing"
    assert one(summary(auroc=0.6, gap=0.0999))["outcome"] == "wins_without_routing"
    assert one(summary(diff=ci(0.1, 0.0, 0.2)))["outcome"] == "ties"  # a bound on 0 is not above it
    assert one(summary(diff=ci(-0.1, -0.2, 0.0), by_cat=None))["outcome"] == "ties"
    assert one(summary(hind=ci(0.02, 0.0, 0.04)))["outcome"] == "wins_without_routing"
    assert one(summary(hind=ci(0.05, 0.01, 0.09), hind_cat=ci(0.05, -0.01, 0.1)))["outcome"] == \
        "wins_without_routing"  # the hindsight blend is beaten only when both of its views say so
    assert ci_side(None, None) is None and ci_side(ci(0.1, 0.05, 0.2), None) == 1


def test_no_verdict_without_a_judge_and_the_decision_table_itself() -> None:
    s = summary()
    s["routing"][SET].update(metric=None, diff=None, diff_by_category=None, best_in_sample=None)
    v = one(s)
    assert v["outcome"] == "no_verdict" and "no judge can judge this set" in v["sentence"]
    s["router_probe"] = {"input_probe_auroc": 0.5}
    assert one(s)["outcome"] == "cannot_route"  # the probe needs no judge
    assert decide(vs_dev=1, vs_hindsight=1, routes=True, probe=None) == "routes_and_wins"
    assert decide(vs_dev=1, vs_hindsight=-1, routes=True, probe=0.9) == "wins_without_routing"
    assert decide(vs_dev=1, vs_hindsight=None, routes=True, probe=0.9) == "wins_without_routing"
    assert decide(vs_dev=0, vs_hindsight=1, routes=True, probe=0.9) == "ties"
    assert decide(vs_dev=-1, vs_hindsight=-1, routes=False, probe=0.9) == "loses"


def _manifest(folder, *, stage, fingerprint, inputs=None, metrics=None, extra=None) -> None:
    """Through the writer every stage uses (a hand-written layout once hid that `extra` is spread flat)."""
    from midpo_cli.manifest import StageRecord, write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, StageRecord(stage=stage, fingerprint=fingerprint, inputs=inputs or {},
                                       metrics=metrics or {}, extra=extra or {}), {})


def test_the_probe_is_found_through_generates_manifest_and_only_for_the_router_that_answered(tmp_path) -> None:
    run = tmp_path / "run"
    _manifest(run / "router", stage="router", fingerprint="abc", metrics={"input_probe_auroc": 0.42,
                                                                          "words_probe_auroc": 0.8})
    _manifest(run / "generate", stage="generate", fingerprint="gen", inputs={"router": "abc"},
              extra={"models": {"midpo": str(run / "router" / "model")}})
    answers = run / "generate" / "answers.jsonl"
    assert router_probe(answers, "midpo")["input_probe_auroc"] == 0.42
    assert router_probe(answers, "other") is None
    _manifest(run / "generate", stage="generate", fingerprint="gen", inputs={"router": "retrained-since"},
              extra={"models": {"midpo": str(run / "router" / "model")}})
    assert router_probe(answers, "midpo") is None  # a router retrained since did not write these answers
    assert router_probe(tmp_path / "elsewhere" / "answers.jsonl", "midpo") is None


def test_run_verdicts_reads_the_score_summary_and_recomputes_an_old_one(tmp_path) -> None:
    (tmp_path / "score").mkdir()
    old = summary(probe=0.36)
    (tmp_path / "score" / "summary.json").write_text(json.dumps(old))
    assert [v["outcome"] for v in run_verdicts(tmp_path)] == ["cannot_route"]
    (tmp_path / "score" / "summary.json").write_text(json.dumps({**old, "verdict": [{"sentence": "kept"}]}))
    assert run_verdicts(tmp_path) == [{"sentence": "kept"}]
    assert run_verdicts(tmp_path / "nowhere") is None



def test_pipeline_run_ends_with_the_verdict(tmp_path, capsys) -> None:
    from midpo_cli.commands.pipeline_cmd import _print_verdict

    (tmp_path / "score").mkdir()
    (tmp_path / "score" / "summary.json").write_text(json.dumps(summary(probe=0.36)))
    [v] = _print_verdict(tmp_path)
    assert f"verdict · {SET}: cannot route on this base (input probe AUROC 0.36" in capsys.readouterr().err
    assert v["outcome"] == "cannot_route"


def test_model_card_section() -> None:
    from midpo_cli.evaluation.verdict import markdown

    text = "\n".join(markdown(verdicts(summary(auroc=0.38))))
    assert text.startswith("## Verdict") and f"- `{SET}`: **wins without routing** (dev/eval" not in text
    assert f"- `{SET}`: **wins without routing** (the safety gate does not separate" in text
