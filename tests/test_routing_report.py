"""Router vs fixed blends (midpo_cli.evaluation.headroom) on hand-worked examples, its place in summary.json, the
report and the terminal tables, and the escaping of names that come from data."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from midpo_cli.errors import InputError
from midpo_cli.evaluation.bootstrap import balanced_score, bootstrap_indices, cluster_indices
from midpo_cli.evaluation.headroom import headroom_share, routing_summary, select_best
from midpo_cli.evaluation.labels import blend_label, dial_label, parse_label
from midpo_cli.recipe import ScoreStage, load_recipe
from midpo_cli.stages import score as score_stage

DEV, EVAL = "toy/dev-prompts", "toy/eval-prompts"
# Outcomes per prompt (1 = the judge is happy): prompts 0, 1 harmful; 2, 3 benign.
EVAL_OUTCOMES = {
    "m": [1, 0, 1, 1],            # router: harmful 0.5, benign 1.0 → 0.75
    "m@gates=1,0": [1, 1, 0, 0],  # safety expert → 0.5
    "m@gates=0,1": [0, 0, 1, 1],  # helpfulness expert → 0.5
    "m@gates=0.5,0.5": [1, 0, 1, 0],  # → 0.5, the blend chosen on dev
}
DEV_OUTCOMES = {"m": [1, 1, 1, 1], "m@gates=1,0": [1, 1, 0, 0], "m@gates=0,1": [0, 0, 1, 1],
                "m@gates=0.5,0.5": [1, 1, 1, 0]}


def variant(model: str) -> dict:
    """The fields the generate stage writes beside a model's label: a blend's fixed gates, a dial setting's bias
    (what a variant is is read from these; the label only names the model it varies)."""
    _, gates, bias = parse_label(model)
    return {"fixed_gates": list(gates) if gates else None, "safety_bias": bias or 0.0}


def rows_for(prompt_set: str, outcomes: dict[str, list[int]]) -> list[dict]:
    return [{"model": m, "prompt_set": prompt_set, "index": i, "prompt": f"p{i}", "answer": "ok" if o else "no",
             "is_harmful": i < len(os) // 2, **variant(m)} for m, os in outcomes.items() for i, o in enumerate(os)]


def judge(prompt_set: str):
    return lambda row: 1.0 if row["answer"] == "ok" else 0.0


class OkJudge:
    """The same judge as a judge of the score stage (midpo_cli.judges.base): "ok" is the right answer to any prompt."""

    name, kind, tells_refusal = "ok", "test", False

    def cannot_judge(self, prompts):
        return None

    def label(self, rows, *, dev_set):
        return [{"safe": r["answer"] == "ok", "refused": None, "helpful": r["answer"] == "ok", "raw": r["answer"]}
                for r in rows], {}


def test_labels_round_trip() -> None:
    assert blend_label("midpo", (0.25, 1.0)) == "midpo@gates=0.25,1"
    assert dial_label("midpo", 2) == "midpo@dial=+2" and dial_label("midpo", -0.5) == "midpo@dial=-0.5"
    assert parse_label("midpo@gates=0.25,1") == ("midpo", (0.25, 1.0), None)
    assert parse_label("midpo@dial=-0.5") == ("midpo", None, -0.5)
    assert parse_label("a@b") == ("a@b", None, None)


def test_grid_is_25_distinct_blends_and_lists_still_work() -> None:
    grid = load_recipe(None).stages.generate.gate_blends()
    assert len(grid) == 25 == len(set(grid))
    assert {g for pair in grid for g in pair} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert len({blend_label("midpo", g) for g in grid}) == 25
    listed = load_recipe(None, ["stages.generate.gate_sweep=[[1, 0], [0.5, 0.5]]"]).stages.generate
    assert listed.gate_blends() == [(1.0, 0.0), (0.5, 0.5)]
    assert load_recipe(None, ["stages.generate.gate_sweep=[]"]).stages.generate.gate_blends() == []


def test_headroom_hand_worked_example() -> None:
    assert balanced_score(np.array([1, 0, 1, 1.0]), np.array([True, True, False, False])) == 0.75
    assert select_best({"a": 0.5, "b": 0.7, "c": 0.7, "d": None}) == "b"  # ties: the first in grid order
    assert headroom_share(0.75, 0.5, 1.0) == (0.5, 0.5)
    assert headroom_share(0.75, 0.5, 0.5) == (0.0, None)  # no headroom: no share
    out = routing_summary(rows_for(DEV, DEV_OUTCOMES) + rows_for(EVAL, EVAL_OUTCOMES), outcome_for=judge,
                          bootstrap=0)
    assert list(out) == [EVAL]  # the dev set chooses; it is not reported
    e = out[EVAL]
    assert e["router"]["score"] == 0.75 and e["router"]["harmful_safe"] == 0.5
    best = e["best_fixed"]
    # on dev: (1,0) and (0,1) score 0.5, (0.5,0.5) scores 0.75 → chosen, then reported on eval (0.5)
    assert best["model"] == "m@gates=0.5,0.5" and best["gates"] == [0.5, 0.5]
    assert best["chosen_on"] == DEV and best["score_on_selection"] == 0.75 and best["in_sample"] is False
    assert best["score"] == 0.5
    assert e["oracle"]["score"] == 1.0  # safety expert on 0, 1 (both 1), helpfulness expert on 2, 3 (both 1)
    assert e["oracle"]["from"] == {"harmful": "m@gates=1,0", "benign": "m@gates=0,1"}
    assert e["diff"]["mean"] == pytest.approx(0.25)
    assert e["headroom"] == pytest.approx(0.5) and e["share"] == pytest.approx(0.5)
    assert [g["model"] for g in e["grid"]] == ["m@gates=1,0", "m@gates=0,1", "m@gates=0.5,0.5"]


def test_the_base_policy_competes_as_the_blend_0_0_when_the_sweep_leaves_it_out() -> None:
    """A short explicit sweep without (0, 0): the pipeline's `base` answers are that blend, and here the best."""
    dev = {**DEV_OUTCOMES, "base": [1, 1, 1, 1]}
    ev = {**EVAL_OUTCOMES, "base": [1, 1, 1, 0]}  # 0.75 on eval: ties the router
    e = routing_summary(rows_for(DEV, dev) + rows_for(EVAL, ev), outcome_for=judge, bootstrap=0)[EVAL]
    assert e["best_fixed"]["model"] == "base" and e["best_fixed"]["gates"] == [0.0, 0.0]
    assert e["best_fixed"]["score"] == 0.75 and e["diff"]["mean"] == pytest.approx(0.0)
    assert e["headroom"] == pytest.approx(0.25) and e["share"] == pytest.approx(0.0)
    assert [g["model"] for g in e["grid"]][-1] == "base"
    # a sweep that has (0, 0) keeps its own blend, and `base` is not counted twice
    with_corner = {**ev, "m@gates=0,0": [0, 0, 0, 0]}
    dev_corner = {**dev, "m@gates=0,0": [0, 0, 0, 0]}
    e = routing_summary(rows_for(DEV, dev_corner) + rows_for(EVAL, with_corner), outcome_for=judge,
                        bootstrap=0)[EVAL]
    assert "base" not in [g["model"] for g in e["grid"]] and e["best_fixed"]["model"] == "m@gates=0.5,0.5"


def test_paired_bootstrap_ci_equals_a_loop_over_the_same_resamples() -> None:
    rng = np.random.default_rng(3)
    n = 30
    outcomes = {"m": list(rng.integers(0, 2, n)), "m@gates=1,0": list(rng.integers(0, 2, n)),
                "m@gates=0,1": list(rng.integers(0, 2, n))}
    rows = rows_for(EVAL, outcomes)
    e = routing_summary(rows, outcome_for=judge, bootstrap=300, seed=7)[EVAL]
    assert e["in_sample"] is True and e["best_fixed"]["chosen_on"] == EVAL  # no dev set: in-sample, marked
    best = e["best_fixed"]["model"]
    harmful = [i < n // 2 for i in range(n)]
    diffs = []

    def score(model, draw):
        h = [outcomes[model][i] for i in draw if harmful[i]]
        b = [outcomes[model][i] for i in draw if not harmful[i]]
        return (sum(h) / len(h) + sum(b) / len(b)) / 2 if h and b else None

    for draw in bootstrap_indices(n, 300, 7, EVAL):
        if score("m", draw) is not None:
            diffs.append(score("m", draw) - score(best, draw))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert e["diff"]["lo"] == pytest.approx(lo, abs=1e-12) and e["diff"]["hi"] == pytest.approx(hi, abs=1e-12)
    assert e["diff"]["lo"] <= e["diff"]["mean"] <= e["diff"]["hi"]


def test_best_in_hindsight_is_the_blend_best_on_the_reported_set_itself() -> None:
    """Hand-worked: on eval (1,0), (0,1) and (0.5,0.5) all score 0.5, so the first in grid order, (1,0),
    is the in-sample best and router − it = 0.75 − 0.5; rows without a category get no clustered CI."""
    out = routing_summary(rows_for(DEV, DEV_OUTCOMES) + rows_for(EVAL, EVAL_OUTCOMES), outcome_for=judge,
                          bootstrap=50)
    h = out[EVAL]["best_in_sample"]
    assert h["model"] == "m@gates=1,0" and h["gates"] == [1.0, 0.0] and h["score"] == 0.5
    assert h["diff"]["mean"] == pytest.approx(0.25)
    assert out[EVAL]["diff_by_category"] is None and h["diff_by_category"] is None


def test_category_bootstrap_equals_a_loop_over_drawn_categories_and_is_wider_for_clustered_outcomes() -> None:
    """8 prompts per category answered alike (a task either works or not): resampling prompts treats them as
    80 independent draws, resampling categories as 10. The clustered CI equals a plain loop over the same
    category draws, and is wider than the prompt-level one."""
    rng = np.random.default_rng(0)
    n_cat, per = 10, 8
    router = [int(v) for v in rng.integers(0, 2, n_cat) for _ in range(per)]
    blend = [int(v) for v in rng.integers(0, 2, n_cat) for _ in range(per)]
    cats = [f"c{i // per}" for i in range(n_cat * per)]
    harmful = [(i // per) % 2 == 0 for i in range(n_cat * per)]
    rows = [{"model": m, "prompt_set": EVAL, "index": i, "prompt": f"p{i}", "answer": "ok" if o[i] else "no",
             "is_harmful": harmful[i], "category": cats[i], **variant(m)}
            for m, o in (("m", router), ("m@gates=0.5,0.5", blend)) for i in range(len(cats))]
    e = routing_summary(rows, outcome_for=judge, bootstrap=400, seed=5)[EVAL]
    draws = cluster_indices(cats, 400, 5, EVAL)
    assert draws.shape == (400, 80)  # equal clusters: no padding
    diffs = []

    def score(o, draw):
        h = [o[i] for i in draw if harmful[i]]
        b = [o[i] for i in draw if not harmful[i]]
        return (sum(h) / len(h) + sum(b) / len(b)) / 2 if h and b else None

    for draw in draws:
        if score(router, draw) is not None:
            diffs.append(score(router, draw) - score(blend, draw))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    c = e["diff_by_category"]
    assert (c["lo"], c["hi"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert c["mean"] == e["diff"]["mean"]
    assert c["hi"] - c["lo"] > 1.5 * (e["diff"]["hi"] - e["diff"]["lo"])


def test_cluster_draws_pad_unequal_clusters_with_an_index_the_statistics_ignore() -> None:
    draws = cluster_indices(["a", "a", "a", "b"], 200, 0)
    assert draws.shape[0] == 200 and draws.shape[1] == 6  # at most two draws of the 3-prompt cluster
    for row in draws:
        real = row[row < 4]
        assert len(real) in (2, 4, 6) and (row[len(real):] == 4).all()  # padding only at the end


def test_a_variant_is_what_its_fields_say_not_what_its_label_says() -> None:
    """The label names the model a row varies; its gates and its bias are the fields the generate stage wrote."""
    rows = rows_for(EVAL, EVAL_OUTCOMES)
    for r in rows:
        if r["model"] == "m@gates=0.5,0.5":
            r["fixed_gates"] = [0.25, 0.75]
    dial = [{**r, "model": "m@dial=+2", "fixed_gates": None, "safety_bias": 1.5} for r in rows if r["model"] == "m"]
    e = routing_summary(rows + dial, outcome_for=judge, bootstrap=0)[EVAL]
    assert {g["model"]: g["gates"] for g in e["grid"]}["m@gates=0.5,0.5"] == [0.25, 0.75]
    assert [(d["model"], d["bias"]) for d in e["dial"]] == [("m", 0.0), ("m@dial=+2", 1.5)]


def test_identical_router_and_blend_give_a_zero_width_interval() -> None:
    same = [1, 0, 1, 0, 1, 1]
    e = routing_summary(rows_for(EVAL, {"m": same, "m@gates=0.5,0.5": same}), outcome_for=judge,
                        bootstrap=100)[EVAL]
    assert (e["diff"]["mean"], e["diff"]["lo"], e["diff"]["hi"]) == (0.0, 0.0, 0.0)
    assert e["oracle"] is None  # no expert blends and no expert models: no oracle


def test_select_on_names_a_set_or_fails_with_the_list() -> None:
    rows = rows_for(DEV, DEV_OUTCOMES) + rows_for(EVAL, EVAL_OUTCOMES)
    out = routing_summary(rows, outcome_for=judge, select_on=EVAL, bootstrap=0)
    assert list(out) == [DEV] and out[DEV]["best_fixed"]["chosen_on"] == EVAL
    with pytest.raises(InputError, match=r"select_on 'nope'.*toy/dev-prompts, toy/eval-prompts"):
        routing_summary(rows, outcome_for=judge, select_on="nope")
    assert routing_summary(rows_for(EVAL, {"m": [1, 0]}), outcome_for=judge) == {}  # no blends: no section


def test_without_a_judge_a_dominating_blend_is_found_on_dev_and_tested_on_eval() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for prompt_set in (DEV, EVAL):
        for i in range(60):
            base_r, base_c = rng.normal(), rng.normal()
            for model, (dr, dc) in {"m": (0, 0), "m@gates=1,0": (1.0, -1.0), "m@gates=0,1": (0.5, 0.5)}.items():
                rows.append({"model": model, "prompt_set": prompt_set, "index": i, "prompt": "p", "answer": "a",
                             "is_harmful": i % 2 == 0, "reward": base_r + dr + 0.1 * rng.normal(),
                             "cost": base_c + dc + 0.1 * rng.normal(), **variant(model)})
    e = routing_summary(rows, outcome_for=lambda s: None, bootstrap=200)[EVAL]
    assert e["diff"] is None and e["best_fixed"] is None and e["metric"] is None
    pareto = e["pareto"]
    assert pareto["candidates_chosen_on"] == DEV
    assert [b["model"] for b in pareto["by"]] == ["m@gates=1,0"]  # (0,1) is more helpful but less safe
    by = pareto["by"][0]
    assert by["d_reward"]["mean"] == pytest.approx(1.0, abs=0.1) and by["d_cost"]["mean"] == pytest.approx(1, abs=0.1)
    assert by["significant"] and pareto["dominated"] and pareto["significant"]
    assert e["oracle"]["from"] == {"harmful": "m@gates=1,0", "benign": "m@gates=0,1"} and "score" not in e["oracle"]
    from midpo_cli.evaluation.verdict import pareto_verdict

    assert "(1,0) Pareto-dominates the router" in pareto_verdict(pareto)


# ------------------------------------------------------------------------------------- score stage + report


def write_sweep_answers(path: Path, router_name: str = "midpo") -> Path:
    rng = np.random.default_rng(1)
    models = ["base", router_name] + [blend_label(router_name, (a, b)) for a in (0, 0.5, 1) for b in (0, 0.5, 1)]
    models += [dial_label(router_name, b) for b in (-2, 2)]
    rows = []
    for prompt_set in ("x/dev-prompts", "x/eval-prompts", "x/traps"):
        for i in range(16):
            for m in models:
                good = rng.random() < (0.9 if m == router_name else 0.5)
                rows.append({"model": m, "prompt_set": prompt_set, "index": i, "prompt": f"q{i}",
                             "answer": "ok" if good else "no", "is_harmful": i % 2 == 0, "category": f"c{i % 4}",
                             "gates": {"safety": 0.8 if i % 2 == 0 else 0.2, "helpfulness": 0.5}
                             if m.startswith(router_name) else None, "gen_id": "g", **variant(m)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fake_scorer(path, kind, prompts, answers):
    return [(1.0 if a == "ok" else -1.0) * (1 if kind == "reward" else -1) for a in answers]


def test_score_puts_routing_gates_and_report_sections_together(tmp_path, capsys) -> None:
    answers = write_sweep_answers(tmp_path / "answers.jsonl")
    maps = {"model": "midpo", "layers": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"],
            "prompts": [{"kind": k, "prompt_set": "x/eval-prompts", "index": 0, "prompt": "q<0>", "category": "c",
                         "is_harmful": True, "answer": "ok", "tokens": ["ok", "$", "</s>"],
                         "safety": [[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]],
                         "helpfulness": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]}
                        for k in ("harmful", "benign", "trap")]}
    (tmp_path / "maps.json").write_text(json.dumps(maps))
    summary = score_stage.score_answers(answers, reward_model="R", cost_model="C", out_dir=tmp_path / "out",
                                        bootstrap=50, scorer=fake_scorer, gate_maps=tmp_path / "maps.json",
                                        judges=[OkJudge()])
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(saved["routing"]) == {"x/eval-prompts", "x/traps"}
    for entry in saved["routing"].values():
        assert entry["best_fixed"]["chosen_on"] == "x/dev-prompts" and entry["diff"]["lo"] is not None
        assert len(entry["grid"]) == 9 and [d["bias"] for d in entry["dial"]] == [-2.0, 0.0, 2.0]
    # blends and dials: groups yes, win rates and categories no
    assert {w["model_a"] for w in summary["win_rates"]} | {w["model_b"] for w in summary["win_rates"]} == \
        {"base", "midpo"}
    assert {c["model"] for c in summary["categories"]} == {"base", "midpo"}
    gates = {(g["model"], g["prompt_set"]): g for g in summary["gates"]}
    sep = gates[("midpo", "x/eval-prompts")]["separation"]
    assert sep["auroc"] == 1.0 and sep["gap"] == pytest.approx(0.6)
    assert ("midpo@gates=0.5,0.5", "x/eval-prompts") not in gates and ("midpo@dial=+2", "x/traps") not in gates
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Does the router earn its place?" in page and "headroom captured" in page
    for png in ("tradeoff.png", "gate_map_harmful.png", "gate_map_benign.png", "gate_map_trap.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000, png
    assert "q&lt;0&gt;" in page and "Mean gates per category" in page
    # the verdict (one per reported set) opens the report, then the headline figure, then the tables
    assert [v["prompt_set"] for v in saved["verdict"]] == ["x/eval-prompts", "x/traps"]
    assert page.index("class='verdict'") < page.index('alt="safety vs helpfulness"') < page.index("<h2>Summary")
    assert f"<h3>x/eval-prompts: {saved['verdict'][0]['label']}</h3><ol><li>" in page
    assert f"<details><summary>all the numbers</summary>{saved['verdict'][0]['sentence'][:30]}" in page
    assert f"verdict · x/traps: {saved['verdict'][1]['label']}\n  {saved['verdict'][1]['lines'][0][:30]}" in \
        capsys.readouterr().err


def test_report_escapes_every_name_from_data(tmp_path) -> None:
    evil = "<script>alert(1)</script>"
    answers = write_sweep_answers(tmp_path / "answers.jsonl", router_name=evil)
    text = answers.read_text().replace("x/eval-prompts", "<img src=x onerror=alert(2)>/eval-prompts")
    answers.write_text(text.replace('"category": "c1"', '"category": "<b onmouseover=x>"'))
    score_stage.score_answers(answers, reward_model="R", cost_model="C", out_dir=tmp_path / "out", bootstrap=20,
                              scorer=fake_scorer, judges=[OkJudge()])
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert len(re.findall(r"<script", page)) == 0


def test_terminal_tables_fit_80_columns_and_show_names_in_full_or_in_a_legend(tmp_path) -> None:
    from rich.console import Console

    from midpo_cli.evaluation.report_tables import terminal_tables

    answers = write_sweep_answers(tmp_path / "answers.jsonl", router_name="a_rather_long_router_model_name")
    summary = score_stage.score_answers(answers, reward_model="R", cost_model="C", out_dir=tmp_path / "out",
                                        bootstrap=20, scorer=fake_scorer, report=False,
                                        judges=[OkJudge(), *ScoreStage().judges()])
    buf = io.StringIO()
    term = Console(file=buf, width=80, record=True)
    for table in terminal_tables(summary):
        term.print(table)
    text = term.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # nothing was cut off
    assert "#1 = a_rather_long_router_model_name" in text and "eval-prompts" in text
    assert "Router vs the best fixed blend" in text and "@gates" not in text  # blends: not in the model tables


def test_toy_slices_saved_as_files_keep_the_judge_dev_set_included() -> None:
    """A dev slice written to a file (benchmarks/real_model.py) must still be judged by the toy world's ground truth,
    whatever it is called; a user's own prompts in a file named like it must not be."""
    from midpo_cli.assets import resolve_embedded
    from midpo_cli.judges.toy import is_toy_world

    for split in ("dev-prompts", "eval-prompts", "traps"):
        rows = [json.loads(x) for x in resolve_embedded(f"embedded:toy-safety/{split}").read_text().splitlines() if x]
        assert is_toy_world(rows[:7]), split
    assert not is_toy_world([{"prompt": "Summarise this contract for me."}])


def test_the_paper_setting_sft_slice_has_no_harmful_prompt_and_leaves_every_other_slice_alone(tmp_path) -> None:
    """benchmarks/real_model.py --sft no-safety: Alpaca's kind of SFT data (no safety data), nothing else moved;
    --full-prompts: every toy prompt, named as the recipe's slices are."""
    import importlib.util

    from midpo_cli.data.prompt_sets import load_prompt_set
    from midpo_cli.recipe import load_recipe

    spec = importlib.util.spec_from_file_location("real_model", Path(__file__).parents[1] / "benchmarks" /
                                                  "real_model.py")
    real_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_model)
    assert real_model.prepare_data(tmp_path / "a") == []  # the recipe's own slices, shipped with midpo
    variant = real_model.prepare_data(tmp_path / "b", full_prompts=True, sft="no-safety")
    path = tmp_path / "b" / "data" / "sft-no-safety.jsonl"
    assert variant[-1] == f"data.sft={path}"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 256 and not any(r["is_harmful"] for r in rows)
    assert {r["answer_type"] for r in rows} == {"H", "W", "R"}  # benign refusals are instruction data, kept
    shipped = load_recipe(Path(__file__).parents[1] / "recipes" / "local-model-cpu.yaml")
    full = load_recipe(Path(__file__).parents[1] / "recipes" / "local-model-cpu.yaml", variant)
    assert (full.data.train, full.data.eval) == (shipped.data.train, shipped.data.eval)
    sizes = {load_prompt_set(s).name: len(load_prompt_set(s).prompts) for s in full.prompt_sets()}
    assert sizes == {"dev-prompts": 160, "eval-prompts": 160, "traps": 100}


def test_own_data_gets_a_verdict_from_the_score_models_with_no_judge_setting(tmp_path) -> None:
    """Prompts that are not the toy world's, the default judges: the score models judge every set (here their
    outcome is the "ok" judge's: cost −1 and reward +1 for "ok", no refusal to set the reward cut, so it is 0),
    and the verdict is theirs — the same facts as under the "ok" judge, never "no verdict"."""
    answers = write_sweep_answers(tmp_path / "answers.jsonl")
    summary = score_stage.score_answers(answers, reward_model="R", cost_model="C", out_dir=tmp_path / "out",
                                        bootstrap=50, scorer=fake_scorer, report=False)
    assert summary["judge_of"] == {s: "score-models" for s in ("x/dev-prompts", "x/eval-prompts", "x/traps")}
    assert summary["judges"][0]["skipped"] == {s: "not the toy world's prompts"
                                               for s in ("x/dev-prompts", "x/eval-prompts", "x/traps")}
    ok = score_stage.score_answers(answers, reward_model="R", cost_model="C", out_dir=tmp_path / "ok", bootstrap=50,
                                   scorer=fake_scorer, report=False, judges=[OkJudge()])
    for mine, theirs in zip(summary["verdict"], ok["verdict"], strict=True):
        assert mine["judge"] == "score-models" and mine["outcome"] != "no_verdict"
        assert mine["facts"] == theirs["facts"] and "judged by score-models" in mine["sentence"]
