"""`midpo recipe new`: a runnable recipe for the user's own model and one preference file (docs/own-data.md).

The file is split by prompt (midpo_cli.data.split) into train / test pairs and dev / eval prompt sets, written as
JSON lines in the canonical schema, and a recipe is written that names them by role and runs what wins on the
dev prompts today on a pretrained base (recipes/local-model-cpu.yaml, benchmarks/RESULTS.md): experts chosen on
dev (`select: dev`), the probe switch with its threshold chosen on dev, and SFT off when the model ships a chat
template (an instruction-tuned model), else on — with the user's SFT file, or the train pairs' better answers.
Before the recipe is written it passes the whole run's preflight, so the one command printed runs.

Nothing here depends on time or the machine: the same inputs give the same files, byte for byte. A file that
exists with other content is refused (`--force` replaces it); one with the same content is left alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from midpo_cli.data.split import Sizes, Split, check_both_kinds, split_pairs
from midpo_cli.errors import InputError
from midpo_cli.recipe import MAX_SEED

PRESETS = ("tiny", "pretrained")
SFT_CHOICES = "auto, off, or a prompt/answer file"
FILES = {"train": "train.jsonl", "test": "test.jsonl", "dev": "dev.jsonl", "eval": "eval.jsonl"}
# what each preset trains: quickstart.yaml's rates for the embedded tiny model trained from scratch (kept to CI
# time), local-model-cpu.yaml's for a pretrained base (min, max optimizer steps, the data's size deciding between)
PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": {"max_length": 128, "precision": "fp32", "batch_size": 8, "eval_each_epoch": False,
             "sft": {"max_steps": 16, "lr": 2e-3}, "score": {"max_steps": 24, "lr": 2e-3}, "min_accuracy": 0.6,
             "expert_steps": (8, 8), "snapshots": 2, "expert_lr": (3e-4, 1e-4), "max_new_tokens": 16,
             "gen_batch": 64},
    "pretrained": {"max_length": 256, "precision": "auto", "batch_size": 8, "eval_each_epoch": True,
                   "sft_steps": (32, 400), "sft_lr": 5e-5, "score_steps": (40, 400), "score_lr": 2e-5,
                   "min_accuracy": 0.55, "expert_steps": (20, 200), "snapshots": 6, "expert_lr": (2e-4, 1e-4),
                   "max_new_tokens": 64, "gen_batch": 16},
}


@dataclass
class NewOptions:
    """`midpo recipe new`'s flags."""

    model: str
    data: str
    to: Path
    out_data: Path | None = None
    run_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    sft: str = "auto"
    preset: str = "auto"
    sizes: Sizes = field(default_factory=Sizes)
    force: bool = False


@dataclass
class NewRun:
    """What was written: the recipe, the data files, the split, how SFT was set and why."""

    recipe: Path
    files: dict[str, Path]
    split: Split
    sft: str
    preset: str
    changed: list[Path]


def new_recipe(opts: NewOptions) -> NewRun:
    """Split, write the data files, write a recipe that passes the whole-run preflight (module docstring)."""
    from midpo_cli.data.readers import load_rows

    preset = resolve_preset(opts)
    check_inputs(opts)
    try:
        table = load_rows(opts.data, columns=opts.columns or None)
    except InputError as exc:
        raise InputError(f"--data: {exc}") from None
    split = split_pairs(table.rows, opts.sizes, table.source)
    check_both_kinds(split)
    folder = opts.out_data or opts.to.with_name(f"{opts.to.stem}-data")
    files = {part: folder / name for part, name in FILES.items()}
    texts = {files[part]: jsonl_text(getattr(split, part)) for part in FILES if getattr(split, part)}
    sft, sft_note = sft_setting(opts, files["train"])
    recipe = recipe_dict(opts, preset, split, {p: f for p, f in files.items() if f in texts}, sft)
    texts[opts.to] = header(opts, preset, sft_note) + yaml.safe_dump(recipe, sort_keys=False, width=100,
                                                                     default_flow_style=None)
    refuse_overwrite(texts, opts.force)
    changed = write_texts({f: t for f, t in texts.items() if f != opts.to})
    check_runnable(recipe, opts.to)
    changed += write_texts({opts.to: texts[opts.to]})
    return NewRun(recipe=opts.to, files={p: f for p, f in files.items() if f in texts}, split=split, sft=sft_note,
                  preset=preset, changed=changed)


def resolve_preset(opts: NewOptions) -> str:
    """`auto`: tiny for the embedded model (trained from scratch), pretrained for any other."""
    if opts.preset == "auto":
        return "tiny" if opts.model.startswith("embedded:") else "pretrained"
    if opts.preset not in PRESETS:
        raise InputError(f"--preset {opts.preset!r}: choose auto, {', '.join(PRESETS)}")
    return opts.preset


def check_inputs(opts: NewOptions) -> None:
    """The model folder (a local one: it exists and is a causal LM) and the sizes, before any data is read."""
    from midpo_cli.pipeline.preflight import check_model_ref

    check_model_ref("--model", opts.model)
    sizes = opts.sizes
    if not 0 <= sizes.test_fraction < 1:
        raise InputError(f"--test-fraction {sizes.test_fraction}: must be in [0, 1)")
    for flag, value in (("--dev", sizes.dev), ("--eval", sizes.eval), ("--max-train", sizes.max_train)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    if not 0 <= sizes.seed <= MAX_SEED:
        raise InputError(f"--seed {sizes.seed}: must be in 0 … {MAX_SEED} (the recipe's train.seed)")
    if opts.to.suffix not in (".yaml", ".yml"):
        raise InputError(f"--to {opts.to}: a recipe is a .yaml file")


def sft_setting(opts: NewOptions, train_file: Path) -> tuple[str, str]:
    """(`off`, `pairs` or the SFT file, one line saying why). `auto`: off when the model ships a chat template (an
    instruction-tuned model already answers), else SFT on the train pairs' better answers, so a base learns the
    answer format from the user's own data."""
    from midpo_cli.modeling.files import has_chat_template

    if opts.sft == "off":
        return "off", "SFT off (--sft off): the model is the policy"
    if opts.sft != "auto":
        return opts.sft, f"SFT on {opts.sft} (--sft)"
    chat = has_chat_template(opts.model)
    if chat:
        return "off", f"SFT off: {opts.model} has a chat template (instruction-tuned); --sft FILE trains it anyway"
    why = "no chat template" if chat is False else "its files are not on this machine, so whether it has a chat " \
        "template is unknown"
    return "pairs", (f"SFT on the better answers of the train pairs, {train_file} ({why}); --sft off for an "
                     "instruction-tuned model, --sft FILE for prompt/answer rows of your own")


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def header(opts: NewOptions, preset: str, sft_note: str) -> str:
    """The recipe's comment: where it came from and how to run it (no date: same inputs, same bytes)."""
    s = opts.sizes
    flags = [f"--model {opts.model}", f"--data {opts.data}", f"--preset {preset}", f"--seed {s.seed}",
             f"--test-fraction {s.test_fraction}", *([f"--dev {s.dev}"] if s.dev else []),
             *([f"--eval {s.eval}"] if s.eval else []), *([f"--max-train {s.max_train}"] if s.max_train else []),
             *([f"--columns {','.join(f'{k}={v}' for k, v in opts.columns.items())}"] if opts.columns else [])]
    return (f"# Written by `midpo recipe new {' '.join(flags)}`.\n"
            "# The data is split by prompt: no prompt is in two of train, test, dev and eval (docs/own-data.md).\n"
            f"# {sft_note}.\n# Run it: midpo pipeline run {opts.to}\n")


def refuse_overwrite(texts: dict[Path, str], force: bool) -> None:
    """Every file that exists with other content is named before anything is written."""
    clash = [str(f) for f, text in texts.items() if f.exists() and (not f.is_file() or (
        f.read_text(encoding="utf-8", errors="replace") != text))]
    if clash and not force:
        raise InputError(f"{', '.join(clash)} exist{'s' if len(clash) == 1 else ''} with other content; pass --force "
                         "to replace, or choose --to / --out-data")


def write_texts(texts: dict[Path, str]) -> list[Path]:
    """Write each file whose content differs (atomically); the ones written."""
    from midpo_cli.io import atomic_write_text

    changed = []
    for path, text in texts.items():
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        changed.append(path)
    return changed


def check_runnable(recipe: dict[str, Any], to: Path) -> None:
    """The recipe validates and passes the whole run's preflight (every file, folder and model), or nothing
    is written in its place; the error names the problem."""
    from midpo_cli.pipeline.preflight import check_whole_run
    from midpo_cli.recipe import load_recipe

    try:
        check_whole_run(load_recipe(None, base=recipe))
    except InputError as exc:
        raise InputError(f"the recipe for {to} would not run: {exc}") from None


def recipe_dict(opts: NewOptions, preset: str, split: Split, files: dict[str, Path], sft: str) -> dict[str, Any]:
    """The recipe: the user's model and data by role, the preset's training settings sized to the data."""
    p = PRESET_SETTINGS[preset]
    data: dict[str, Any] = {"train": str(files["train"]), "eval": str(files["test"]) if "test" in files else None}
    data["sft"] = None if sft == "off" else str(files["train"]) if sft == "pairs" else sft
    data.update(dev_prompts=str(files["dev"]), eval_prompts=[str(files["eval"])], max_length=p["max_length"],
                template="auto")
    batch = fitting_batch(split, p["batch_size"])
    return {"run_dir": opts.run_dir or f"runs/{opts.to.stem}", "base_model": opts.model, "data": data,
            "train": {"epochs": 1, "batch_size": batch, "lr": 1e-4, "scheduler": "cosine", "warmup_ratio": 0.05,
                      "seed": opts.sizes.seed, "precision": p["precision"], "log_every": 5,
                      "eval_each_epoch": p["eval_each_epoch"]},
            "stages": stage_settings(p, sft, len(split.train), batch, audit_floor(p, len(split.test)))}


# below this many test pairs or dev/eval prompts a rate moves ≥ 5 % per row: the audit and the CIs are mostly chance
FEW = 20


def too_few_to_audit(test_pairs: int) -> bool:
    """A test split (there is one) too small for the score models' audit to tell a sound model from chance."""
    return 0 < test_pairs < FEW


def audit_floor(p: dict[str, Any], test_pairs: int) -> float:
    """The score models' min_accuracy: the preset's, or 0 (no audit) under FEW test pairs, where a floor fails a
    sound model by chance (a 40-row file: 2 of 4 pairs, exit 4)."""
    return 0.0 if too_few_to_audit(test_pairs) else p["min_accuracy"]


def fitting_batch(split: Split, wanted: int) -> int:
    """The largest power of two up to `wanted` that every training stage's pairs fill at least once (the safety
    expert keeps only the pairs with exactly one safe answer)."""
    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.readers import Table

    table = Table(split.train, "train")
    fewest = min(len(select_pairs(table, stage, allow_empty=True).pairs)
                 for stage in ("reward_model", "cost_model", "safety_expert", "helpfulness_expert"))
    batch = wanted
    while batch > 1 and batch > fewest:
        batch //= 2
    return batch


def steps(rows: int, batch: int, bounds: tuple[int, int]) -> int:
    """About one pass over `rows`, within the preset's (min, max) optimizer steps."""
    return max(bounds[0], min(bounds[1], math.ceil(rows / batch)))


def stage_settings(p: dict[str, Any], sft: str, pairs: int, batch: int, floor: float) -> dict[str, Any]:
    """Each stage's section: SFT, the score models, the experts chosen on dev, rank, the probe switch, generate."""
    if sft == "off":
        sft_cfg: dict[str, Any] = {"enabled": False}
    else:
        trained = p["sft"] if "sft" in p else {"max_steps": steps(pairs, batch, p["sft_steps"]), "lr": p["sft_lr"]}
        sft_cfg = {"answers": "better" if sft == "pairs" else "column", **trained}
    score = p["score"] if "score" in p else {"max_steps": steps(pairs, batch, p["score_steps"]), "lr": p["score_lr"]}
    budget = steps(pairs, batch, p["expert_steps"])
    expert = {"max_steps": budget, "batch_size": batch, "beta": 0.1, "select": "dev",
              "select_every": max(1, budget // p["snapshots"])}
    return {
        "sft": sft_cfg,
        "reward_model": {**score, "min_accuracy": floor},
        "cost_model": {**score, "min_accuracy": floor},
        "safety_expert": {**expert, "lr": p["expert_lr"][0]},
        "helpfulness_expert": {**expert, "lr": p["expert_lr"][1]},
        "rank": {"rule": "joint"},
        "router": {"kind": "probe", "switch": "hard", "switch_prompts": "ranked"},
        "generate": {"models": ["base", "safety_expert", "helpfulness_expert", "midpo"],
                     "max_new_tokens": p["max_new_tokens"], "temperature": 0.0, "batch_size": p["gen_batch"],
                     "gate_sweep": [[0.5, 0.5], [0.5, 1.0], [1.0, 0.5], [1.0, 1.0]], "gate_maps": 2},
        "score": {"bootstrap": 200},
    }


def summary_lines(run: NewRun) -> list[str]:
    """What `midpo recipe new` prints: the counts of each part, how prompts were labelled, SFT, the files."""
    s = run.split
    kinds = {part: (sum(1 for p in rows if p.get("is_harmful") is True),
                    sum(1 for p in rows if p.get("is_harmful") is False)) for part, rows in (("dev", s.dev),
                                                                                              ("eval", s.eval))}
    labelled = ", ".join(f"{n} by {rule}" for rule, n in s.rules.items() if n)
    lines = [f"{s.counts['rows']} rows, {s.counts['prompts']} distinct prompts"
             + (f" ({s.counts['dropped:no_prompt']} rows without a prompt left out)" if s.counts['dropped:no_prompt']
                else ""),
             f"is_harmful of each prompt: {labelled}",
             f"train {len(s.train)} pairs, test {len(s.test)} pairs"
             + (f" ({s.counts['unused_train_prompts']} train prompts over --max-train left out)"
                if s.counts["unused_train_prompts"] else ""),
             *(f"{part} {len(rows)} prompts ({kinds[part][0]} harmful, {kinds[part][1]} benign)"
               for part, rows in (("dev", s.dev), ("eval", s.eval))),
             f"{run.sft}; preset {run.preset}"]
    return lines + small_split_cautions(len(s.test), len(s.dev), len(s.eval))


def small_split_cautions(test: int, dev: int, eval_: int) -> list[str]:
    """Said before anything trains: with a few rows per part the score models' audits (min_accuracy) and the
    dev choices are decided by one or two rows (a 40-row file gave 4 test pairs, and an audit of 2/4 failed a run
    after its score models had trained)."""
    out = []
    if too_few_to_audit(test):
        out.append(f"caution: {test} test pairs cannot audit the score models (one pair moves their accuracy by "
                   f"{100 / test:.0f} %), so the recipe turns the audit off (min_accuracy: 0); {FEW} or more "
                   "(more rows or --test-fraction) turn it on")
    if min(dev, eval_) < FEW:
        out.append(f"caution: {dev} dev and {eval_} eval prompts: the dev choices and the verdict's CIs are wide "
                   f"at this size (≥ {FEW} each is a start); more rows or --dev/--eval")
    return out
