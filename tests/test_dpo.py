"""DPO machinery: the concatenated forward, the reference log-prob cache and the health monitor,
checked against float64 one-sequence-at-a-time computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from midpo_cli.data.filters import Pair
from midpo_cli.data.tokenize import collate_pairs, encode_pairs
from midpo_cli.engine.preference import DpoHealth, RefLogpCache, concatenated_logps, fill_ref_logps
from midpo_cli.modeling.loading import load_tokenizer
from midpo_cli.modeling.lora import add_lora, lora_config

PAIRS = [
    Pair("How do I bake bread?", "Mix flour, water, yeast and salt, knead, let it rise, bake.", "I can't help.",
         True, True, 0),
    Pair("Tell me a joke", "Why did the chicken cross the road? To get to the other side.", "No.", True, True, 1),
    Pair("How do I pick a lock?", "I won't help with breaking into things.", "Use a tension wrench and a pick.",
         True, False, 2),
    Pair("Name a colour", "Blue.", "A very long answer that talks about many colours and never names one.",
         True, True, 3),
    Pair("What is two plus two?", "Four.", "Five, obviously, as everyone knows.", True, True, 4),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded:tiny-llama")


@pytest.fixture(scope="module")
def features(tokenizer):
    feats, counts = encode_pairs(PAIRS, tokenizer, "safe-rlhf", 96)
    assert counts["kept"] == len(PAIRS)
    return feats


def tiny_policy(tokenizer, lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    if lora:
        model = add_lora(model, lora_config(r=4, alpha=8))
        with torch.no_grad():  # a LoRA that changes the outputs, so "adapter disabled" is observable
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    return model.eval()


def one_sequence_logp(model, ids: list[int], prompt_len: int) -> float:
    """log π(answer | prompt) of one unpadded sequence, float64 log-softmax, a loop over answer tokens."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(prompt_len, len(ids)))


def expected(model, feats) -> list[tuple[float, float]]:
    return [(one_sequence_logp(model, f["chosen_input_ids"], f["chosen_prompt_len"]),
             one_sequence_logp(model, f["rejected_input_ids"], f["rejected_prompt_len"])) for f in feats]


def test_concatenated_logps_match_one_sequence_at_a_time(tokenizer, features):
    model = tiny_policy(tokenizer, lora=True)
    batch = collate_pairs(features, tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected = concatenated_logps(model, batch)
    want = expected(model, features)
    torch.testing.assert_close(chosen.double(), torch.tensor([c for c, _ in want], dtype=torch.float64),
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(rejected.double(), torch.tensor([r for _, r in want], dtype=torch.float64),
                               rtol=0, atol=1e-4)


def fill(model, feats, cache, batch_size=2) -> tuple[list[dict], int]:
    return fill_ref_logps(model, feats, PAIRS, lambda fs: collate_pairs(fs, 0), cache, batch_size=batch_size,
                          reference=model.disable_adapter)


def test_reference_logps_come_from_the_adapter_free_weights_and_are_cached(tokenizer, features, tmp_path):
    policy = tiny_policy(tokenizer, lora=True)
    base_want = expected(tiny_policy(tokenizer, lora=False), features)
    lora_want = expected(policy, features)
    assert abs(base_want[0][0] - lora_want[0][0]) > 1e-2  # the adapter matters, so the check below can fail

    namespace = {"policy": "p", "template": "safe-rlhf", "max_length": 96}
    feats, computed = fill(policy, features, RefLogpCache(tmp_path, namespace))
    assert computed == len(PAIRS)
    assert all("ref_chosen_logps" not in f for f in features)  # new feature dicts; the given ones are unchanged
    for f, (c, r) in zip(feats, base_want, strict=True):
        assert f["ref_chosen_logps"] == pytest.approx(c, abs=1e-4)
        assert f["ref_rejected_logps"] == pytest.approx(r, abs=1e-4)
    assert policy.training is False
    assert torch.allclose(torch.tensor(expected(policy, features[:1])), torch.tensor(lora_want[:1]))  # adapter on

    # a fresh cache object on the same folder and namespace: nothing recomputed, the same values
    again, computed = fill(policy, features, RefLogpCache(tmp_path, namespace))
    assert computed == 0
    assert [(f["ref_chosen_logps"], f["ref_rejected_logps"]) for f in again] == \
        [(f["ref_chosen_logps"], f["ref_rejected_logps"]) for f in feats]

    # swapped chosen/rejected (as the other expert orders a pair) reuse the per-sequence entries
    swapped_pairs = [Pair(p.prompt, p.rejected, p.chosen, p.rejected_safe, p.chosen_safe, p.row) for p in PAIRS]
    swapped, _ = encode_pairs(swapped_pairs, tokenizer, "safe-rlhf", 96)
    swapped, computed = fill_ref_logps(policy, swapped, swapped_pairs, lambda fs: collate_pairs(fs, 0),
                                       RefLogpCache(tmp_path, namespace), batch_size=2,
                                       reference=policy.disable_adapter)
    assert computed == 0
    assert swapped[0]["ref_chosen_logps"] == feats[0]["ref_rejected_logps"]

    # another policy fingerprint: another file, everything recomputed
    other = RefLogpCache(tmp_path, {**namespace, "policy": "q"})
    assert other.path != RefLogpCache(tmp_path, namespace).path
    assert fill(policy, features, other)[1] == len(PAIRS)


def test_cache_file_is_verified_on_load(tokenizer, features, tmp_path, capsys):
    policy = tiny_policy(tokenizer, lora=True)
    namespace = {"policy": "p"}
    cache = RefLogpCache(tmp_path, namespace)
    fill(policy, features, cache)

    data = json.loads(cache.path.read_text())
    first_key = sorted(data["values"])[0]
    data["values"][first_key] = math.nan  # a poisoned entry is recomputed, the others are reused
    cache.path.write_text(json.dumps(data))
    assert fill(policy, features, RefLogpCache(tmp_path, namespace))[1] == 1

    data["namespace"] = json.dumps({"policy": "someone else"})  # a header that does not match: ignored
    cache.path.write_text(json.dumps(data))
    assert fill(policy, features, RefLogpCache(tmp_path, namespace))[1] == len(PAIRS)

    cache.path.write_text("{ not json")
    assert RefLogpCache(tmp_path, namespace).values == {}
    assert "ignoring unreadable reference cache" in capsys.readouterr().err


def test_batching_order_does_not_change_the_values(tokenizer, features, tmp_path):
    policy = tiny_policy(tokenizer, lora=True)
    one, _ = fill(policy, features, RefLogpCache(tmp_path / "a", {}), batch_size=1)
    many, _ = fill(policy, features, RefLogpCache(tmp_path / "b", {}), batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a["ref_chosen_logps"] == pytest.approx(b["ref_chosen_logps"], abs=1e-4)
        assert a["ref_rejected_logps"] == pytest.approx(b["ref_rejected_logps"], abs=1e-4)


def metrics(loss=0.5, acc=0.8, chosen=-30.0, rejected=-40.0, margin=1.0) -> dict[str, float]:
    return {"loss": loss, "rewards/accuracies": acc, "logps/chosen": chosen, "logps/rejected": rejected,
            "spe_margin_mean": margin}


def run_health(series) -> tuple[DpoHealth, list[list[str]]]:
    health = DpoHealth(warmup_steps=10, window=5)
    return health, [health.update(step, m) for step, m in enumerate(series, start=1)]


def test_health_is_quiet_on_a_healthy_run_and_during_warmup(capsys):
    health, _ = run_health([metrics(loss=0.69 - 0.01 * i, chosen=-30 + 0.1 * i) for i in range(40)])
    assert health.warned == set()
    health, _ = run_health([metrics(loss=math.log(2), acc=0.4, margin=0.0)] * 9)  # all inside warm-up
    assert health.warned == set()
    assert capsys.readouterr().err == ""


def test_health_warns_once_per_failure_sign(capsys):
    health, fired = run_health([metrics(loss=math.log(2), acc=0.5, margin=0.0)] * 30)
    assert health.warned == {"loss_at_ln2", "accuracy"}
    assert sum(len(f) for f in fired) == 2 and fired[9] == ["loss_at_ln2", "accuracy"]
    err = capsys.readouterr().err
    assert "ln 2" in err and "accuracy 0.50" in err

    series = [metrics(chosen=-30.0 - 2 * i, rejected=-40.0 - 2 * i) for i in range(30)]
    health, _ = run_health(series)
    assert health.warned == {"both_fall"}
    assert "both fell" in capsys.readouterr().err

    # SPE-DPO with a non-zero margin: a loss near ln 2 is not "stuck" (the margin moves the optimum)
    health, _ = run_health([metrics(loss=math.log(2), margin=2.0)] * 30)
    assert "loss_at_ln2" not in health.warned
