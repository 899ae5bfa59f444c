"""Checkpoints of a LoRA run hold the adapter and its optimizer state, not the frozen base, and resume
bit-identically; a checkpoint whose trainable parameters differ from the model's is refused."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from midpo_cli.engine import loop
from midpo_cli.engine.loop import train
from midpo_cli.engine.settings import EngineSettings
from midpo_cli.errors import InputError, Interrupted
from midpo_cli.modeling.lora import add_lora, lora_config

sys.path.insert(0, str(Path(__file__).parent / "engine_scripts"))
from faults import faulty_step  # noqa: E402


def lora_model(targets: tuple[str, ...] = ("down_proj",)):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return add_lora(LlamaForCausalLM(cfg), lora_config(r=2, alpha=4, dropout=0.1, target_modules=targets))


def data(n: int = 32) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (n, 10), generator=gen)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long)} for i in range(n)]


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def loss_fn(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
    return out.loss, {}


def settings(zero: int) -> EngineSettings:
    return EngineSettings(max_steps=6, batch_size=4, lr=1e-2, scheduler="cosine", warmup_ratio=0.2, seed=7,
                          log_every=1, checkpoint={"every_steps": 2}, eval_each_epoch=False, zero_stage=zero)


def run(out, zero, targets=("down_proj",)):
    return train(model=lora_model(targets), train_data=data(), collate=collate, loss_fn=loss_fn,
                 settings=settings(zero), out_dir=out)


def adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_checkpoint_leaves_out_the_frozen_base_and_resumes_bit_identically(tmp_path, monkeypatch, zero):
    full = run(tmp_path / "full", zero)
    out = tmp_path / "interrupted"
    monkeypatch.setattr(loop, "train_step", faulty_step("sigint", 4))
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted):
        run(out, zero)
    assert signal.getsignal(signal.SIGINT) is previous
    step4 = out / "checkpoints" / "step-4"
    base_bytes = sum(p.numel() * p.element_size() for n, p in lora_model().named_parameters() if "lora_" not in n)
    saved_bytes = sum(f.stat().st_size for f in step4.rglob("*") if f.is_file())
    assert saved_bytes < 0.5 * base_bytes, (saved_bytes, base_bytes)  # adapter + Adam state, not the base

    monkeypatch.undo()
    resumed = run(out, zero)
    assert resumed.resumed_from_step == 4 and resumed.global_step == 6
    want, got = adapter(full.model), adapter(resumed.model)
    assert want and want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(want[k], adapter(lora_model())[k]) for k in want)  # training moved the adapter


def test_resume_refuses_a_checkpoint_of_other_trainable_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "train_step", faulty_step("sigint", 2))
    with pytest.raises(Interrupted):
        run(tmp_path, 0)
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"trainable parameters differ .*not in the checkpoint: \['.*up_proj"):
        run(tmp_path, 0, targets=("down_proj", "up_proj"))
    (tmp_path / "checkpoints" / "step-2" / "midpo-trainable.json").unlink()
    with pytest.raises(InputError, match="no readable checkpoint .*midpo-trainable.json: missing"):
        run(tmp_path, 0)
