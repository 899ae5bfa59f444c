"""`activation_checkpointing`: the same gradients and trained weights as without it, fewer saved activations."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from midpo_cli.engine.loop import enable_activation_checkpointing, train
from midpo_cli.engine.settings import EngineSettings
from midpo_cli.errors import InputError
from midpo_cli.losses.preference import sequence_logps
from midpo_cli.modeling.lora import add_lora, lora_config
from midpo_cli.modeling.score_model import ScoreModel


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def tiny_lora(seed: int = 0):
    model = add_lora(tiny_llama(seed), lora_config(r=4, alpha=8))
    with torch.no_grad():  # non-zero B, so every LoRA weight gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def batch(n: int = 6, t: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (n, t), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # right padding on one row
    response = torch.zeros_like(ids)
    response[:, t // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response * mask}


def lm_loss(model, b) -> torch.Tensor:
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return -sequence_logps(logits, b["input_ids"], b["response_mask"]).mean()


def grads_and_saved_bytes(model, loss_of) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of the trainable parameters, and the bytes autograd saved for backward outside checkpoints."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, saved[0]


def test_lora_gradients_are_unchanged_and_fewer_activations_are_kept():
    b = batch()
    plain, plain_bytes = grads_and_saved_bytes(tiny_lora(), lambda m: lm_loss(m, b))
    model = tiny_lora()
    enable_activation_checkpointing(model, "safety_expert")
    ckpt, ckpt_bytes = grads_and_saved_bytes(model, lambda m: lm_loss(m, b))
    assert plain.keys() == ckpt.keys() and any("lora_A" in n for n in plain)
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)


def test_score_model_backbone_is_checkpointed_with_the_same_gradients():
    b = batch()

    def score_model():
        return ScoreModel(tiny_llama(3).model, score_type="cost")

    def end_scores(m):
        return m(b["input_ids"], b["attention_mask"])[1].square().sum()

    plain, plain_bytes = grads_and_saved_bytes(score_model(), end_scores)
    model = score_model()
    enable_activation_checkpointing(model, "cost_model")
    ckpt, ckpt_bytes = grads_and_saved_bytes(model, end_scores)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)
    assert ckpt_bytes < 0.5 * plain_bytes


def test_a_model_without_the_switch_is_a_clear_error():
    with pytest.raises(InputError, match="router: activation_checkpointing is on but Linear"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2), "router")


def test_engine_trains_to_the_same_weights_with_checkpointing(tmp_path):
    data = [{k: v[i] for k, v in batch(8).items()} for i in range(8)]

    def collate(rows):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def loss_fn(model, b):
        return lm_loss(model, b), {}

    results = {}
    for flag in (False, True):
        settings = EngineSettings(max_steps=2, batch_size=4, lr=1e-2, scheduler="constant", seed=5,
                                  eval_each_epoch=False, activation_checkpointing=flag)
        result = train(model=tiny_lora(), train_data=data, collate=collate, loss_fn=loss_fn, settings=settings,
                       out_dir=tmp_path / str(flag))
        assert result.model.is_activation_checkpointing is flag
        results[flag] = {n: p.detach().clone() for n, p in result.model.named_parameters() if "lora_" in n}
    for name, value in results[False].items():
        torch.testing.assert_close(results[True][name], value, rtol=1e-5, atol=1e-6)


def test_recipe_key_reaches_the_engine_settings_per_stage():
    from midpo_cli.recipe import Recipe
    from midpo_cli.stages.kit.inputs import engine_settings

    recipe = Recipe.model_validate({"train": {"activation_checkpointing": True},
                                    "stages": {"helpfulness_expert": {"activation_checkpointing": False}}})
    assert engine_settings(recipe, "safety_expert").activation_checkpointing is True
    assert engine_settings(recipe, "helpfulness_expert").activation_checkpointing is False
    assert engine_settings(Recipe(), "sft").activation_checkpointing is False
