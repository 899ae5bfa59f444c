"""The whole MidPO pipeline on a real pretrained model folder (issue 12), stage by stage, on this machine.

    python benchmarks/real_model.py MODEL_DIR [--out runs/real-model] [--recipe recipes/local-model-cpu.yaml]
                                    [--set KEY=VALUE ...] [--until STAGE] [--prepare-only] [--speed-batch 8]
                                    [--full-prompts] [--sft no-safety]

1. The data: the recipe's own balanced slices of the embedded toy world, shipped with midpo (train 400 pairs,
   test 100 pairs, SFT 256 rows, 40 dev and 40 eval prompts, 20 traps; half harmful, half benign each; dev
   chooses the best fixed blend, eval and traps report it). `--full-prompts`: all 160 dev, 160 eval prompts and
   100 traps, issue 30's protocol. `--sft no-safety`: the SFT slice of the paper's setting (its base,
   Alpaca-7B, was instruction-tuned with no safety data, so it complies with harmful requests): 256 rows of
   benign prompts as they come in the split (answered H, W or R), no harmful prompt at all; written to
   OUT/data/sft-no-safety.jsonl. Nothing else changes: the preference pairs, their labels and every prompt set
   are the standard slices.
2. Runs each stage of the recipe as its own `midpo pipeline run --only STAGE` child process, so wall time
   (interpreter and imports included) and peak RSS (the child's ru_maxrss) are that stage's alone; a stage
   already finished with the same settings is skipped by the pipeline and costs seconds. Tokens/s are the
   stage's own numbers: the last logged training window (metrics.jsonl) or the generate stage's rate.
3. Prints the toy-world table (the ground-truth judge) of the score stage.
4. Greedy decoding speed, KV cache on, of the MidPO model against its base policy on the same prompts and
   batch: both generate exactly --speed-tokens new tokens per prompt (min_new_tokens), so tokens/s compare
   the per-token cost of routing and nothing else.

Nothing here asserts a number; the tables are for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "rank", "router",
          "generate", "score")
# issue 30's pretrained-base protocol: every dev and eval prompt and every trap of the toy world (160/160/100), so
# that a difference of 0.1 in toy score can exclude zero
FULL_PROMPTS = ("data.dev_prompts=dev-prompts=embedded:toy-safety/dev-prompts@160",
                "data.eval_prompts=[eval-prompts=embedded:toy-safety/eval-prompts@160, "
                "traps=embedded:toy-safety/traps@100]")
SFT_SLICES = ("standard", "no-safety")  # --sft: the recipe's slice, or the paper's setting (docstring, 1.)


def no_safety(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first n benign rows in file order: instruction data with no harmful prompt in it (Alpaca's kind)."""
    return [r for r in rows if not r.get("is_harmful")][:n]


def prepare_data(out: Path, full_prompts: bool = False, sft: str = "standard") -> list[str]:
    """The recipe overrides of this protocol: none for the recipe's own slices; the full prompt sets; the
    paper's SFT slice, written to OUT/data/sft-no-safety.jsonl (rewritten only when missing)."""
    from midpo_cli.data.readers import load_rows

    sets = list(FULL_PROMPTS) if full_prompts else []
    if sft == "no-safety":
        path = out / "data" / "sft-no-safety.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = no_safety(load_rows("embedded:toy-safety/sft").rows, 256)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, path)
        sets.append(f"data.sft={path}")
    return sets


def overrides(args: argparse.Namespace, data: list[str]) -> list[str]:
    """The recipe pointed at this model folder, this output folder and this protocol's data (user --set last)."""
    sets = [f"run_dir={args.out}", f"base_model={Path(args.model_dir).expanduser().resolve()}"]
    return [*sets, *data, *args.set]


def run_stage(args: argparse.Namespace, stage: str, sets: list[str]) -> dict[str, Any]:
    """One `midpo pipeline run --only STAGE` child: its wall time, peak RSS (MB) and exit status."""
    cmd = [sys.executable, "-m", "midpo_cli.cli", "pipeline", "run", str(args.recipe), "--only", stage]
    for item in sets:
        cmd += ["--set", item]
    print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT)
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except BaseException:  # Ctrl-C or SIGTERM (main turns it into SystemExit): leave no stage running behind
        child.terminate()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"stage": stage, "rc": child.returncode, "wall_s": time.perf_counter() - started,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def stage_rate(out: Path, stage: str) -> str:
    """Tokens/s of the stage's own work: the last training window, or generation's rate; '' when none."""
    metrics = out / stage / "metrics.jsonl"
    if metrics.exists():
        train = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        train = [r for r in train if r.get("split") == "train" and r.get("tokens_per_s")]
        if train:
            return f"{train[-1]['tokens_per_s']:.0f} train"
    manifest = out / stage / "manifest.json"
    if manifest.exists():
        rate = json.loads(manifest.read_text()).get("metrics", {}).get("tokens_per_s")
        if rate:
            return f"{rate:.0f} gen"
    return ""


def print_stage_table(rows: list[dict[str, Any]], out: Path) -> None:
    print(f"\n{'stage':<20}{'wall s':>9}{'peak RSS MB':>13}{'tokens/s':>14}  status")
    for r in rows:
        status = "ok" if r["rc"] == 0 else f"failed (exit {r['rc']})"
        rate = stage_rate(out, r["stage"])
        print(f"{r['stage']:<20}{r['wall_s']:>9.1f}{r['peak_rss_mb']:>13.0f}{rate:>14}  {status}")
    print(f"{'total':<20}{sum(r['wall_s'] for r in rows):>9.1f}")


def print_toy(out: Path) -> None:
    summary = out / "score" / "summary.json"
    toy = json.loads(summary.read_text()).get("toy") if summary.exists() else None
    if not toy:
        print("\n(no toy table: the score stage has not run)")
        return
    print(f"\n{'model':<26}{'prompts':<14}{'harm-safe':>10}{'benign-help':>12}{'toy':>7}{'exact':>7}")

    def f(v: Any) -> str:
        return "—" if v is None else f"{v:.2f}"

    for e in toy:
        print(f"{e['model']:<26}{e['prompt_set']:<14}{f(e['harmful_safe']):>10}{f(e['benign_helpful']):>12}"
              f"{f(e['toy_score']):>7}{f(e['exact_template_rate']):>7}")


def greedy_speed(out: Path, prompt_set: str, batch: int, new_tokens: int, template: str) -> None:
    """Tokens/s of greedy, cached decoding: MidPO model vs its base policy, same prompts, batch and length."""
    import torch

    from midpo_cli.data.prompt_sets import load_prompt_set
    from midpo_cli.data.tokenize import encode_prompts, pad_sequences
    from midpo_cli.modeling.policy import load_policy

    router = json.loads((out / "router" / "manifest.json").read_text())
    sft = json.loads((out / "sft" / "manifest.json").read_text())
    specs = {"base": str(out / sft["outputs"]["model"]) if (out / sft["outputs"]["model"]).exists()
             else sft["outputs"]["model"], "midpo": str(out / router["outputs"]["model"])}
    prompts = [p["prompt"] for p in load_prompt_set(prompt_set).prompts][:batch]
    print(f"\ngreedy decoding, KV cache on: {len(prompts)} prompts in one batch, {new_tokens} new tokens each")
    rates = {}
    for name, spec in specs.items():
        policy = load_policy(spec)
        ids, _ = encode_prompts(prompts, policy.tokenizer, template)
        pad = policy.tokenizer.pad_token_id
        padded = pad_sequences(ids, [len(s) for s in ids], pad, padding_side="left")
        kw = dict(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], do_sample=False,
                  use_cache=True, pad_token_id=pad, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        with torch.no_grad():
            policy.model.generate(**{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
            started = time.perf_counter()
            result = policy.model.generate(**kw)
            wall = time.perf_counter() - started
        produced = (result.shape[1] - padded["input_ids"].shape[1]) * len(prompts)
        rates[name] = produced / wall
        print(f"  {name:<6} {rates[name]:8.1f} tokens/s  ({produced} tokens in {wall:.1f}s)")
        del policy
    print(f"  MidPO / base: {rates['midpo'] / rates['base']:.2f}×")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="A local Hugging Face model folder (config, weights, tokenizer).")
    parser.add_argument("--out", default="runs/real-model", help="Run dir (the recipe's run_dir is replaced).")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "local-model-cpu.yaml"))
    parser.add_argument("--set", action="append", default=[], help="Extra recipe override (repeatable).")
    parser.add_argument("--until", choices=STAGES, default="score", help="Last stage to run.")
    parser.add_argument("--prepare-only", action="store_true",
                        help="Write the data this protocol adds to the package's slices (--sft no-safety) and stop.")
    parser.add_argument("--full-prompts", action="store_true",
                        help="All 160 dev and 160 eval prompts and 100 traps (issue 30's protocol).")
    parser.add_argument("--sft", choices=SFT_SLICES, default="standard",
                        help="The SFT slice: the recipe's (standard) or the paper's setting (no-safety, above).")
    parser.add_argument("--speed-batch", type=int, default=8, help="Prompts in the decoding-speed batch.")
    parser.add_argument("--speed-tokens", type=int, default=32, help="New tokens per prompt in that batch.")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` / a scheduler: stop the stage child too
    if not (Path(args.model_dir).expanduser() / "config.json").is_file():
        parser.error(f"{args.model_dir}: not a model folder (no config.json)")
    args.out = str(Path(args.out).resolve())
    data = prepare_data(Path(args.out), args.full_prompts, args.sft)
    if args.prepare_only:
        print("\n".join(data))
        return 0
    sets = overrides(args, data)
    rows = []
    for stage in STAGES[: STAGES.index(args.until) + 1]:
        rows.append(run_stage(args, stage, sets))
        if rows[-1]["rc"] != 0:
            break
    out = Path(args.out)
    print_stage_table(rows, out)
    print_toy(out)
    if all(r["rc"] == 0 for r in rows) and (out / "router" / "manifest.json").exists():
        template = json.loads((out / "router" / "manifest.json").read_text()).get("template", "auto")
        from midpo_cli.recipe import load_recipe

        eval_set = load_recipe(args.recipe, sets).data.eval_prompts[0]
        greedy_speed(out, eval_set, args.speed_batch, args.speed_tokens, template)
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
