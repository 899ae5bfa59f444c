"""Checks a stage runs *before* it touches its folder: run dir, precision, model folders, data.

Why here and not inside each stage: a re-run with a typo (`--set data.train=typo.jsonl`) used to
fail only after the stage had cleared its folder, so a finished adapter was lost to bad input.
Everything that can be checked without loading a model is checked first, and each failure is one
InputError naming the file, key or flag. No torch import unless a precision other than fp32 asks
which device is there; hub datasets are not fetched here (the stage does that, once).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from midpo_cli.assets import is_embedded, resolve_embedded
from midpo_cli.data.readers import is_local_spec
from midpo_cli.errors import InputError
from midpo_cli.io import try_read_json
from midpo_cli.pipeline.folders import check_links
from midpo_cli.pipeline.graph import makes_dev_choice
from midpo_cli.recipe import TRAINED_BASELINES, TRAINING_STAGES, Recipe

PAIR_READERS = ("reward_model", "cost_model", "safety_expert", "helpfulness_expert", "dpo_expert", "rank",
                *TRAINED_BASELINES)
SFT_EVAL_FRACTION = 0.05  # stages/sft.py holds this many rows out for its eval loss


def preflight(recipe: Recipe, stage: str, *, load_models: bool = True) -> None:
    """Raise InputError on anything that would make `stage` fail after it had started.

    `load_models=False` leaves out the one check that imports transformers (a weightless copy of the base):
    `pipeline plan` and `recipe check` load no model library.
    """
    check_run_dir(recipe.run_dir)
    check_links(Path(recipe.run_dir, stage))  # never move or clear anything through a link
    if stage in TRAINING_STAGES:
        check_precision(recipe, stage)
    check_models(recipe, stage)
    check_data(recipe, stage)
    check_dev_set(recipe, stage)
    if stage == "score" or makes_dev_choice(recipe, stage):
        check_judges(recipe.stages.score.judges(), "stages.score.judge")
    check_switch_data(recipe, stage)
    check_prompt_sets(recipe, stage)
    if load_models:
        check_architecture(recipe, stage)  # last: it imports torch and transformers, the checks above do not


def run_problems(recipe: Recipe, stages: list[str], *, load_models: bool = True) -> dict[str, str]:
    """The whole run's preflight: each of `stages` (those that will run) → the first problem its checks find.

    Why all of them first: a missing prompt file of a late stage used to surface after the earlier stages had
    trained for minutes; `pipeline run` refuses to start, `pipeline plan` shows "will fail", `recipe check` fails.
    """
    problems = {}
    for stage in stages:
        try:
            preflight(recipe, stage, load_models=load_models)
        except InputError as exc:
            problems[stage] = str(exc)
    return problems


def problems_error(problems: dict[str, str]) -> InputError:
    """One InputError for every problem found (each said once, by the first stage that has it)."""
    first: dict[str, str] = {}
    for stage, message in problems.items():
        first.setdefault(message, stage)
    if len(first) == 1:
        return InputError(next(iter(first)))
    return InputError(f"{len(first)} problems with what the run needs, found before any stage started:\n" +
                      "\n".join(f"{stage}: {message}" for message, stage in first.items()))


WILL_RUN = ("will run", "will resume")


def plan_with_problems(recipe: Recipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`pipeline plan`'s rows (pipeline.graph.plan), each stage that would run but fails its preflight shown as
    "will fail" with the problem, the path or key named, instead of "will run"."""
    problems = run_problems(recipe, [r["stage"] for r in rows if r["status"] in WILL_RUN], load_models=False)
    return [{**r, "status": "will fail", "why": problems[r["stage"]]} if r["stage"] in problems else r
            for r in rows]


def check_whole_run(recipe: Recipe) -> None:
    """`recipe check`: every stage the pipeline would run now (the default selection, minus what the run dir
    holds done) passes its preflight; else one InputError naming every problem."""
    from midpo_cli.pipeline.graph import select_stages, stage_plans

    plans = stage_plans(recipe, select_stages(recipe=recipe))
    problems = run_problems(recipe, [p.stage for p in plans if p.status in WILL_RUN], load_models=False)
    if problems:
        raise problems_error(problems)


def prompt_set_key(recipe: Recipe, spec: str) -> str:
    """The recipe key that names prompt set `spec`: its role, or stages.generate.prompts."""
    if spec == recipe.data.dev_prompts:
        return "data.dev_prompts"
    return "data.eval_prompts" if spec in recipe.data.eval_prompts else "stages.generate.prompts"


def read_prompt_set(recipe: Recipe, spec: str):
    """A local prompt set, read (it exists and holds prompts) with its recipe key in any error; None for a
    hub set or preset (no download in a preflight)."""
    from midpo_cli.data.prompt_sets import load_prompt_set
    from midpo_cli.stages.kit.dev_set import is_local_set

    if not is_local_set(spec):
        return None
    try:
        return load_prompt_set(spec, recipe.data.columns or None)
    except InputError as exc:
        raise InputError(f"{prompt_set_key(recipe, spec)}: {exc}") from None


def check_prompt_sets(recipe: Recipe, stage: str) -> None:
    """Generate answers every prompt set (Recipe.prompt_sets): each local one exists and holds prompts; every
    one that does not is named."""
    if stage != "generate":
        return
    problems = []
    for spec in recipe.prompt_sets():
        try:
            read_prompt_set(recipe, spec)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))


def check_judges(entries, where: str) -> None:
    """What a judge needs before it runs (docs/judges.md): a guard's model (a folder or a hub name), the LLM judge's
    key variable set in the environment and its rubric file; said before any folder is touched or model loads."""
    for i, entry in enumerate(entries):
        key = f"{where}[{i}] ({entry.name})"
        if entry.guard is not None:
            check_model_ref(f"{key}.model", entry.guard.model)
        if entry.openai is not None:
            spec = entry.openai
            if spec.api_key_env and not os.environ.get(spec.api_key_env):
                raise InputError(f"{key}.api_key_env: {spec.api_key_env} is not set in the environment; export it "
                                 "(the key is read from there only, never from a file)")
            if spec.rubric and not Path(spec.rubric).is_file():
                raise InputError(f"{key}.rubric: {spec.rubric}: no such file")
            if not spec.base_url.startswith(("http://", "https://")):
                raise InputError(f"{key}.base_url: {spec.base_url!r} is not an http(s) URL")


def check_dev_set(recipe: Recipe, stage: str) -> None:
    """A stage that chooses on the dev prompts (an expert's `select: dev`, the hard probe switch) needs the
    recipe to name them (midpo_cli.stages.kit.dev_set), and a local set to hold the prompts the choice judges:
    the expert's kind, or both kinds for the switch; said before any model loads or folder changes."""
    from midpo_cli.evaluation.expert_select import wants_harmful
    from midpo_cli.stages.kit.dev_set import (
        chooses_switch_threshold,
        dev_prompts_of_kind,
        require_both_kinds,
        require_dev_prompts,
        threshold_chooser,
    )

    cfg = getattr(recipe.stages, stage, None)
    if getattr(cfg, "select", None) == "dev":
        why = f"stages.{stage}.select: dev"
        if read_prompt_set(recipe, require_dev_prompts(recipe, why)) is not None:
            dev_prompts_of_kind(recipe, wants_harmful(stage), why)
    if stage == "router" and chooses_switch_threshold(recipe):
        who = threshold_chooser(recipe)
        spec = require_dev_prompts(recipe, who)
        if read_prompt_set(recipe, spec) is not None:
            require_both_kinds(recipe, spec, f"{who.split(' (')[0]} chooses its threshold")


def check_switch_data(recipe: Recipe, stage: str) -> None:
    """The prompts the probe switch is fit on hold both kinds, read from rank's output when rank is done (a rank
    that runs first in this pipeline is read by the router stage itself, before it trains)."""
    if stage != "router" or not recipe.builds_switch:
        return
    from midpo_cli.data.ranked import check_switch_kinds, switch_fit_kinds
    from midpo_cli.pipeline.status import stage_state

    fit_on = recipe.stages.router.switch_prompts
    outputs = (stage_state(Path(recipe.run_dir), "rank")["manifest"] or {}).get("outputs") or {}
    output = outputs.get("scored" if fit_on == "ranked" else "dual")
    if isinstance(output, str):
        path = Path(recipe.run_dir) / output
        check_switch_kinds(switch_fit_kinds(path, fit_on), str(path), fit_on)


def check_architecture(recipe: Recipe, stage: str) -> None:
    """The experts' LoRA targets must exist and be routable nn.Linear layers of this architecture.

    Checked on a weightless (meta) copy of the base model, so an unsupported model fails before SFT,
    not hours later at the expert or router stage. Imports transformers; only expert stages pay it.
    """
    lora = recipe.baseline_policy(stage)["lora"] if stage in TRAINED_BASELINES else \
        getattr(getattr(recipe.stages, stage, None), "lora", None)
    if lora is None:
        return
    from midpo_cli.modeling.lora import preflight_targets

    preflight_targets(recipe.stages.sft.use or recipe.base_model, lora.target_modules,
                      trust_remote_code=recipe.trust_remote_code)


def check_run_dir(run_dir: str | Path) -> None:
    """The run dir must be a folder (or creatable) that this user can write."""
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"run_dir {path} is a file, not a folder; set run_dir to a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"run_dir {path}: {probe} is a file, so the folder cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"run_dir {path}: {probe} is not writable by this user")


def world_size(recipe: Recipe) -> int:
    """Processes the launcher will start (1 without a launcher)."""
    lc = recipe.launcher
    return (lc.num_gpus or 1) * lc.num_nodes if lc.kind != "none" else 1


def check_precision(recipe: Recipe, stage: str) -> None:
    """fp16 needs a CUDA device (its loss scaling and kernels are GPU-only in DeepSpeed)."""
    precision = recipe.train_settings(stage).precision
    if precision != "fp16":
        return
    if not _cuda_available():
        raise InputError(f"stages.{stage}.precision (train.precision) is fp16, but no CUDA device is available; "
                         "use fp32 (or bf16) on CPU")


def _cuda_available() -> bool:
    """No NVIDIA driver visible means no CUDA, without importing torch (seconds); otherwise torch decides."""
    import glob
    import shutil

    if not glob.glob("/dev/nvidia[0-9]*") and shutil.which("nvidia-smi") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def model_refs(recipe: Recipe, stage: str) -> dict[str, str]:
    """Recipe key → model reference the stage will load itself (upstream artifacts are checked elsewhere)."""
    refs: dict[str, str] = {}
    sft = recipe.stages.sft
    if stage == "sft":
        if sft.use:
            refs["stages.sft.use"] = sft.use
        else:
            refs["base_model"] = recipe.base_model
    if stage in ("reward_model", "cost_model"):
        cfg = getattr(recipe.stages, stage)
        if cfg.use:
            refs[f"stages.{stage}.use"] = cfg.use
        elif cfg.base_model:
            refs[f"stages.{stage}.base_model"] = cfg.base_model
    if recipe.tokenizer:
        refs["tokenizer"] = recipe.tokenizer
    return refs


def check_models(recipe: Recipe, stage: str) -> None:
    for key, ref in model_refs(recipe, stage).items():
        check_model_ref(key, ref, score_model=key.endswith("_model.use"), tokenizer=key == "tokenizer")


def check_model_ref(key: str, ref: str, *, score_model: bool = False, tokenizer: bool = False) -> None:
    """A local model folder must exist and be the right kind; hub names are left to the loader."""
    if is_embedded(ref):
        resolve_embedded(ref)
        return
    path = Path(ref).expanduser()
    if not path.exists():
        if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
            raise InputError(f"{key}: {ref}: no such folder")
        return  # a hub name
    if not path.is_dir() or not (path / ("tokenizer_config.json" if tokenizer else "config.json")).is_file():
        if tokenizer and (path / "tokenizer.json").is_file():
            return
        raise InputError(f"{key}: {ref} is not a model folder (no {'tokenizer' if tokenizer else 'config.json'})")
    if tokenizer:
        return
    config = try_read_json(path / "config.json")
    if config is None:
        raise InputError(f"{key}: {path / 'config.json'} is not readable JSON")
    is_score = isinstance(config, dict) and ("score_type" in config or any(
        str(a).endswith("ForScore") for a in config.get("architectures") or []))
    if is_score and not score_model:
        raise InputError(f"{key}: {ref} is a score model (safe-rlhf format), not a causal language model")
    if score_model and not is_score:
        raise InputError(f"{key}: {ref} is not a score model (config.json has no score_type / *ForScore)")
    from midpo_cli.modeling.files import check_weight_files, refuse_weightless

    refuse_weightless(path, key)
    check_weight_files(path)


def data_specs(recipe: Recipe, stage: str) -> dict[str, str]:
    """Recipe key → dataset spec the stage reads (first entry: the training data)."""
    data, specs = recipe.data, {}
    if stage == "sft":
        sft = recipe.stages.sft
        if sft.enabled and not sft.use:
            key, spec = ("stages.sft.data", sft.data) if sft.data else ("data.sft", data.sft)
            if not spec:
                raise InputError("stages.sft: no SFT data; set data.sft or stages.sft.data, or stages.sft.enabled: "
                                 "false to use base_model as the policy (an instruction-tuned base)")
            specs[key] = spec
            if sft.corpus:
                specs["stages.sft.corpus"] = sft.corpus
        return specs
    if stage in ("reward_model", "cost_model") and getattr(recipe.stages, stage).use:
        return {"data.eval": data.eval} if data.eval else {"data.train": data.train}
    if stage in PAIR_READERS:
        specs["data.train"] = data.train
    if data.eval and stage in (*PAIR_READERS, "router"):
        specs["data.eval"] = data.eval
    return specs


def check_data(recipe: Recipe, stage: str) -> None:
    """Read each local dataset the stage uses: it exists, parses, has the columns, and fills one step."""
    from midpo_cli.data.filters import pair_filter, select_pairs
    from midpo_cli.data.readers import load_rows

    for n, (key, spec) in enumerate(data_specs(recipe, stage).items()):
        if not is_local_spec(spec):
            continue
        try:
            # data.columns maps the pair / SFT data; a corpus has its own one column, `text`
            table = load_rows(spec, columns=None if key == "stages.sft.corpus" else recipe.data.columns)
            if key == "stages.sft.corpus":
                rows = _text_rows(table)
            elif stage == "sft":
                rows = _sft_rows(recipe, table)
            else:
                loss = getattr(getattr(recipe.stages, stage), "loss", None)
                rows = len(select_pairs(table, pair_filter(stage, loss)).pairs)
        except InputError as exc:
            raise InputError(f"{key}: {exc}") from None
        if n == 0 and stage in TRAINING_STAGES and stage != "router" and not _uses_existing(recipe, stage):
            check_batch(recipe, stage, key, spec, rows)


def _uses_existing(recipe: Recipe, stage: str) -> bool:
    cfg = getattr(recipe.stages, stage)
    return bool(getattr(cfg, "use", None))


def _sft_rows(recipe: Recipe, table) -> int:
    from midpo_cli.data.filters import select_pairs
    from midpo_cli.data.schema import SFT_COLUMNS, require_columns

    answers = recipe.stages.sft.answers
    if answers == "column":
        require_columns(table.columns, SFT_COLUMNS, table.source, "stage sft (stages.sft.answers: column)")
        return int(len(table.rows) * (1 - SFT_EVAL_FRACTION))
    return len(select_pairs(table, "reward_model" if answers == "better" else "cost_model").pairs)


def _text_rows(table) -> int:
    from midpo_cli.data.schema import TEXT_COLUMNS, require_columns

    require_columns(table.columns, TEXT_COLUMNS, table.source, "stages.sft.corpus")
    return len(table.rows)


def check_batch(recipe: Recipe, stage: str, key: str, spec: str, rows: int) -> None:
    """One optimizer step needs batch_size × grad_accum × processes rows (encoding may drop a few more)."""
    t = recipe.train_settings(stage)
    need = t.batch_size * t.grad_accum * world_size(recipe)
    if rows < need:
        raise InputError(f"stages.{stage}.batch_size: {spec} ({key}) has {rows} usable rows for {stage}, fewer than "
                         f"one optimizer step needs (batch_size {t.batch_size} × grad_accum {t.grad_accum} × "
                         f"{world_size(recipe)} processes); lower batch_size or grad_accum")
