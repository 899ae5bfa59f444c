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



def test_pipeline_run_ends_with_the_verdict_in_three_lines(tmp_path, capsys) -> None:
    from midpo_cli.commands.pipeline_cmd import _print_verdict

    (tmp_path / "score").mkdir()
    s = summary(probe=0.36, auroc=0.5, gap=0.0, diff=ci(0.14, 0.06, 0.21), by_cat=ci(0.14, -0.06, 0.35),
                hind=ci(0.01, 0.0, 0.02))
    s["model_specs"] = {"midpo": "runs/qs/router/model"}
    (tmp_path / "score" / "summary.json").write_text(json.dumps(s))
    [v] = _print_verdict(tmp_path)
    assert v["outcome"] == "cannot_route"
    err = capsys.readouterr().err
    assert err.startswith(f"verdict · {SET}: cannot route on this base\n  the router does not route: mean safety "
                          "gate 0.50 on harmful and 0.50 on benign\n  prompts; its base cannot tell them apart (input "
                          "probe AUROC 0.36 ≤ 0.6)\n  router 0.64 vs the blend best here in hindsight (0.5, 1) 0.63: "
                          "Δ +0.01 [+0.00,\n  +0.02] (95% CI, by prompts)\n")
    # the command stands on a line of its own, never wrapped, so it can be copied
    assert err.endswith("  ship the fixed blend (0.5, 1), the best on this set:\n    midpo export runs/qs/router/model "
                        "--merged --gates 0.5,1 --to runs/qs/export/blend-0.5-1\n")
    assert len(err.splitlines()) == 7 and all(len(line) <= 80 for line in err.splitlines()[:-1])


def test_model_card_section() -> None:
    from midpo_cli.evaluation.verdict import markdown

    text = "\n".join(markdown(verdicts(summary(auroc=0.38), folders={"midpo": "runs/x/router/model"})))
    assert text.startswith("## Verdict") and f"- `{SET}`: **wins without routing**\n" in text
    assert "  - the router beats every fixed blend without routing: mean safety gate" in text
    assert text.endswith("  - ship MidPO: `midpo serve runs/x/router/model`\n")


# ------------------------------------------------------------------ the three lines: what happened, the Δ, what to ship

RUN = {"midpo": "runs/x/router/model", "probe_switch": "runs/x/router/switch"}


def three(s: dict, folders: dict | None = RUN) -> tuple[list[str], dict]:
    [v] = verdicts(s, folders=folders)
    assert len(v["lines"]) == 3 and v["lines"][2].endswith(v["recommendation"]["command"] or "")
    return v["lines"], v["recommendation"]


def test_routes_and_wins_ships_midpo() -> None:
    lines, rec = three(summary())
    assert lines == ["the router routes and wins: mean safety gate 0.65 on harmful and 0.35 on benign prompts",
                     "router 0.64 vs the blend best here in hindsight (0.5, 1) 0.63: Δ +0.05 [+0.01, +0.09] (95% CI, "
                     "by prompts)",
                     "ship MidPO: midpo serve runs/x/router/model"]
    assert rec == {"ship": "router", "model": "midpo", "gates": None, "against": "hindsight",
                   "folder": "runs/x/router/model", "command": "midpo serve runs/x/router/model"}


def _with_switch(s: dict, diff: dict, auroc: float = 0.95, gap: float = 0.8) -> dict:
    s["routing"][SET]["probe_switch"] = {"model": "probe_switch", "score": 0.63, "router_score": 0.64, "n": 40,
                                         "diff": diff}
    s["gates"].append({"model": "probe_switch", "prompt_set": SET, "separation": {
        "auroc": auroc, "gap": gap, "mean_harmful": 0.5 + gap / 2, "mean_benign": 0.5 - gap / 2}})
    return s


def test_a_switch_the_router_does_not_beat_is_shipped_instead_when_its_gates_route() -> None:
    lines, rec = three(_with_switch(summary(), ci(0.01, -0.02, 0.04)))
    assert rec["ship"] == "switch" and lines[0].startswith("the router routes and wins")
    assert lines[2] == ("ship the probe switch: the router does not beat it (router − switch +0.01 [-0.02, +0.04]): "
                        "midpo serve runs/x/router/switch")
    assert three(_with_switch(summary(), ci(0.05, 0.02, 0.08)))[1]["ship"] == "router"  # the router beats it
    assert three(_with_switch(summary(), ci(0.01, -0.02, 0.04), auroc=0.55))[1]["ship"] == "router"  # no routing
    assert three(_with_switch(summary(), ci(0.01, -0.02, 0.04), gap=0.05))[1]["ship"] == "router"


def test_a_win_only_because_dev_chose_badly_says_so_and_ships_the_hindsight_blend() -> None:
    lines, rec = three(summary(hind=ci(-0.01, -0.02, 0.0), auroc=0.38, gap=0.0))
    assert lines == ["the router beats the dev-chosen blend (1, 0) only because dev chose badly: the blend best here "
                     "in hindsight, (0.5, 1), ties it",
                     "router 0.64 vs the blend best here in hindsight (0.5, 1) 0.63: Δ -0.01 [-0.02, +0.00] (95% CI, "
                     "by prompts)",
                     "ship the fixed blend (0.5, 1), the best on this set: midpo export runs/x/router/model --merged "
                     "--gates 0.5,1 --to runs/x/export/blend-0.5-1"]
    assert rec["gates"] == [0.5, 1.0] and rec["against"] == "hindsight"
    assert three(summary(hind=ci(-0.05, -0.08, -0.02)))[0][0].endswith("(0.5, 1), beats it")


def test_wins_without_routing_but_beating_every_blend_ships_midpo() -> None:
    lines, rec = three(summary(auroc=0.38, gap=0.0))
    assert lines[0] == ("the router beats every fixed blend without routing: mean safety gate 0.50 on harmful and "
                        "0.50 on benign prompts")
    assert rec["ship"] == "router" and lines[2] == "ship MidPO: midpo serve runs/x/router/model"
    s = summary(auroc=None)
    s["routing"][SET]["best_in_sample"] = None
    lines, rec = three(s)
    assert lines[0] == "the router beats the dev-chosen blend (1, 0); no blend was compared in hindsight"
    assert lines[1].startswith("router 0.64 vs the dev-chosen blend (1, 0) 0.50: Δ +0.14 [+0.02, +0.30] (95% CI, "
                               "categories resampled)")  # the interval nearest 0 of a clear win
    assert rec["against"] == "dev" and rec["ship"] == "router"


def test_ties_ship_the_blend_the_router_does_not_beat() -> None:
    lines, rec = three(summary(diff=ci(0.03, -0.01, 0.07)))
    assert lines == ["the router ties the dev-chosen blend (1, 0); it routes: mean safety gate 0.65 on harmful and "
                     "0.35 on benign prompts",
                     "router 0.64 vs the dev-chosen blend (1, 0) 0.50: Δ +0.03 [-0.01, +0.07] (95% CI, by prompts)",
                     "ship the fixed blend (1, 0), chosen on dev: midpo export runs/x/router/model --merged "
                     "--gates 1,0 --to runs/x/export/blend-1-0"]
    # the blend best in hindsight ties it too: that one, the best on this set, is shipped
    lines, rec = three(summary(diff=ci(0.03, -0.01, 0.07), hind=ci(0.0, -0.03, 0.03), auroc=0.5, gap=0.0))
    assert rec["gates"] == [0.5, 1.0] and lines[0].endswith("; it does not route: mean safety gate 0.50 on harmful "
                                                            "and 0.50 on benign prompts")
    assert lines[1].endswith("Δ +0.00 [-0.03, +0.03] (95% CI, by prompts)")


def test_loses_ships_a_blend_and_shows_the_interval_nearest_zero() -> None:
    s = summary(diff=ci(-0.10, -0.15, -0.05), by_cat=ci(-0.10, -0.2, -0.01), hind=ci(-0.12, -0.2, -0.05))
    lines, rec = three(s)
    assert lines[0].startswith("the router loses to the dev-chosen blend (1, 0); it routes")
    assert lines[1] == ("router 0.64 vs the blend best here in hindsight (0.5, 1) 0.63: Δ -0.12 [-0.20, -0.05] (95% "
                        "CI, by prompts)")
    assert rec["ship"] == "blend" and rec["gates"] == [0.5, 1.0]
    s["routing"][SET]["best_in_sample"] = None
    lines, rec = three(s)
    assert lines[1] == ("router 0.64 vs the dev-chosen blend (1, 0) 0.50: Δ -0.10 [-0.20, -0.01] (95% CI, categories "
                        "resampled)") and rec["gates"] == [1.0, 0.0]


def test_cannot_route_still_says_what_to_ship() -> None:
    lines, rec = three(summary(probe=0.36))  # every blend clearly beaten: MidPO, though its base cannot route
    assert lines[0] == ("the router cannot route on this base: its input does not tell harmful from benign prompts "
                        "apart (input probe AUROC 0.36 ≤ 0.6); yet it beats every fixed blend")
    assert rec["ship"] == "router"
    lines, rec = three(summary(probe=0.36, auroc=0.5, gap=0.0, by_cat=ci(0.14, -0.06, 0.35), hind=ci(0.01, 0.0, 0.02)))
    assert lines[0] == ("the router does not route: mean safety gate 0.50 on harmful and 0.50 on benign prompts; its "
                        "base cannot tell them apart (input probe AUROC 0.36 ≤ 0.6)")
    assert rec["ship"] == "blend" and rec["gates"] == [0.5, 1.0]


def test_no_verdict_recommends_nothing_and_an_unknown_folder_is_named_model() -> None:
    s = summary()
    s["routing"][SET].update(metric=None, diff=None, diff_by_category=None, best_in_sample=None)
    lines, rec = three(s)
    assert lines == ["no verdict: no ground-truth judge for this set",
                     "no comparison with a fixed blend: nothing judges this set's answers",
                     "no recommendation: judge this set's answers first"]
    assert rec["ship"] is None and rec["command"] is None
    assert three(summary(), folders=None)[0][2] == "ship MidPO: midpo serve MODEL"
    # outside a run the blend is exported next to where the command runs; a path with a space stays one argument
    lines, _ = three(summary(diff=ci(0.03, -0.01, 0.07)), folders={"midpo": "my models/m"})
    assert lines[2].endswith("midpo export 'my models/m' --merged --gates 1,0 --to blend-1-0")
    # no intervals (--bootstrap 0): the Δ alone, and a tie
    lines, rec = three(summary(diff=ci(0.14, None, None), by_cat=None))
    assert lines[1] == "router 0.64 vs the dev-chosen blend (1, 0) 0.50: Δ +0.14 (no CI)" and rec["ship"] == "blend"
