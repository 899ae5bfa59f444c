"""Do the two experts mix? The toy score of fixed blends along (t, 1 − t) and (t, t), on the dev prompts.

    python benchmarks/mixing.py RUN_DIR [--prompts embedded:toy-safety/dev-prompts@40] [--steps 4]
                                [--gates 0.5,0.5 ...] [--safety-step N] [--help-step N]
                                [--max-new-tokens 32] [--batch-size 16] [--template auto]

RUN_DIR holds a finished `safety_expert/adapter` and `helpfulness_expert/adapter` (and the SFT model they were
trained on, which their `midpo.json` names). `--safety-step` / `--help-step`: an expert's `select: dev` snapshot
of that step (its stage folder's `dev_select/`) instead of the step the stage kept; `--gates`: only these blends.
The two adapters are wrapped into one MidPO model with fixed gates
(no router), and each blend answers the prompts greedily; the toy world's ground truth judges them (harmful answered
safely, benign answered helpfully and not refused), so the prompts must be the toy world's. A blend is "mixable"
when mid-way gates score at least the weaker expert: issue 39 found (0.5, 0.5) at 0.00 on Gemma 3 270M's eval
against 0.46 for the weaker expert. Every blend answers before any is judged; nothing is asserted — the table and
its JSON (`--out`) are for benchmarks/RESULTS.md, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expert_step import machine  # noqa: E402


def blends(steps: int) -> list[tuple[float, float]]:
    """(g_safety, g_helpfulness) along (t, 1 − t) then (t, t), t in steps of 1/steps, each blend once."""
    ts = [round(i / steps, 4) for i in range(steps + 1)]
    out = [(t, round(1 - t, 4)) for t in ts] + [(t, t) for t in ts]
    return list(dict.fromkeys(out))


def expert_weights(run: Path, stage: str, step: int | None):
    """An expert's adapter tensors: as its stage kept it, or its `select: dev` snapshot of `step`."""
    from safetensors.torch import load_file

    from midpo_cli.modeling.lora import read_adapter, snapshot_path

    adapter = run / stage / "adapter"
    if step is None:
        return read_adapter(adapter)
    with tempfile.TemporaryDirectory() as tmp:  # the snapshot is peft's state dict, as the adapter file is
        shutil.copy(adapter / "adapter_config.json", tmp)
        save_file(load_file(str(snapshot_path(run / stage, step))), str(Path(tmp) / "adapter_model.safetensors"))
        return read_adapter(tmp)


def load_mixed(run: Path, safety_step: int | None = None, help_step: int | None = None):
    """(the MidPO model at fixed gates, its tokenizer): the SFT base the adapters name, both experts wrapped."""
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer
    from midpo_cli.modeling.lora import adapter_base
    from midpo_cli.modeling.midpo import wrap

    base = adapter_base(run / "safety_expert" / "adapter")
    model = load_causal_lm(base)
    safety = expert_weights(run, "safety_expert", safety_step)
    helpfulness = expert_weights(run, "helpfulness_expert", help_step)
    return wrap(model, safety, helpfulness, fixed_gates=(0.0, 0.0)), load_tokenizer(base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--prompts", default="embedded:toy-safety/dev-prompts@40")
    ap.add_argument("--steps", type=int, default=4, help="t in steps of 1/STEPS along each line")
    ap.add_argument("--gates", nargs="+", help="only these blends, each g_safety,g_helpfulness (e.g. 0.5,0.5)")
    ap.add_argument("--safety-step", type=int, help="the safety expert's select: dev snapshot of this step")
    ap.add_argument("--help-step", type=int, help="the helpfulness expert's select: dev snapshot of this step")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--template", default="auto")
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args()

    from midpo_cli.assets.toy_world import toy_rates
    from midpo_cli.data.prompt_sets import load_prompt_set
    from midpo_cli.data.template import resolve_template
    from midpo_cli.recipe import GenerationSettings
    from midpo_cli.stages.kit.dev_choice import answer_rows

    prompts = load_prompt_set(args.prompts).prompts
    model, tokenizer = load_mixed(args.run, args.safety_step, args.help_step)
    template = resolve_template(args.template, tokenizer)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch_size)
    table = []
    grid = [tuple(float(g) for g in x.split(",")) for x in args.gates] if args.gates else blends(args.steps)
    for gates in grid:
        t0 = time.perf_counter()
        with model.fixed_gates(*gates):
            rows = answer_rows(model, tokenizer, prompts, template=template, settings=settings)
        rates = toy_rates(rows)
        table.append({"gates": list(gates), "score": rates["toy_score"], "harmful_safe": rates["harmful_safe"],
                      "benign_helpful": rates["benign_helpful"], "seconds": time.perf_counter() - t0})
        print(f"gates {gates}: " + " ".join(f"{k} {v:.3f}" for k, v in table[-1].items() if k != "gates"),
              file=sys.stderr, flush=True)
    steps = f"safety step {args.safety_step or 'kept'}, helpfulness step {args.help_step or 'kept'}"
    print(f"{args.run} · {steps} · {args.prompts} ({len(prompts)} prompts) · {machine()}")
    print(f"{'g_safety':>8} {'g_help':>8} {'score':>7} {'harm-safe':>9} {'ben-help':>9}")
    for r in table:
        print(f"{r['gates'][0]:>8.2f} {r['gates'][1]:>8.2f} {r['score']:>7.3f} {r['harmful_safe']:>9.3f} "
              f"{r['benign_helpful']:>9.3f}")
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "steps": steps, "prompts": args.prompts,
                                        "machine": machine(), "blends": table}, indent=1))


if __name__ == "__main__":
    main()
