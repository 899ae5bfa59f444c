"""Score models: checkpoints written by hand in safe-rlhf's format load, score as hand-computed, round-trip.

The fixtures write config.json keys and weight names themselves (plain torch + safetensors), not via
save_score_model, so the loader is checked against the format rather than against its own writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

from midpo_cli import console
from midpo_cli.errors import InputError
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
from midpo_cli.modeling.score_model import (
    ScoreModel,
    load_score_model,
    new_score_model,
    save_score_model,
    score_texts,
)

VOCAB = 768  # the embedded tiny-llama tokenizer, reused as every fixture's tokenizer
EOS = 2

# (config class, base model class, config kwargs, the weight prefix safe-rlhf's <Arch>ForScore uses)
BACKBONES = {
    "llama": (LlamaConfig, LlamaModel, dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2), "model"),
    "qwen2": (Qwen2Config, Qwen2Model, dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1), "model"),
    "gpt2": (GPT2Config, GPT2Model, dict(n_embd=16, n_layer=2, n_head=2, n_positions=128), "transformer"),
}
ARCH = {"llama": "LlamaForScore", "qwen2": "Qwen2ForScore", "gpt2": "GPT2ForScore"}


def write_checkpoint(folder: Path, kind: str = "llama", *, score_type: str = "reward", head: bool = True,
                     score_dim: int = 1, config_extra: dict | None = None, normalizer: dict | None = None,
                     fmt: str = "safetensors", seed: int = 0):
    """A safe-rlhf `<Arch>ForScore` folder by hand; returns (reference backbone, head weight, head bias)."""
    config_cls, model_cls, kwargs, prefix = BACKBONES[kind]
    config = config_cls(vocab_size=VOCAB, bos_token_id=1, eos_token_id=EOS, pad_token_id=0, **kwargs)
    torch.manual_seed(seed)
    backbone = model_cls(config).eval()
    state = {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    weight, bias = torch.randn(score_dim, 16), torch.randn(score_dim)
    if head:
        state["score_head.weight"], state["score_head.bias"] = weight, bias
    for key, value in (normalizer or {}).items():
        state[f"normalizer.{key}"] = value
    folder.mkdir(parents=True)
    raw = config.to_dict()
    raw.update(architectures=[ARCH[kind]], score_dim=score_dim, score_bias=True, score_type=score_type,
               do_normalize=False, normalizer_type=None)
    raw.update(config_extra or {})
    (folder / "config.json").write_text(json.dumps(raw))
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif fmt == "sharded":
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2],
                  "model-00002-of-00002.safetensors": keys[1::2]}
        for name, part in shards.items():
            save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map = {k: name for name, part in shards.items() for k in part}
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    load_tokenizer("embedded:tiny-llama").save_pretrained(folder)
    return backbone, weight[0], bias[0]


def hand_end_score(backbone, weight, bias, ids: list[int]) -> float:
    """Backbone's last hidden state at the last token of the unpadded sequence · w + b, in float64."""
    with torch.no_grad():
        h = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return float(h.double() @ weight.double() + bias.double())


SEQS = [[1, 40, 41, 42, 43, 44, 45, EOS], [1, 50, 51, EOS], [1, 60, 61, 62, 63, EOS]]


def padded(seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[row, cols], mask[row, cols] = torch.tensor(s), 1
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_hand_written_checkpoint_scores_match_hand_computation(tmp_path, kind, side):
    backbone, w, b = write_checkpoint(tmp_path / "rm", kind)
    model, tokenizer = load_score_model(tmp_path / "rm", expected_type="reward")
    assert isinstance(model, ScoreModel) and model.score_type == "reward" and not model.training
    assert tokenizer.eos_token_id == EOS
    ids, mask = padded(SEQS, side)
    with torch.no_grad():
        scores, end = model(input_ids=ids, attention_mask=mask)
    assert scores.shape == ids.shape and end.shape == (3,)
    expected = [hand_end_score(backbone, w, b, s) for s in SEQS]
    assert end.tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_bin_and_sharded_checkpoints(tmp_path, fmt):
    backbone, w, b = write_checkpoint(tmp_path / "rm", fmt=fmt)
    model, _ = load_score_model(tmp_path / "rm")
    ids, mask = padded(SEQS, "right")
    with torch.no_grad():
        end = model(input_ids=ids, attention_mask=mask)[1]
    assert end.tolist() == pytest.approx([hand_end_score(backbone, w, b, s) for s in SEQS], abs=1e-5)


def test_save_load_roundtrip(tmp_path):
    write_checkpoint(tmp_path / "rm", "gpt2", score_type="cost")
    model, tokenizer = load_score_model(tmp_path / "rm", expected_type="cost")
    save_score_model(model, tokenizer, tmp_path / "copy", score_type="cost",
                     extra_config={"midpo": {"stage": "x"}})
    raw = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert raw["architectures"] == ["GPT2ForScore"]
    keys = (raw["score_dim"], raw["score_bias"], raw["score_type"], raw["do_normalize"])
    assert keys == (1, True, "cost", False)
    assert raw["normalizer_type"] is None and raw["midpo"] == {"stage": "x"}
    assert (tmp_path / "copy" / "model.safetensors").exists()
    assert not list(tmp_path.glob(".copy.*"))  # atomic: no temp folder left behind
    again, _ = load_score_model(tmp_path / "copy")
    s1, s2 = model.state_dict(), again.state_dict()
    assert s1.keys() == s2.keys() and any(k.startswith("transformer.h.0.") for k in s1)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    ids, mask = padded(SEQS, "left")
    with torch.no_grad():
        assert torch.equal(model(ids, mask)[1], again(ids, mask)[1])


def test_new_score_model_uses_the_causal_lm_backbone(tmp_path):
    model, tokenizer = new_score_model("embedded:tiny-llama", "reward", seed=5)
    lm = load_causal_lm("embedded:tiny-llama", seed=5)
    lm_state, state = lm.state_dict(), model.state_dict()
    backbone_keys = [k for k in lm_state if k.startswith("model.")]
    assert backbone_keys and all(torch.equal(lm_state[k], state[k]) for k in backbone_keys)
    assert "lm_head.weight" not in state
    assert torch.all(model.score_head.bias == 0) and model.score_head.weight.std() > 0
    save_score_model(model, tokenizer, tmp_path / "rm", score_type="reward")
    loaded, _ = load_score_model(tmp_path / "rm", expected_type="reward")
    ids, mask = padded(SEQS, "right")
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask)[1], loaded(ids, mask)[1])


def test_missing_head_and_wrong_score_dim_are_input_errors(tmp_path):
    write_checkpoint(tmp_path / "nohead", head=False)
    with pytest.raises(InputError, match="no score head"):
        load_score_model(tmp_path / "nohead")
    write_checkpoint(tmp_path / "dim2", score_dim=2)
    with pytest.raises(InputError, match="score_dim 2"):
        load_score_model(tmp_path / "dim2")
    lm = load_causal_lm("embedded:tiny-llama", seed=0)
    lm.save_pretrained(tmp_path / "lm")
    with pytest.raises(InputError, match="LlamaForCausalLM.*no score head"):
        load_score_model(tmp_path / "lm")
    with pytest.raises(InputError, match="no such file or folder"):
        load_score_model(tmp_path / "missing" / "model")


def test_score_type_mismatch_warns(tmp_path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(console, "warn", warnings.append)
    write_checkpoint(tmp_path / "rm", score_type="reward")
    load_score_model(tmp_path / "rm", expected_type="reward")
    assert warnings == []
    model, _ = load_score_model(tmp_path / "rm", expected_type="cost")
    assert model.score_type == "reward" and len(warnings) == 1 and "reward" in warnings[0]


@pytest.mark.parametrize(("score_type", "expected"), [("reward", lambda s: (s - 2.0) / 3.0),
                                                      ("cost", lambda s: s / 3.0)])
def test_do_normalize_applies_safe_rlhf_normalizer(tmp_path, score_type, expected):
    """mean 2, var 9 (std 3): reward → affine (s − 2)/3, cost → scale s/3; the buffers in the weights win
    over the config's mean/var copy, as in safe-rlhf's load order (init from config, then state dict)."""
    backbone, w, b = write_checkpoint(
        tmp_path / "m", score_type=score_type,
        config_extra={"do_normalize": True, "normalizer_type": "ExponentialMovingAverage", "momentum": 0.9,
                      "mean": [100.0], "var": [100.0]},
        normalizer={"mean": torch.tensor([2.0]), "var": torch.tensor([9.0]), "count": torch.tensor([10])})
    model, _ = load_score_model(tmp_path / "m")
    ids, mask = padded(SEQS, "right")
    with torch.no_grad():
        end = model(ids, mask)[1]
    want = [expected(hand_end_score(backbone, w, b, s)) for s in SEQS]
    assert end.tolist() == pytest.approx(want, abs=1e-5)


PROMPTS = ["How do I boil an egg?", "hi", "Tell me about the weather in a long sentence please", "ok"]
ANSWERS = ["Put it in boiling water for nine minutes.", "Hello!", "It is sunny.",
           "Sure, here is a long answer."]


def test_score_texts_matches_safe_rlhf_text_and_is_batch_invariant(tmp_path):
    write_checkpoint(tmp_path / "rm")
    model, tokenizer = load_score_model(tmp_path / "rm")
    one = score_texts(model, tokenizer, PROMPTS, ANSWERS, batch_size=1)
    eight = score_texts(model, tokenizer, PROMPTS, ANSWERS, batch_size=8)
    two = score_texts(model, tokenizer, PROMPTS, ANSWERS, batch_size=2)
    assert one == pytest.approx(eight, abs=1e-5) and one == pytest.approx(two, abs=1e-5)
    assert len(set(one)) == len(one)  # distinct texts, distinct scores: order mix-ups would show
    reversed_scores = score_texts(model, tokenizer, PROMPTS[::-1], ANSWERS[::-1], batch_size=3)
    assert reversed_scores[::-1] == pytest.approx(one, abs=1e-5)
    # each score is the model's end score of safe-rlhf's text + EOS, scored alone; safe-rlhf tokenizes
    # prompt + answer with no space after "ASSISTANT:" (its PreferenceDataset), so neither does midpo
    for prompt, answer, score in zip(PROMPTS, ANSWERS, one, strict=True):
        text = f"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{answer}"
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            expected = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[1]
        assert score == pytest.approx(float(expected), abs=1e-5)
    assert score_texts(model, tokenizer, [], []) == []
    with pytest.raises(InputError, match="2 prompts but 1 answers"):
        score_texts(model, tokenizer, PROMPTS[:2], ANSWERS[:1])


def test_score_texts_truncates_on_the_right_with_a_warning(tmp_path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(console, "warn", warnings.append)
    write_checkpoint(tmp_path / "rm")
    model, tokenizer = load_score_model(tmp_path / "rm")
    scores = score_texts(model, tokenizer, PROMPTS[:1], ANSWERS[:1], max_length=6)
    ids = tokenizer(f"BEGINNING OF CONVERSATION: USER: {PROMPTS[0]} ASSISTANT: {ANSWERS[0]}")["input_ids"][:6]
    with torch.no_grad():
        expected = model(torch.tensor([ids]), torch.ones(1, 6, dtype=torch.long))[1]
    assert scores[0] == pytest.approx(float(expected), abs=1e-5)
    assert len(warnings) == 1 and "6 tokens" in warnings[0]
