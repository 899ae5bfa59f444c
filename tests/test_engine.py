"""Engine tests on a tiny model: exact agreement with a hand-written AdamW loop (ZeRO 0/2/3), seeding,
resume after interrupt, NaN stops, signals, metrics, DeepSpeed config merging and verified artifacts.

All single-process, on CPU; each train() call takes about a second (the DeepSpeed comms op is built once
per machine and cached under TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent / "engine_scripts"))

from faults import faulty_step  # noqa: E402
from tiny import Tiny, collate, loss_fn, make_data, make_model  # noqa: E402

from midpo_cli.engine import artifacts, checkpoint, loop  # noqa: E402
from midpo_cli.engine.deepspeed_config import deepspeed_config  # noqa: E402
from midpo_cli.engine.launch import launcher_env  # noqa: E402
from midpo_cli.engine.loop import (  # noqa: E402
    epoch_order,
    lr_lambda,
    param_groups,
    rank_micro_batches,
    train,
)
from midpo_cli.engine.settings import EngineSettings  # noqa: E402
from midpo_cli.errors import InputError, Interrupted, TrainingError  # noqa: E402

SCRIPT = Path(__file__).parent / "engine_scripts" / "train_tiny.py"
REPO = Path(__file__).resolve().parents[1]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def no_dropout_model() -> Tiny:
    torch.manual_seed(0)
    return Tiny(dropout=0.0)


# ------------------------------------------------------------------ pure pieces

def test_lr_lambda_matches_hand_formulas():
    """warmup 2 of 10 steps: (s+1)/3 for s<2, then cosine 0.5(1+cos(pi·(s-2)/8)) or linear 1-(s-2)/8."""
    cos, lin, const = (lr_lambda(k, 2, 10) for k in ("cosine", "linear", "constant"))
    for s in range(12):
        if s < 2:
            want = (s + 1) / 3
            assert cos(s) == pytest.approx(want) and lin(s) == pytest.approx(want) and const(s) == pytest.approx(want)
        else:
            p = min(1.0, (s - 2) / 8)
            assert cos(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
            assert lin(s) == pytest.approx(1 - p)
            assert const(s) == 1.0
    with pytest.raises(InputError, match="train.scheduler"):
        lr_lambda("exp", 0, 10)


def test_param_groups_exclude_1d_params_from_decay():
    model = Tiny()
    groups = param_groups(list(model.parameters()), 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model.inp.weight), id(model.out.weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(model.inp.bias), id(model.norm.weight),
                                                    id(model.norm.bias), id(model.out.bias)}


def test_data_order_is_seeded_and_ranks_get_disjoint_batches():
    assert np.array_equal(epoch_order(7, 1, 50), epoch_order(7, 1, 50))
    assert not np.array_equal(epoch_order(7, 1, 50), epoch_order(7, 2, 50))
    order = epoch_order(7, 0, 50)
    per_rank = [rank_micro_batches(order, batch_size=4, world=3, rank=r, n_micro=4) for r in range(3)]
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == 48 and len(set(seen)) == 48  # 50 // (4·3) = 4 micro batches each, last 2 rows dropped
    assert all(len(b) == 4 for batches in per_rank for b in batches)


def test_deepspeed_config_merges_user_json_and_recipe_batch_sizes_win(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 99, "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_optimization": {"stage": 2, "overlap_comm": True}, "bf16": {"enabled": "auto"},
        "scheduler": {"type": "WarmupLR"},
    }))
    s = EngineSettings(batch_size=4, grad_accum=3, max_grad_norm=0.5, precision="bf16", deepspeed_config=str(user))
    cfg = deepspeed_config(s, world=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 24 and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert "scheduler" not in cfg and "optimizer" not in cfg
    with pytest.raises(InputError, match="missing.json does not exist"):
        deepspeed_config(EngineSettings(deepspeed_config=str(tmp_path / "missing.json")), world=1)


# ------------------------------------------------------------------ the loop against an independent reference

def reference_adamw(steps: int, *, batch_size: int, grad_accum: int, lr: float, seed: int) -> dict:
    """Hand-written loop: same data order, mean of micro-batch losses, torch AdamW, no clipping, const lr."""
    data, model = make_data(), no_dropout_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n_micro = len(data) // batch_size // grad_accum * grad_accum
    micro = rank_micro_batches(epoch_order(seed, 0, len(data)), batch_size=batch_size, world=1, rank=0,
                               n_micro=n_micro)
    for step in range(steps):
        for idx in micro[step * grad_accum:(step + 1) * grad_accum]:
            loss, _ = loss_fn(model, collate([data[i] for i in idx]))
            (loss / grad_accum).backward()
        opt.step()
        opt.zero_grad()
    return weights(model)


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_zero_stages_match_a_hand_written_adamw_loop(tmp_path, zero):
    settings = EngineSettings(max_steps=3, batch_size=4, grad_accum=2, lr=1e-2, scheduler="constant", warmup_ratio=0.0,
                              max_grad_norm=None, zero_stage=zero, seed=3, eval_each_epoch=False, log_every=1)
    result = train(model=no_dropout_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn,
                   settings=settings, out_dir=tmp_path)
    want = reference_adamw(3, batch_size=4, grad_accum=2, lr=1e-2, seed=3)
    got = weights(result.model)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert result.global_step == 3 and result.resumed_from_step is None
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all({"step", "epoch", "lr", "loss", "mae", "samples_per_s", "tokens_per_s"} <= set(r) for r in lines)


def settings_for_resume(**kw) -> EngineSettings:
    base = dict(max_steps=6, batch_size=4, grad_accum=2, lr=1e-2, scheduler="cosine", warmup_ratio=0.2,
                weight_decay=0.1, max_grad_norm=1.0, seed=11, log_every=1, checkpoint={"every_steps": 2},
                eval_each_epoch=False)
    return EngineSettings(**{**base, **kw})


def run_tiny(out: Path, settings: EngineSettings, **kw):
    return train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn, settings=settings,
                 out_dir=out, eval_data=make_data(6, seed=9), **kw)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path):
    a = weights(run_tiny(tmp_path / "a", settings_for_resume()).model)
    b = weights(run_tiny(tmp_path / "b", settings_for_resume()).model)
    c = weights(run_tiny(tmp_path / "c", settings_for_resume(seed=12)).model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_interrupt_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    full = run_tiny(tmp_path / "full", settings_for_resume())
    out = tmp_path / "interrupted"
    monkeypatch.setattr(loop, "train_step", faulty_step("sigint", 3))  # a real SIGINT to this process after step 3
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match=r"interrupted at step 3; checkpoint written to .*step-3$") as caught:
        run_tiny(out, settings_for_resume())
    assert caught.value.resumable  # how to continue is added by the command (test_user_trips.py)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-3"
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-2", "step-3"]  # keep=2
    monkeypatch.undo()
    resumed = run_tiny(out, settings_for_resume())
    assert resumed.resumed_from_step == 3 and resumed.global_step == 6
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_lines = (out / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if not k.endswith("_per_s")} for x in full_lines]
    assert strip == [{k: v for k, v in json.loads(x).items() if not k.endswith("_per_s")} for x in resumed_lines]


def test_resume_refuses_a_changed_batch_layout(tmp_path):
    run_tiny(tmp_path, settings_for_resume(max_steps=2))
    with pytest.raises(InputError, match="batch_size: checkpoint 4, now 2"):
        run_tiny(tmp_path, settings_for_resume(batch_size=2))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "train_step", faulty_step("nan", 3))
    with pytest.raises(TrainingError, match=r"loss is nan at step 3 \(epoch 1\); last good checkpoint: .*step-2"):
        run_tiny(tmp_path, settings_for_resume(checkpoint={"every_steps": 1}))
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (tmp_path / "checkpoints" / "step-3").exists()


def test_eval_every_and_weighted_eval_means(tmp_path):
    """Eval loss must equal the per-row mean over all 7 eval rows (batches of 3, 3, 1 weighted by size)."""
    eval_data = make_data(7, seed=4)
    settings = EngineSettings(max_steps=4, batch_size=4, eval_every=2, eval_batch_size=3, eval_each_epoch=False,
                              lr=1e-3, seed=5, log_every=2)
    model = no_dropout_model()
    result = train(model=model, train_data=make_data(), collate=collate, loss_fn=loss_fn, settings=settings,
                   out_dir=tmp_path, eval_data=eval_data)
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4]
    with torch.no_grad():
        per_row = [float((result.model(r["x"][None]) - r["y"]).pow(2).double().item()) for r in eval_data]
    assert result.last_eval["loss"] == pytest.approx(sum(per_row) / 7, rel=1e-5)


def test_too_little_data_for_one_step_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="fewer than one optimizer step"):
        train(model=make_model(), train_data=make_data(5), collate=collate, loss_fn=loss_fn,
              settings=EngineSettings(batch_size=4, grad_accum=2), out_dir=tmp_path)


def test_external_sigint_leaves_a_resumable_checkpoint(tmp_path):
    """A real Ctrl-C from outside mid-run: exit 130, a checkpoint, and a rerun that resumes from it."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--steps", "200", "--sleep", "0.05"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=launcher_env())
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]  # still training when we interrupt it
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint written to" in err  # how to continue is the command's to say (test_user_trips.py)
    tag = (out / "checkpoints" / "latest").read_text().strip()
    step = int(tag.split("-")[1])
    assert 0 < step < 200
    rerun = subprocess.run([*cmd[:-4], "--steps", str(step + 2)], cwd=REPO, capture_output=True, text=True,
                           timeout=300, env=launcher_env())
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from_step"] == step and result["global_step"] == step + 2


# ------------------------------------------------------------------ verified artifacts

def _save_state(model):
    return lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p / "w.safetensors"))


def _load_into_fresh(path):
    fresh = Tiny(dropout=0.0)
    fresh.load_state_dict(load_file(str(path / "w.safetensors")))
    return fresh.eval()


def test_save_verified_round_trip_and_atomic_failure(tmp_path):
    model = no_dropout_model().eval()
    probe = torch.linspace(-1, 1, 16).reshape(2, 8)
    ref = model(probe).detach()
    out = artifacts.save_verified(_save_state(model), tmp_path / "ok", load_fn=_load_into_fresh,
                                  probe_fn=lambda m: m(probe), reference=ref)
    assert (out / "w.safetensors").is_file()
    with pytest.raises(TrainingError, match=r"differ from the in-memory model by 1, more than the [\d.e-]+ that "
                                            r"rounding in float32 allows \(8 × eps 1.19e-07 × output scale [\d.]+\)"):
        artifacts.save_verified(_save_state(model), tmp_path / "bad", load_fn=_load_into_fresh,
                                probe_fn=lambda m: m(probe), reference=ref + 1.0)
    assert not (tmp_path / "bad").exists() and list(tmp_path.iterdir()) == [tmp_path / "ok"]


def test_probe_tolerance_follows_the_dtype_the_model_computes_in(tmp_path, monkeypatch):
    """Issue 27: the post-save check allows 8 eps of the compute dtype at the outputs' scale, not a fixed 1e-4
    (which refused every bf16 artifact); a difference bf16 rounding explains passes in bf16 and fails in fp32."""
    ref = torch.tensor([[4.0, -1.0, 0.25]])
    assert artifacts.compute_eps(torch.bfloat16) == 2.0**-7 and artifacts.compute_eps(torch.float16) == 2.0**-10
    assert artifacts.compute_eps(torch.float32) == 2.0**-23
    assert artifacts.probe_tolerance(torch.bfloat16, ref) == 8 * 2.0**-7 * 4.0
    assert artifacts.probe_tolerance(torch.float32, ref * 0.1) == 8 * 2.0**-23  # the scale is at least 1
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # TF32 matmuls round like fp16
    assert artifacts.compute_eps(torch.float32) == 2.0**-10
    monkeypatch.undo()

    model = no_dropout_model().eval()
    off = ref + 3 * 2.0**-7 * 4.0  # three bf16 ulps at the scale: what rounding does, not a missing weight

    def check(dtype, where):
        return artifacts.save_verified(_save_state(model), tmp_path / where, load_fn=_load_into_fresh,
                                       probe_fn=lambda m: off, reference=ref, dtype=dtype)

    assert check(torch.bfloat16, "bf16").is_dir()
    with pytest.raises(TrainingError, match=r"by 0.0938, more than the 3.81e-06 that rounding in float32 allows"):
        check(torch.float32, "fp32")
    assert not (tmp_path / "fp32").exists()
    assert artifacts.model_dtype(model.to(torch.bfloat16)) == torch.bfloat16
    assert artifacts.precision_of(model) == "bf16"


def test_bf16_probe_still_catches_a_changed_layer(tmp_path):
    """With bf16's wider tolerance, one changed middle-layer weight or a head that did not load still fails."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    probe = {"input_ids": torch.randint(0, 97, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    save = _save_state(model)
    artifacts.save_checked(model, tmp_path / "same", save_fn=save, load_fn=lambda _p: copy.deepcopy(model),
                           forward=artifacts.logits_on(probe))
    for where in ("model.layers.0.mlp.down_proj.weight", "lm_head.weight"):
        other = copy.deepcopy(model)
        with torch.no_grad():
            dict(other.named_parameters())[where].normal_(std=0.5)  # e.g. a freshly initialised, unloaded layer
        with pytest.raises(TrainingError, match="rounding in bfloat16 allows"):
            artifacts.save_checked(model, tmp_path / "bad", save_fn=save, load_fn=lambda _p, o=other: o,
                                   forward=artifacts.logits_on(probe))


def test_lm_probe_is_small_and_still_catches_a_changed_layer_or_head(tmp_path):
    """`logits_on`: hidden states at every position + full logits at the last one, (B, T·H + V), not (B, T, V).
    A reload that differs in one middle-layer weight, or only in lm_head, must still fail verification."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    probe = {"input_ids": torch.randint(0, 97, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    out = artifacts.logits_on(probe)(model)
    assert out.shape == (2, 7 * 16 + 97)
    with torch.no_grad():
        full = model(**probe).logits
    torch.testing.assert_close(out[:, -97:], full[:, -1], rtol=0, atol=1e-6)  # the head at the last position

    def changed(where):
        def load(_path):
            other = copy.deepcopy(model)
            with torch.no_grad():
                weight = dict(other.named_parameters())[where]
                weight[0, 0] += 0.5
            return other
        return load

    save = _save_state(model)
    artifacts.save_checked(model, tmp_path / "same", save_fn=save, load_fn=lambda _p: copy.deepcopy(model),
                           forward=artifacts.logits_on(probe))
    assert (tmp_path / "same" / "w.safetensors").is_file()
    for where in ("model.layers.0.mlp.down_proj.weight", "lm_head.weight"):
        with pytest.raises(TrainingError, match="differ"):
            artifacts.save_checked(model, tmp_path / where, save_fn=save, load_fn=changed(where),
                                   forward=artifacts.logits_on(probe))


def test_check_tensors_catches_empty_zero_and_dead_lora(tmp_path):
    cases = {
        "empty": ({"a": torch.ones(3), "b": torch.empty(0)}, "empty"),
        "zeros": ({"a": torch.zeros(3), "b": torch.zeros(2, 2)}, "all zeros"),
        "lora": ({"x.lora_A.weight": torch.randn(2, 4), "x.lora_B.weight": torch.zeros(4, 2)}, "lora_B"),
    }
    for name, (tensors, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        with pytest.raises(TrainingError, match=message):
            artifacts.check_tensors(folder)
    good = tmp_path / "good"
    good.mkdir()
    save_file({"x.lora_A.weight": torch.randn(2, 4), "x.lora_B.weight": torch.randn(4, 2),
               "bias": torch.zeros(4)}, str(good / "adapter_model.safetensors"))
    assert artifacts.check_tensors(good) == 3


def test_checkpoint_prune_keeps_newest_and_pointer_target(tmp_path):
    for s in (1, 2, 10, 11):
        (tmp_path / f"step-{s}").mkdir()
    checkpoint.prune(tmp_path, keep=2, current="step-11")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-10", "step-11"]
    (tmp_path / "latest").write_text("step-99\n")
    assert checkpoint.latest_tag(tmp_path) is None  # dangling pointer → no resume


def test_tensorboard_and_plain_progress_lines(tmp_path, capsys):
    """Off a terminal the progress is one plain line per logged step; TensorBoard gets event files."""
    settings = EngineSettings(max_steps=4, batch_size=4, log_every=2, tensorboard=True, eval_each_epoch=False)
    train(model=make_model(), train_data=make_data(), collate=collate, loss_fn=loss_fn, settings=settings,
          out_dir=tmp_path, stage_name="tiny")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("tiny: step")]
    assert [ln.split()[2] for ln in lines] == ["2/4", "4/4"]
    assert all("samples/s" in ln and "tokens/s" in ln and "ETA" in ln for ln in lines)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
