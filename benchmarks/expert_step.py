"""One short safety-expert training run, three ways, each in its own process (issue 5's benchmark).

    python benchmarks/expert_step.py [--pairs 256] [--epochs 3] [--variants midpo,reference,trl,trl-fast]
    python benchmarks/expert_step.py --model DIR --pairs 64 --epochs 1 --max-length 128   # a real model folder

The same ≈20M-parameter LLaMA (random init, the embedded tokenizer), the same safety pairs, LoRA
(r 16, alpha 32, down_proj), batch size, learning rate, schedule, β and epochs, fp32 on the CPU:

- midpo:          `midpo train-expert --kind safety` (SPE-DPO) — cost-model margins and reference
                  log-probs computed once before training (both included in the time), one model
                  in memory, activation checkpointing off (midpo's default);
- midpo-dpo:      the same stage with `loss: dpo` — margin 0, so no score-model pass: TRL's objective;
- midpo-ckpt:     SPE-DPO with `train.activation_checkpointing: true` (the memory-lean setting);
- midpo-dpo-ckpt: `loss: dpo` with activation checkpointing: TRL's objective at midpo's memory-lean setting;
- <any of these>-rows: the same with `train.share_prompt: false`, two rows per pair (the prompt encoded
                  twice, the layout before issue 13's prefix sharing), to measure the packed rows side by side;
- reference:      the reference implementation's layout, written here: a second full model copy as
                  π_ref, the cost model's forward inside every step for the margin, and the loss in a
                  per-sample Python loop (per-token log-probs vectorised, sums and loss per pair) —
                  a plain torch loop, no DeepSpeed (which only spares it overhead);
- trl:            TRL's DPOTrainer with the same peft LoRA config and its defaults otherwise: reference
                  log-probs from the adapter-disabled model inside every step, plain DPO, activation
                  checkpointing on (TRL 1.x's default) — like-for-like with midpo-ckpt on memory;
- trl-fast:       TRL with `precompute_ref_log_probs=True` and checkpointing off: TRL's fastest
                  configuration, like-for-like with midpo-dpo. TRL 1.16 always scores answer positions
                  only, in tiles (its fused LM head); it has no `use_logits_to_keep` option, and its
                  `padding_free` is disabled since its DPO refactor (it warns and pads) and needs
                  FlashAttention anyway, so neither is set (`use_logits_to_keep` is, on a TRL that has it).
                  The TRL options used are printed with the table.

`--size 100m` builds a ≈100M-parameter model instead (for the memory trend: the reference layout's
extra weight copies weigh more as the model grows). `--model DIR` uses a local Hugging Face model folder
(weights and tokenizer) as the policy instead, its architecture's default LoRA target, and a cost model
on its backbone with a fresh head (e.g. Gemma 3 270M: a 262k-token vocabulary, where answer-only log-probs
matter); everything else is unchanged, still fp32 on the CPU. `--repeat N` runs the variants round-robin N
times and reports the median wall time (the spread shows how noisy the machine was). `--trace` adds each
midpo variant's phases (LoRA model, margins, reference log-probs, training, save-and-verify) with their
time and peak RSS, sampled every 50 ms, to find where the peak is.

Wall time is measured around each child process (interpreter start and imports included, for all
variants alike). Peak RSS is the child's ru_maxrss; "model RSS" subtracts the RSS the child had
right after importing its libraries, which is what the weights, optimizer and activations cost.
Nothing here asserts a timing; the table is printed for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIDPO = ("midpo", "midpo-dpo", "midpo-ckpt", "midpo-dpo-ckpt")
# "-rows": the same midpo variant with two rows per pair (train.share_prompt false), the layout before sharing
MIDPO_SETS = {  # each midpo variant's recipe overrides
    "midpo": [],
    "midpo-dpo": ["stages.safety_expert.loss=dpo"],
    "midpo-ckpt": ["train.activation_checkpointing=true"],
    "midpo-dpo-ckpt": ["stages.safety_expert.loss=dpo", "train.activation_checkpointing=true"],
}
VARIANTS = (*MIDPO, *(f"{v}-rows" for v in MIDPO), "reference", "trl", "trl-fast")
COMPARE = [("midpo", "reference"), ("midpo-ckpt", "reference"), ("midpo", "trl"), ("midpo-dpo", "trl-fast"),
           ("midpo-dpo-ckpt", "trl-fast"), ("midpo-ckpt", "trl")]  # (ours, theirs) pairs reported as ratios
SIZES = {  # LLaMA shapes; the vocabulary is the embedded tokenizer's (768)
    "20m": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6, "num_attention_heads": 8},
    "100m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 14, "num_attention_heads": 12},
}


def offline_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work / "hf_home"),
                "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "MIDPO_NO_COLOR": "1"})
    return env


# ----------------------------------------------------------------------------- setup (parent, untimed)

def build_policy(work: Path, settings: dict) -> None:
    """work/policy: a link to --model's folder, or the random LLaMA of --size; settings gain its description."""
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from midpo_cli.modeling.loading import load_tokenizer
    from midpo_cli.modeling.lora import resolve_targets

    if settings["model"]:
        (work / "policy").symlink_to(Path(settings["model"]).resolve(), target_is_directory=True)
        config = AutoConfig.from_pretrained(work / "policy")
        settings["parameters"] = stored_parameters(work / "policy")
        settings["description"] = f"{config.model_type} from {settings['model']}, vocabulary {config.vocab_size:,}"
    else:
        tokenizer = load_tokenizer("embedded:tiny-llama")
        torch.manual_seed(settings["seed"])
        shape = SIZES[settings["size"]]
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             num_key_value_heads=shape["num_attention_heads"], max_position_embeddings=256,
                             tie_word_embeddings=False, **shape)
        policy = LlamaForCausalLM(config)
        settings["parameters"] = sum(p.numel() for p in policy.parameters())
        settings["description"] = (f"LLaMA (hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
                                   "random init)")
        policy.save_pretrained(work / "policy", safe_serialization=True)
        tokenizer.save_pretrained(work / "policy")
    settings["targets"] = resolve_targets(config.model_type, None)


def stored_parameters(folder: Path) -> int:
    """Parameters in a folder's safetensors files, read from their headers (tied weights are stored once)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            total += sum(prod(fh.get_slice(key).get_shape()) for key in fh.keys())
    return total


def build_assets(work: Path, settings: dict) -> None:
    """Policy, cost model (safe-rlhf format), the pairs file and midpo's recipe, all under `work`."""
    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.readers import load_rows
    from midpo_cli.modeling.score_model import new_score_model, save_score_model

    build_policy(work, settings)
    cost, cost_tok = new_score_model(str(work / "policy"), "cost", seed=settings["seed"] + 1)
    save_score_model(cost, cost_tok, work / "cost")

    # the first N pairs the safety filter keeps, their rows written back in the canonical schema:
    # every variant then trains on exactly these pairs
    table = load_rows("embedded:toy-safety/train")
    kept = select_pairs(table, "safety_expert").pairs[: settings["pairs"]]
    with open(work / "train.jsonl", "w") as fh:
        for pair in kept:
            fh.write(json.dumps(table.rows[pair.row]) + "\n")
    (work / "settings.json").write_text(json.dumps(settings, indent=1))
    recipe = f"""run_dir: {work / 'run'}
base_model: {work / 'policy'}
data: {{train: {work / 'train.jsonl'}, eval: null, max_length: {settings['max_length']}, template: safe-rlhf}}
train: {{epochs: {settings['epochs']}, batch_size: {settings['batch_size']}, lr: {settings['lr']},
        scheduler: cosine, warmup_ratio: {settings['warmup_ratio']}, seed: {settings['seed']}, precision: fp32,
        eval_each_epoch: false, log_every: 1}}
deepspeed: {{zero_stage: 0}}
stages:
  sft: {{use: {work / 'policy'}}}
  cost_model: {{use: {work / 'cost'}, min_accuracy: 0.0}}
  safety_expert: {{beta: {settings['beta']},
                  lora: {{r: 16, alpha: 32, dropout: 0.0, target_modules: {settings['targets']}}}}}
"""
    (work / "recipe.yaml").write_text(recipe)
    # the stages the expert reads (policy via `use:`, the random cost model audited with floor 0)
    for stage in ("train-sft", "train-cost"):
        subprocess.run([sys.executable, "-m", "midpo_cli.cli", "--quiet", stage, "--recipe",
                        str(work / "recipe.yaml")], check=True, env=offline_env(work))


# ----------------------------------------------------------------------------- children (timed)

def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PhaseTrace:
    """Peak RSS per phase of a midpo expert run (`--trace`): a thread samples RSS every 50 ms and the stage's
    phase functions are wrapped to mark where each begins and ends, so the peak can be pinned to a phase."""

    PHASES = ("lora_policy", "spe_margins", "reference_logps", "train", "save_checked")

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, int]] = []
        self.marks: list[tuple[str, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_now()))
            self._stop.wait(0.05)

    def install(self) -> None:
        import functools

        import midpo_cli.stages.expert as expert

        for name in self.PHASES:
            original = getattr(expert, name)

            @functools.wraps(original)
            def wrapped(*args, _f=original, _name=name, **kwargs):
                start = time.perf_counter()
                self.samples.append((start, rss_now()))
                try:
                    return _f(*args, **kwargs)
                finally:
                    end = time.perf_counter()
                    self.samples.append((end, rss_now()))
                    self.marks.append((_name, start, end))

            setattr(expert, name, wrapped)
        self._thread.start()

    def table(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        out = []
        for name, start, end in self.marks:
            inside = [r for t, r in self.samples if start <= t <= end] or [0]
            out.append({"phase": name, "s": round(end - start, 1), "peak_rss_mib": round(max(inside) / 2**20)})
        return out


def child_midpo(work: Path, overrides: list[str], trace: bool = False) -> dict:
    import deepspeed  # noqa: F401  (imported before the baseline RSS, like the others' libraries)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import midpo_cli.stages.expert  # noqa: F401
    from midpo_cli.cli import main

    base = rss_now()
    tracer = PhaseTrace() if trace else None
    if tracer:
        tracer.install()
    sets = [arg for item in overrides for arg in ("--set", item)]
    code = main(["--quiet", "train-expert", "--kind", "safety", "--recipe", str(work / "recipe.yaml"), *sets])
    if code != 0:
        raise SystemExit(f"midpo train-expert exited {code}")
    manifest = json.loads((work / "run" / "safety_expert" / "manifest.json").read_text())
    lines = (work / "run" / "safety_expert" / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if r.get("split") == "train"]
    return {"baseline_rss": base, "steps": manifest["metrics"]["steps"], "losses": losses,
            **({"phases": tracer.table()} if tracer else {})}


def encoded_pairs(work: Path, settings: dict):
    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.readers import load_rows
    from midpo_cli.data.tokenize import encode_pairs
    from midpo_cli.modeling.loading import load_tokenizer

    tokenizer = load_tokenizer(str(work / "policy"))
    selection = select_pairs(load_rows(str(work / "train.jsonl")), "safety_expert")
    feats, _ = encode_pairs(selection.pairs, tokenizer, "safe-rlhf", settings["max_length"])
    return tokenizer, selection, feats


def child_reference(work: Path, settings: dict) -> dict:
    """The reference layout: policy + full π_ref copy + cost model alive; margin and π_ref every step."""
    import math

    import peft
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    from midpo_cli.data.tokenize import collate_pairs
    from midpo_cli.modeling.score_model import load_score_model

    base = rss_now()
    tokenizer, _, feats = encoded_pairs(work, settings)
    torch.manual_seed(settings["seed"])
    policy = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32)
    policy = peft.get_peft_model(policy, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                         target_modules=settings["targets"], task_type="CAUSAL_LM"))
    reference = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32).eval()
    cost_model, _ = load_score_model(str(work / "cost"), expected_type="cost")
    for p in list(reference.parameters()) + list(cost_model.parameters()):
        p.requires_grad_(False)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings["lr"], weight_decay=0.0)
    bs, epochs = settings["batch_size"], settings["epochs"]
    total = epochs * math.ceil(len(feats) / bs)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings["warmup_ratio"] * total), total)
    beta, gen = settings["beta"], torch.Generator().manual_seed(settings["seed"])

    def per_sample_logps(logits, input_ids, response_mask):
        token_logps = torch.gather(F.log_softmax(logits[:, :-1], dim=-1), 2, input_ids[:, 1:, None]).squeeze(2)
        out = []
        for i in range(input_ids.shape[0]):  # per sequence: the response tokens' slice, summed
            positions = response_mask[i, 1:].nonzero().squeeze(1)
            out.append(token_logps[i, positions[0]: positions[-1] + 1].sum())
        return out

    losses_seen: list[float] = []
    policy.train()
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=gen).tolist()
        for start in range(0, len(order), bs):
            batch = collate_pairs([feats[i] for i in order[start:start + bs]], tokenizer.pad_token_id)
            ids, mask, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
            n = ids.shape[0] // 2
            with torch.no_grad():
                _, cost = cost_model(ids, mask)  # the score model inside the step: S = −cost
                ref = per_sample_logps(reference(input_ids=ids, attention_mask=mask).logits, ids, resp)
            pol = per_sample_logps(policy(input_ids=ids, attention_mask=mask).logits, ids, resp)
            losses = []
            for i in range(n):
                margin = max(0.0, float(-cost[i] + cost[n + i]))
                delta = (pol[i] - ref[i]) - (pol[n + i] - ref[n + i])
                losses.append(-F.logsigmoid(beta * delta - margin))
            loss = torch.stack(losses).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses_seen.append(loss.item())
    return {"baseline_rss": base, "steps": len(losses_seen), "losses": losses_seen}


def child_trl(work: Path, settings: dict, *, precompute: bool, checkpointing: bool) -> dict:
    import peft
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from midpo_cli.data.template import answer_text, format_prompt

    base = rss_now()
    tokenizer, selection, feats = encoded_pairs(work, settings)
    pairs = [selection.pairs[f["pair_index"]] for f in feats]  # the pairs midpo trains on, same order
    data = Dataset.from_dict({
        "prompt": [format_prompt(p.prompt, "safe-rlhf", tokenizer) for p in pairs],
        "chosen": [answer_text(p.chosen, "safe-rlhf") for p in pairs],
        "rejected": [answer_text(p.rejected, "safe-rlhf") for p in pairs],
    })
    torch.manual_seed(settings["seed"])
    model = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32)
    options = trl_options(precompute=precompute, checkpointing=checkpointing)
    args = trl.DPOConfig(
        output_dir=str(work / f"trl-{int(precompute)}"), per_device_train_batch_size=settings["batch_size"],
        num_train_epochs=settings["epochs"], learning_rate=settings["lr"], lr_scheduler_type="cosine",
        warmup_steps=settings["warmup_ratio"], max_grad_norm=1.0, weight_decay=0.0, seed=settings["seed"],
        beta=settings["beta"], loss_type="sigmoid", max_length=settings["max_length"], use_cpu=True,
        bf16=False, fp16=False, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1,
        dataloader_num_workers=0, precompute_ref_batch_size=settings["batch_size"] * 2, disable_tqdm=True,
        **options,
    )
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=settings["targets"],
                           task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    out = trainer.train()
    if trainer.model.is_activation_checkpointing is not checkpointing:
        raise SystemExit(f"TRL ran with activation checkpointing {trainer.model.is_activation_checkpointing}")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"baseline_rss": base, "steps": out.global_step, "losses": losses, "trl": trl.__version__,
            "trl_options": options}


def trl_options(*, precompute: bool, checkpointing: bool) -> dict:
    """The DPOConfig switches a variant sets: its reference and checkpointing plan, plus TRL's answer-only
    logits switch on TRL versions that have one (1.16 has none: its fused LM head always scores answers only)."""
    import dataclasses

    import trl

    options = {"precompute_ref_log_probs": precompute, "gradient_checkpointing": checkpointing}
    if precompute and "use_logits_to_keep" in {f.name for f in dataclasses.fields(trl.DPOConfig)}:
        options["use_logits_to_keep"] = True
    return options


def run_child(variant: str, work: Path) -> None:
    settings = json.loads((work / "settings.json").read_text())
    import torch

    torch.set_num_threads(settings["threads"])
    trace = settings.get("trace", False)
    base = variant.removesuffix("-rows")
    if base in MIDPO:
        rows = ["train.share_prompt=false"] if variant.endswith("-rows") else []
        result = child_midpo(work, [*rows, *MIDPO_SETS[base]], trace)
    elif variant == "reference":
        result = child_reference(work, settings)
    else:
        fast = variant == "trl-fast"
        result = child_trl(work, settings, precompute=fast, checkpointing=not fast)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    (work / f"result-{variant}.json").write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent

def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="20m")
    parser.add_argument("--model", type=Path, help="a local Hugging Face model folder as the policy (overrides --size)")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if not v.endswith("-rows")))
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the variants; medians are reported")
    parser.add_argument("--work", type=Path, help="keep the work folder here (default: a temporary one)")
    parser.add_argument("--trace", action="store_true", help="midpo variants: peak RSS per phase of the stage")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.work)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    import torch

    settings = {"size": args.size, "model": str(args.model) if args.model else None, "pairs": args.pairs,
                "epochs": args.epochs, "batch_size": args.batch_size,
                "max_length": args.max_length, "lr": 3e-4, "beta": 0.1, "warmup_ratio": 0.03, "seed": 42,
                "threads": torch.get_num_threads(), "trace": args.trace}
    with tempfile.TemporaryDirectory(prefix="midpo-expert-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        build_assets(work, settings)
        print(f"setup {time.perf_counter() - t0:.0f} s: {settings['parameters'] / 1e6:.1f} M parameters, "
              f"{settings['pairs']} pairs × {settings['epochs']} epochs, batch {settings['batch_size']}",
              file=sys.stderr)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_ in range(args.repeat):
            for variant in variants:
                result = run_variant(variant, work)
                runs[variant].append(result)
                print(f"[{round_ + 1}/{args.repeat}] {variant}: {result['wall_s']:.1f} s, peak RSS "
                      f"{result['peak_rss'] / 2**20:.0f} MiB", file=sys.stderr)
    print(report(runs, settings))


def run_variant(variant: str, work: Path) -> dict:
    for stale in ("cache", "safety_expert"):  # no variant reuses another's cached reference log-probs
        shutil.rmtree(work / "run" / stale, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", variant, "--work", str(work)], check=True,
                   env=offline_env(work), stdout=subprocess.DEVNULL)
    result = json.loads((work / f"result-{variant}.json").read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def report(runs: dict[str, list[dict]], settings: dict) -> str:
    """Median wall time and peak RSS per variant, and the (ours, theirs) ratios."""
    results = {}
    for name, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        results[name] = {**rs[0], "wall_s": median(walls), "wall_min": min(walls), "wall_max": max(walls),
                         "peak_rss": median([r["peak_rss"] for r in rs]),
                         "baseline_rss": median([r["baseline_rss"] for r in rs])}
        results[name]["pairs_per_s"] = settings["pairs"] * settings["epochs"] / results[name]["wall_s"]
    repeats = len(next(iter(runs.values())))
    lines = [f"Machine: {machine()}.",
             f"{settings['parameters'] / 1e6:.1f} M-parameter {settings['description']}, {settings['pairs']} "
             "safety pairs × "
             f"{settings['epochs']} epochs, batch {settings['batch_size']}, max_length {settings['max_length']}, "
             f"LoRA r 16 / alpha 32 on {', '.join(settings['targets'])}, fp32.", "",
             f"| variant | wall s (median of {repeats}) | spread | pairs/s | steps | peak RSS MiB | model RSS MiB "
             "| last-epoch loss | wall vs midpo | peak RSS vs midpo |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ref = results.get("midpo")
    for name, r in results.items():
        model_rss = (r["peak_rss"] - r["baseline_rss"]) / 2**20
        ratio_t = f"{r['wall_s'] / ref['wall_s']:.2f}×" if ref else "—"
        ratio_m = f"{r['peak_rss'] / ref['peak_rss']:.2f}×" if ref else "—"
        per_epoch = max(1, r["steps"] // settings["epochs"])
        last = r["losses"][-per_epoch:]
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['wall_min']:.0f}–{r['wall_max']:.0f} | "
                     f"{r['pairs_per_s']:.2f} | {r['steps']} | "
                     f"{r['peak_rss'] / 2**20:.0f} | {model_rss:.0f} | {sum(last) / len(last):.3f} | "
                     f"{ratio_t} | {ratio_m} |")
    lines.append("")
    for name, r in results.items():
        if r.get("phases"):
            lines.append(f"- {name} phases (s, peak RSS MiB): " + "; ".join(
                f"{p['phase']} {p['s']:.0f} s {p['peak_rss_mib']}" for p in r["phases"]))
    for name, r in results.items():
        if "trl_options" in r:
            lines.append(f"- {name}: TRL {r['trl']} with " + ", ".join(f"{k}={v}" for k, v in r["trl_options"].items()))
    for mine, other in COMPARE:
        if mine in results and other in results:
            a, o = results[mine], results[other]
            model_ratio = (a["peak_rss"] - a["baseline_rss"]) / max(1, o["peak_rss"] - o["baseline_rss"])
            lines.append(f"- {mine} vs {other}: {o['wall_s'] / a['wall_s']:.2f}× as fast; peak RSS "
                         f"{a['peak_rss'] / o['peak_rss']:.2f}× of it (model RSS {model_ratio:.2f}×)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
