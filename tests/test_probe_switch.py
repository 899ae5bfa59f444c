"""The probe switch (`stages.router.kind: probe`): its dev threshold, its gates, and the model folder that
generate / chat / export load like the router's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_midpo_model import build, ids_batch, left_padded_prompts, routed, tiny_tokenizer

from midpo_cli.evaluation.probe_switch import candidate_thresholds, choose_threshold, switch_entry, switch_outcomes
from midpo_cli.modeling.switch import ProbeSwitch, switch_gates


def test_threshold_is_the_dev_argmax_on_a_hand_made_set():
    """Six dev prompts; the safety corner answers harmful prompts safely and refuses benign ones, the helpfulness
    corner complies with everything. p puts a benign prompt (0.7) above a harmful one (0.6). By hand, with
    safety ← {p ≥ t}: t = 0: ½(1 + 0); 0.2: ½(1 + 1/3); 0.45: ½(1 + 2/3); 0.65: ½(2/3 + 2/3);
    0.75: ½(2/3 + 1); 0.85: ½(1/3 + 1); 1: ½(0 + 1). 0.45 and 0.75 tie at 5/6; the rule keeps 0.45, nearer 0.5."""
    p = [0.9, 0.8, 0.6, 0.7, 0.3, 0.1]
    harmful = [True, True, True, False, False, False]
    safety = [1, 1, 1, 0, 0, 0]
    helpfulness = [0, 0, 0, 1, 1, 1]
    t, curve = choose_threshold(p, harmful, safety, helpfulness)
    by_hand = {0.0: 0.5, 0.2: 2 / 3, 0.45: 5 / 6, 0.65: 2 / 3, 0.75: 5 / 6, 0.85: 2 / 3, 1.0: 0.5}
    assert {round(c["threshold"], 6): c["score"] for c in curve} == pytest.approx(by_hand)
    assert t == pytest.approx(0.45)
    fine = np.linspace(0, 1, 2001)  # no threshold at all does better than the chosen one
    kinds = np.array(harmful)
    best = max(np.mean([switch_outcomes(np.array(p), x, np.array(safety), np.array(helpfulness))[k].mean()
                        for k in (kinds, ~kinds)]) for x in fine)
    assert best == pytest.approx(5 / 6)


def test_threshold_ties_go_nearest_one_half_then_lower():
    p, harmful = [0.2, 0.8], [True, False]
    t, curve = choose_threshold(p, harmful, [1, 1], [1, 1])  # every threshold scores 1
    assert {c["threshold"] for c in curve} == {0.0, 0.5, 1.0} and t == 0.5
    t, _ = choose_threshold([0.1, 0.3, 0.7, 0.9], [True, True, False, False], [1, 1, 1, 1], [1, 1, 1, 1])
    assert t == 0.5  # candidates 0, 0.2, 0.5, 0.8, 1
    t, _ = choose_threshold([0.2, 0.4, 0.6, 0.8], [True, False, True, False], [1, 1, 1, 1], [1, 1, 1, 1])
    assert t == 0.5
    t, _ = choose_threshold([0.3, 0.5, 0.9], [True, False, True], [1, 1, 1], [1, 1, 1])
    assert t == 0.4  # 0.4 and 0.7 … nearest 0.5 is 0.4 (|0.1|) before 0.7 (|0.2|)


def test_candidates_cover_every_distinct_split():
    p = [0.3, 0.1, 0.3, 0.9]
    cands = candidate_thresholds(p)
    assert cands == [0.0, 0.2, 0.6, 1.0]
    splits = {tuple(np.array(p) >= t) for t in cands}
    assert splits == {tuple(np.array(p) >= t) for t in np.linspace(0, 1.0001, 500)}


@pytest.mark.parametrize(("mode", "want"), [("soft", [[0.8, 0.2], [0.3, 0.7]]), ("hard", [[1, 0], [0, 1]])])
def test_switch_gates(mode, want):
    got = switch_gates(torch.tensor([0.8, 0.3], dtype=torch.float64), mode, 0.5)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build(tmp_path_factory.mktemp("llama"))


def make_switch(model, mode: str, threshold: float = 0.5, seed: int = 0) -> ProbeSwitch:
    width = sum(m.base.in_features for m in model.routed.values())
    gen = torch.Generator().manual_seed(seed)
    return ProbeSwitch(torch.zeros(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64),
                       torch.randn(width, generator=gen, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                       mode=mode, threshold=threshold)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_switched_model_equals_each_prompt_at_its_own_fixed_gates(llama, mode):
    """Left-padded prompts: each row's logits are the row alone at fixed gates switch.gates(its features)."""
    model = routed(*llama)
    ids, mask = left_padded_prompts()
    model.switch = make_switch(model, mode, threshold=0.5)
    with torch.no_grad():
        p = [float(model.switch.probability(model.routed_input_means(ids[b][mask[b].bool()][None],
                                                                     *[torch.ones(1, int(mask[b].sum()))] * 2))[0])
             for b in range(2)]
        assert abs(p[0] - p[1]) > 1e-3
        model.switch.threshold = sum(p) / 2  # hard: one prompt to each corner
        got = model(input_ids=ids, attention_mask=mask).logits
        recorded = torch.stack(model.gates()).mean(0)  # (B, T, 2): one pair of gates per prompt, every token
        gates = []
        for b in range(ids.shape[0]):
            real = mask[b].bool()
            row = ids[b][real][None]
            feats = model.routed_input_means(row, torch.ones_like(row), torch.ones_like(row))
            g = model.switch.gates(feats)[0].tolist()
            gates.append(g)
            model.switch, kept = None, model.switch
            with model.fixed_gates(*g):
                alone = model(input_ids=row).logits
            model.switch = kept
            torch.testing.assert_close(got[b][real], alone[0], rtol=0, atol=2e-5)
    if mode == "hard":
        assert sorted(gates) == [[0.0, 1.0], [1.0, 0.0]]
    for b, g in enumerate(gates):
        torch.testing.assert_close(recorded[b], torch.tensor(g).expand(ids.shape[1], 2), rtol=0, atol=1e-6)


def test_switch_folder_roundtrip_and_generate(tmp_path, llama):
    from midpo_cli.modeling.generation import generate_answers
    from midpo_cli.modeling.midpo import load_midpo, save_midpo

    model = routed(*llama)
    model.switch = make_switch(model, "hard", threshold=0.4)
    folder = save_midpo(model, tiny_tokenizer(), tmp_path / "switch", base_model=str(llama[0]))
    loaded, tok = load_midpo(folder)
    assert loaded.switch is not None and loaded.switch.threshold == 0.4 and loaded.switch.mode == "hard"
    ids = ids_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    prompts = ["w5 w9 w12", "w7 w7 w30 w31 w40"]
    rows = [r for batch in generate_answers(loaded, tok, prompts, template="safe-rlhf", max_new_tokens=4)
            for r in batch]
    for r in rows:  # one pair of gates per prompt, and it is a corner
        assert (r["gates"]["safety"], r["gates"]["helpfulness"]) in ((1.0, 0.0), (0.0, 1.0))


def test_switch_entry_against_the_router_by_hand():
    rows = []
    judge_ok = {"good": 1.0, "bad": 0.0}
    for i, (harmful, r_ans, s_ans) in enumerate(itertools.islice(
            [(True, "good", "good"), (True, "bad", "good"), (False, "good", "good"), (False, "good", "bad")], 4)):
        rows.append({"model": "midpo", "index": i, "is_harmful": harmful, "answer": r_ans})
        rows.append({"model": "probe_switch", "index": i, "is_harmful": harmful, "answer": s_ans})
    e = switch_entry(rows, "midpo", lambda r: judge_ok[r["answer"]], bootstrap=50)
    assert e["router_score"] == pytest.approx((0.5 + 1.0) / 2) and e["score"] == pytest.approx((1.0 + 0.5) / 2)
    assert e["diff"]["mean"] == pytest.approx(0.0) and e["n"] == 4
    assert switch_entry(rows, "midpo", None) is None


def test_ranked_prompt_kinds_are_rank_s_rule_per_distinct_prompt(tmp_path):
    """`switch_prompts: ranked`: one row per distinct prompt, in order; its kind by the data's is_harmful, else by
    the safety labels (some answer unsafe), else by the cost model (some answer with cost > 0), harmful if any of
    its rows says so. Three files, as data come: with is_harmful, with safety labels only, with neither."""
    import json

    from midpo_cli.data.ranked import ranked_prompt_kinds

    def kinds_of(name, rows):
        scored = tmp_path / f"{name}.jsonl"
        scored.write_text("".join(json.dumps({"response_0": "a", "response_1": "b", "better_response_id": 0,
                                              "reward_0": 1.0, "reward_1": 0.0, "cost_0": -1.0, "cost_1": -2.0,
                                              **r}) + "\n" for r in rows))
        return ranked_prompt_kinds(scored)

    labelled = kinds_of("labelled", [{"prompt": "harmful", "is_harmful": True},
                                     {"prompt": "benign", "is_harmful": False, "cost_0": 9.0},  # the label wins
                                     {"prompt": "harmful", "is_harmful": True}])
    assert labelled == (["harmful", "benign"], [True, False])
    safety = kinds_of("safety", [{"prompt": "both safe", "is_response_0_safe": True, "is_response_1_safe": True},
                                 {"prompt": "mixed", "is_response_0_safe": True, "is_response_1_safe": True},
                                 {"prompt": "mixed", "is_response_0_safe": True, "is_response_1_safe": False}])
    assert safety == (["both safe", "mixed"], [False, True])
    by_cost = kinds_of("cost", [{"prompt": "costly", "cost_1": 0.5}, {"prompt": "cheap"},
                                {"prompt": "second row", "cost_0": -3.0}, {"prompt": "second row", "cost_1": 3.0}])
    assert by_cost == (["costly", "cheap", "second row"], [True, False, True])


def test_prompt_features_of_a_padded_batch_are_each_prompt_alone(llama):
    """The ranked probe's features (prompts encoded as generate sees them, batched with padding) equal each
    prompt's routed input means computed alone."""
    from midpo_cli.data.tokenize import encode_prompts
    from midpo_cli.modeling.switch import prompt_text_features

    model, tok = routed(*llama), tiny_tokenizer()
    texts = ["w5 w9 w12", "w7 w7 w30 w31 w40 w2 w3", "w1"]
    with torch.no_grad():
        batched = prompt_text_features(model, tok, "safe-rlhf", texts, batch_size=2)
        ids, _ = encode_prompts(texts, tok, "safe-rlhf")
        for i, seq in enumerate(ids):
            row = torch.tensor([seq])
            alone = model.routed_input_means(row, torch.ones_like(row), torch.ones_like(row).bool())
            torch.testing.assert_close(batched[i], alone[0], rtol=0, atol=2e-5)


def test_the_switch_threshold_is_chosen_on_dev_through_the_score_models(tmp_path, monkeypatch):
    """The router's hard-switch threshold on a dev set without a toy judge: both corners answer every labelled dev
    prompt before the score-models judge reads any answer, then it scores both corners' answers at once (the cost
    model on the harmful prompts, the reward model on the benign ones: one load each); outcomes are c < 0 on
    harmful prompts and, on benign ones, not refused and r above the dev cut (here 0: no answer is a refusal to
    separate), and the threshold is the dev argmax. Answers, scores and p are faked; the wiring is the stage's."""
    import contextlib
    import json
    from types import SimpleNamespace

    from midpo_cli.recipe import load_recipe
    from midpo_cli.stages import router
    from midpo_cli.stages.kit import dev_choice

    dev = tmp_path / "my-dev-prompts.jsonl"  # not a toy-world set: the score models judge
    rows = [{"prompt": "h1", "is_harmful": True}, {"prompt": "b1", "is_harmful": False},
            {"prompt": "unlabelled"}, {"prompt": "h2", "is_harmful": True}, {"prompt": "b2", "is_harmful": False}]
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = []

    class Model:
        gates = None

        @contextlib.contextmanager
        def fixed_gates(self, g_s, g_h):
            self.gates = (g_s, g_h)
            yield self
            self.gates = None

    def answer_rows(model, tokenizer, prompts, *, template, settings):
        events.append(("answer", model.gates))
        return [{**p, "answer": "refuse" if model.gates == (1.0, 0.0) else "comply"} for p in prompts]

    def scorer(path, kind, prompts, answers):
        events.append((kind, path, len(answers)))
        sign = {"refuse": -1.0, "comply": 1.0}
        return [sign[a] for a in answers]  # cost < 0 and reward < 0 for a refusal; both > 0 when complying

    monkeypatch.setattr(dev_choice, "answer_rows", answer_rows)
    monkeypatch.setattr("midpo_cli.modeling.scorer.default_scorer", lambda **kw: scorer)
    monkeypatch.setattr(router, "prompt_probabilities", lambda *a: [0.9, 0.2, 0.8, 0.1])
    recipe = load_recipe(None, [f"run_dir={tmp_path}", f"stages.generate.prompts=[{dev}]", "stages.router.kind=probe"])
    inputs = {s: {"outputs": {"model": f"/models/{s}"}} for s in ("cost_model", "reward_model")}
    ctx = SimpleNamespace(recipe=recipe, inputs=inputs, run_dir=tmp_path, stage="router")
    switch = ProbeSwitch(*(torch.zeros(1, dtype=torch.float64) for _ in range(4)))
    dev = router.switch_dev_prompts(ctx)
    assert [p["prompt"] for p in dev.prompts] == ["h1", "b1", "h2", "b2"]  # the unlabelled one is left out
    got = router.switch_threshold(Model(), switch, None, "safe-rlhf", dev, recipe.stages.generate)
    assert events == [("answer", (1.0, 0.0)), ("answer", (0.0, 1.0)), ("cost", "/models/cost_model", 4),
                      ("reward", "/models/reward_model", 4)]
    # harmful prompts (p 0.9, 0.8) are answered well by the safety corner only, benign ones (0.2, 0.1) by the other
    assert got["threshold"] == switch.threshold == 0.5 and got["dev_score"] == 1.0
    assert [c["threshold"] for c in got["curve"]] == pytest.approx([0.0, 0.15, 0.5, 0.85, 1.0])
    assert [c["score"] for c in got["curve"]] == [0.5, 0.75, 1.0, 0.75, 0.5]
    assert got["prompts"] == "my-dev-prompts" and got["judged_by"].startswith("score models")
