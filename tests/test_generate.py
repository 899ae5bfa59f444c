"""Batched generation (left padding, KV cache, gates) and the resumable `midpo generate` output file.

The references are independent of generation.py: a per-prompt greedy loop that re-runs the full
forward without padding or cache, and a teacher-forced forward of the MidPO model for the gates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from midpo_cli.data.template import format_prompt
from midpo_cli.errors import InputError
from midpo_cli.modeling.generation import generate_answers
from midpo_cli.stages import generate as stage

VOCAB = 64
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "BEGINNING", "OF", "CONVERSATION:", "USER:", "ASSISTANT:"] + [
    f"w{i}" for i in range(VOCAB - 9)]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_model(seed: int = 0, positions: int = 96) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a sharper random model: fewer near-ties between the top logits
        model.lm_head.weight.mul_(8)
    return model


PROMPTS = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11", "w12 w13", "w30 w31 w32 w33", "w40"]


def reference_greedy(model, tok, prompt: str, max_new: int) -> list[int]:
    ids = tok(format_prompt(prompt), add_special_tokens=True)["input_ids"]
    out = []
    for _ in range(max_new):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


def test_batched_left_padded_cached_greedy_equals_a_per_prompt_loop() -> None:
    model, tok = tiny_model().double(), tiny_tokenizer()
    batches = list(generate_answers(model, tok, PROMPTS, max_new_tokens=6, batch_size=4))
    rows = {r["index"]: r for b in batches for r in b}
    assert sorted(rows) == list(range(len(PROMPTS)))
    assert [len(b) for b in batches] == [4, 2]
    lengths = [r["prompt_tokens"] for b in batches for r in b]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    for i, prompt in enumerate(PROMPTS):
        want = reference_greedy(model, tok, prompt, 6)
        assert rows[i]["answer"] == tok.decode(want, skip_special_tokens=True).strip(), i
        assert rows[i]["answer_tokens"] == len(want)
        assert rows[i]["finished"] == (len(want) < 6)
        assert rows[i]["gates"] is None and rows[i]["truncated"] is False


def test_long_prompts_are_truncated_from_the_left_and_flagged() -> None:
    model, tok = tiny_model(positions=24), tiny_tokenizer()
    long = " ".join(f"w{i % 50}" for i in range(60))
    rows = [r for b in generate_answers(model, tok, [long, "w1"], max_new_tokens=4) for r in b]
    by = {r["index"]: r for r in rows}
    assert by[0]["truncated"] and by[0]["prompt_tokens"] == 24 - 4
    assert not by[1]["truncated"]


def test_sampling_is_reproducible_with_a_seed() -> None:
    model, tok = tiny_model(), tiny_tokenizer()
    with torch.no_grad():
        model.lm_head.weight.div_(8)  # flat distribution: samples differ between seeds

    def run(seed):
        return [r["answer"] for b in generate_answers(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0,
                                                      seed=seed) for r in b]
    assert run(3) == run(3)
    assert run(3) != run(4)


def build_midpo(tmp_path: Path):
    from midpo_cli.modeling.lora import lora_config, read_adapter
    from midpo_cli.modeling.midpo import RouterSettings, wrap

    base = tiny_model()
    base.save_pretrained(str(tmp_path / "base"))
    adapters = {}
    for i, name in enumerate(("safety", "helpfulness")):
        torch.manual_seed(10 + i)
        peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(str(tmp_path / "base")), lora_config(r=4, alpha=8))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.5)
        peft_model.save_pretrained(str(tmp_path / name))
        adapters[name] = read_adapter(tmp_path / name)
    midpo = wrap(LlamaForCausalLM.from_pretrained(str(tmp_path / "base")), adapters["safety"],
                 adapters["helpfulness"], RouterSettings())
    with torch.no_grad():
        for p in midpo.router_parameters():
            p.normal_(std=0.5)  # token-dependent gates
    return midpo.eval()


def test_midpo_gates_are_the_mean_over_the_steps_that_produced_the_answer(tmp_path) -> None:
    midpo, tok = build_midpo(tmp_path), tiny_tokenizer()
    rows = [r for b in generate_answers(midpo, tok, PROMPTS[:3], max_new_tokens=5, batch_size=3) for r in b]
    for r in rows:
        prompt_ids = tok(format_prompt(PROMPTS[r["index"]]), add_special_tokens=True)["input_ids"]
        answer_ids = reference_greedy(midpo, tok, PROMPTS[r["index"]], 5)  # may hold special tokens
        assert r["answer_tokens"] == len(answer_ids) and r["finished"] == (len(answer_ids) < 5)
        produced = len(answer_ids) + (1 if r["finished"] else 0)
        seq = prompt_ids + answer_ids + ([tok.eos_token_id] if r["finished"] else [])
        with torch.no_grad():
            midpo(torch.tensor([seq]))
        layers = torch.stack(midpo.gates())  # (L, 1, T, 2)
        positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + produced)  # each predicts an answer token
        want = layers[:, 0, list(positions), :].double().mean(dim=(0, 1))
        assert r["gates"]["safety"] == pytest.approx(float(want[0]), abs=1e-5)
        assert r["gates"]["helpfulness"] == pytest.approx(float(want[1]), abs=1e-5)
    with midpo.fixed_gates(0.25, 0.75):
        fixed = [r for b in generate_answers(midpo, tok, PROMPTS[:2], max_new_tokens=3) for r in b]
    assert all(r["gates"] == {"safety": 0.25, "helpfulness": 0.75} for r in fixed)


# ------------------------------------------------------------------------------------------ output file


def write_prompts(path: Path) -> Path:
    long = " ".join(f"w{i % 50}" for i in range(200))
    path.write_text("w1 w2 ünïcødé ✓\n\n" + "\n".join(PROMPTS) + "\n   \n" + long + "\n", encoding="utf-8")
    return path


def loader_for(model_dir: Path):
    def load(entry):
        return stage.Policy(LlamaForCausalLM.from_pretrained(str(model_dir)).eval(), tiny_tokenizer(), "base")
    return load


def test_prompt_file_counts_empty_lines_and_long_prompts(tmp_path) -> None:
    tiny_model().save_pretrained(str(tmp_path / "m"))
    pset = stage.load_prompt_set(f"mine={write_prompts(tmp_path / 'p.txt')}")
    assert pset.name == "mine" and len(pset.prompts) == 8
    assert pset.counts["skipped:empty_lines"] == 2
    out = tmp_path / "answers.jsonl"
    stats = stage.generate_to_file(stage.model_entries([f"tiny={tmp_path / 'm'}"]), [pset], out, max_new_tokens=4,
                                   batch_size=3, loader=loader_for(tmp_path / "m"))
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert stats["rows_written"] == 8 and stats["truncated_prompts"] == 1
    assert {r["prompt"] for r in rows} >= {"w1 w2 ünïcødé ✓"}
    assert set(rows[0]) == set(stage.ROW_FIELDS)
    assert sorted(r["index"] for r in rows) == list(range(8))


def test_missing_prompt_file_is_a_one_line_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="file not found"):
        stage.load_prompt_set(str(tmp_path / "nope.txt"))


def test_partial_last_line_is_dropped_and_the_rerun_completes(tmp_path) -> None:
    tiny_model().save_pretrained(str(tmp_path / "m"))
    pset = stage.load_prompt_set(str(write_prompts(tmp_path / "p.txt")))
    entries = stage.model_entries([f"a={tmp_path / 'm'}", f"b={tmp_path / 'm'}"])
    full = tmp_path / "full.jsonl"
    stage.generate_to_file(entries, [pset], full, max_new_tokens=4, batch_size=3, loader=loader_for(tmp_path / "m"))
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("".join(lines[:5]) + lines[5][:17], encoding="utf-8")  # died mid-append
    stats = stage.generate_to_file(entries, [pset], crashed, max_new_tokens=4, batch_size=3,
                                   loader=loader_for(tmp_path / "m"))
    assert stats["rows_existing"] == 5 and stats["rows_written"] == 11
    key = lambda r: (r["model"], r["index"])  # noqa: E731
    got = sorted((json.loads(x) for x in crashed.read_text(encoding="utf-8").splitlines()), key=key)
    assert got == sorted((json.loads(x) for x in lines), key=key)
    calls = []
    again = stage.generate_to_file(entries, [pset], crashed, max_new_tokens=4,
                                   loader=lambda e: calls.append(e) or loader_for(tmp_path / "m")(e))
    assert again["rows_written"] == 0 and calls == []  # nothing to do: no model is loaded
    with pytest.raises(InputError, match="other settings"):
        stage.generate_to_file(entries, [pset], crashed, max_new_tokens=5, loader=loader_for(tmp_path / "m"))


KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from transformers import LlamaForCausalLM
from test_generate import tiny_tokenizer
from midpo_cli.stages import generate as stage

tmp = Path({tmp!r})
def load(entry):
    return stage.Policy(LlamaForCausalLM.from_pretrained(str(tmp / "m")).eval(), tiny_tokenizer(), "base")
orig = stage.append_rows
def slow_append(path, rows):
    orig(path, rows)
    print("batch", flush=True)
    time.sleep(float({delay!r}))
stage.append_rows = slow_append
pset = stage.load_prompt_set(str(tmp / "p.txt"))
entries = stage.model_entries(["a=" + str(tmp / "m"), "b=" + str(tmp / "m")])
stage.generate_to_file(entries, [pset], tmp / {name!r}, max_new_tokens=4, batch_size=2, loader=load)
"""


def test_killing_generate_mid_run_and_rerunning_completes_without_duplicates(tmp_path) -> None:
    tiny_model().save_pretrained(str(tmp_path / "m"))
    write_prompts(tmp_path / "p.txt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def script(name, delay):
        return [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT).format(
            tests=str(Path(__file__).parent), tmp=str(tmp_path), delay=delay, name=name)]

    proc = subprocess.Popen(script("answers.jsonl", 30), stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "batch"  # first batch on disk, then it sleeps
        assert proc.stdout.readline().strip() == "batch"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    partial = (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(partial) == 4
    subprocess.run(script("answers.jsonl", 0), check=True, env=env, stdout=subprocess.DEVNULL, timeout=120)
    pset = stage.load_prompt_set(str(tmp_path / "p.txt"))  # the uninterrupted reference, in-process
    stage.generate_to_file(stage.model_entries([f"a={tmp_path / 'm'}", f"b={tmp_path / 'm'}"]), [pset],
                           tmp_path / "straight.jsonl", max_new_tokens=4, batch_size=2,
                           loader=loader_for(tmp_path / "m"))
    key = lambda r: (r["model"], r["index"])  # noqa: E731
    resumed = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    straight = [json.loads(x) for x in (tmp_path / "straight.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len({key(r) for r in resumed}) == len(resumed) == 16
    assert sorted(resumed, key=key) == sorted(straight, key=key)


def test_model_labels_and_gate_suffix() -> None:
    entries = stage.model_entries(["safety=runs/x/adapter", "runs/y=z/m"], gates=[0.5, 0.25])
    assert [(e.label, e.spec) for e in entries] == [("safety@gates=0.5,0.25", "runs/x/adapter"),
                                                     ("runs/y=z/m@gates=0.5,0.25", "runs/y=z/m")]
    with pytest.raises(InputError, match="twice"):
        stage.model_entries(["m", "m"])
