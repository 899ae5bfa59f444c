"""Stage `generate` and `midpo generate`: answers of one or more models on one or more prompt sets.

Output: a JSONL file, one row per (model, prompt set, prompt) — see ROW_FIELDS. The file is
**resumable**: rows are keyed by (model, prompt_set, index), rows already present are skipped on a
re-run, and each finished batch is appended in one write followed by fsync. Why append + fsync and
not "rewrite a temp file + os.replace" per batch: rewriting costs O(file) per batch (quadratic over
a run); appending costs O(batch). A crash during the append can leave a partial last line; on the
next run that trailing partial line is cut off (and said), complete lines are kept, so a crash
loses at most the batch being written. Every row records the generation settings' id (`gen_id`),
and a re-run with other settings refuses to mix them into the same file.

Models (`--model [LABEL=]SPEC`): a folder with `midpo_config.json` is a MidPO model; a folder with
`adapter_config.json` is a PEFT adapter on the base named in that config; anything else (embedded:,
hub name, local folder) is a base causal LM. The row's `model` is LABEL (or SPEC); fixed gates add
`@gates=G_S,G_H`. Prompt sets (`--prompts [NAME=]SPEC`): a preset name (data/prompt_sets.py), an
embedded: set, a hub dataset with a column mapping, or a local JSONL/CSV/TXT file; empty prompts are
skipped and counted.
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.data.filters import select_prompts
from midpo_cli.data.prompt_sets import is_preset, load_preset
from midpo_cli.data.readers import load_rows
from midpo_cli.errors import InputError
from midpo_cli.manifest import fingerprint

ROW_FIELDS = ("model", "model_spec", "prompt_set", "index", "prompt", "answer", "category", "is_harmful",
              "prompt_tokens", "answer_tokens", "truncated", "finished", "gates", "gen_id")
_LABEL = re.compile(r"^[A-Za-z0-9_.@+-]+$")


def split_label(text: str) -> tuple[str | None, str]:
    """`name=spec` → (name, spec); a left side with a path separator is part of the spec, not a label."""
    head, sep, tail = text.partition("=")
    if sep and head and tail and _LABEL.match(head):
        return head, tail
    return None, text


@dataclass
class PromptSet:
    name: str
    spec: str
    prompts: list[dict[str, Any]]  # prompt, category, is_harmful, row (0-based source row: the row key)
    counts: dict[str, int] = field(default_factory=dict)


def load_prompt_set(text: str, columns: dict[str, str] | None = None) -> PromptSet:
    """A prompt set by preset name, embedded: name, hub spec or local file; empty prompts dropped, counted."""
    label, spec = split_label(text)
    counts: dict[str, int] = {}
    if is_preset(spec):
        table, counts = load_preset(spec)
    else:
        table = load_rows(spec, columns=columns)
    sel = select_prompts(table)
    local = Path(spec).expanduser()
    name = label or (local.stem if local.is_file() else spec)
    return PromptSet(name=name, spec=spec, prompts=sel.prompts, counts={**counts, **sel.counts})


@dataclass
class Policy:
    model: Any
    tokenizer: Any
    kind: str  # base | adapter | midpo


def load_policy(spec: str, *, gates: Sequence[float] | None = None, dtype: str = "fp32", seed: int = 0,
                tokenizer: str | None = None, trust_remote_code: bool = False) -> Policy:
    """Resolve a model spec (module docstring) into a model in eval mode and its tokenizer."""
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer

    folder = Path(spec).expanduser()
    if (folder / "midpo_config.json").is_file():
        from midpo_cli.modeling.midpo import load_midpo

        model, tok = load_midpo(folder, dtype=dtype, fixed_gates=gates, trust_remote_code=trust_remote_code)
        return Policy(model, tok, "midpo")
    if gates is not None:
        raise InputError(f"--gates applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        try:
            base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"{folder / 'adapter_config.json'}: no readable base_model_name_or_path ({exc})") from None
        if not base:
            raise InputError(f"{folder / 'adapter_config.json'}: base_model_name_or_path is empty")
        base_model = load_causal_lm(base, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base_model, str(folder)).eval()
        has_tok = (folder / "tokenizer_config.json").is_file()
        tok = load_tokenizer(tokenizer or (str(folder) if has_tok else base), trust_remote_code=trust_remote_code)
        return Policy(model, tok, "adapter")
    model = load_causal_lm(spec, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code).eval()
    return Policy(model, load_tokenizer(tokenizer or spec, trust_remote_code=trust_remote_code), "base")


# ---------------------------------------------------------------------------------------------- output file


def read_answers(path: Path) -> list[dict[str, Any]]:
    """Rows of an answers file; a trailing partial line (a crash mid-append) is cut off and reported."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        console.warn(f"{path}: dropping a partial last line ({len(data) - cut} bytes) left by an interrupted run")
        with open(path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        data = data[:cut]
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {number}: invalid JSON ({exc.msg}); not an answers file?") from None
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """One write of whole lines, then fsync: the batch is on disk before the next one starts."""
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


def _gen_id(settings: dict[str, Any]) -> str:
    return fingerprint(settings)[:12]


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class ModelEntry:
    label: str
    spec: str
    gates: tuple[float, float] | None = None


def model_entries(texts: Sequence[str], gates: Sequence[float] | None = None) -> list[ModelEntry]:
    out = []
    for text in texts:
        label, spec = split_label(text)
        label = label or spec
        g = (float(gates[0]), float(gates[1])) if gates is not None else None
        out.append(ModelEntry(f"{label}@gates={g[0]:g},{g[1]:g}" if g else label, spec, g))
    labels = [e.label for e in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"--model: the model id {dupes[0]!r} is given twice; label them: --model NAME=SPEC")
    return out


def generate_to_file(
    models: Sequence[ModelEntry],
    prompt_sets: Sequence[PromptSet],
    output: str | Path,
    *,
    template: str = "safe-rlhf",
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    max_prompt_length: int | None = None,
    loader: Callable[[ModelEntry], Any] | None = None,
) -> dict[str, Any]:
    """Generate every missing (model, prompt set, prompt) row into `output`; return run statistics.

    `loader(entry) -> Policy` defaults to `load_policy(entry.spec, gates=entry.gates)`; a model
    whose rows all exist is not loaded at all.
    """
    from midpo_cli.modeling.generation import generate_answers

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {"template": template, "max_new_tokens": max_new_tokens, "temperature": temperature,
                "top_p": top_p, "seed": seed, "max_prompt_length": max_prompt_length}
    gen_id = _gen_id(settings)
    existing = read_answers(output)
    other = next((r for r in existing if r.get("gen_id") != gen_id), None)
    if other is not None:
        raise InputError(f"{output} holds answers generated with other settings (gen_id {other.get('gen_id')} vs "
                         f"{gen_id}: {settings}); use another --output or delete the file")
    done = {(r["model"], r["prompt_set"], int(r["index"])) for r in existing}
    loader = loader or (lambda e: load_policy(e.spec, gates=e.gates))
    todo = {(m.label, s.name): [p for p in s.prompts if (m.label, s.name, p["row"]) not in done]
            for m in models for s in prompt_sets}
    total = sum(len(v) for v in todo.values())
    stats: dict[str, Any] = {"output": str(output), "gen_id": gen_id, "rows_existing": len(existing),
                             "rows_written": 0, "answer_tokens": 0, "truncated_prompts": 0,
                             "prompt_sets": {s.name: s.counts for s in prompt_sets}}
    started = time.perf_counter()
    with _progress(total) as (progress, task):
        for entry in models:
            if not any(todo[(entry.label, s.name)] for s in prompt_sets):
                continue
            policy = loader(entry)
            for pset in prompt_sets:
                pending = todo[(entry.label, pset.name)]
                progress.update(task, description=f"{entry.label} · {pset.name}")
                batches = generate_answers(
                    policy.model, policy.tokenizer, [p["prompt"] for p in pending], template=template,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
                    seed=seed, max_prompt_length=max_prompt_length)
                for batch in batches:
                    rows = [_answer_row(entry, pset, pending[b["index"]], b, gen_id) for b in batch]
                    append_rows(output, rows)
                    stats["rows_written"] += len(rows)
                    stats["answer_tokens"] += sum(b["answer_tokens"] for b in batch)
                    stats["truncated_prompts"] += sum(b["truncated"] for b in batch)
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    progress.update(task, advance=len(rows), rate=f"{stats['rows_written'] / elapsed:.1f} answers/s · "
                                    f"{stats['answer_tokens'] / elapsed:.0f} tok/s")
            del policy
            gc.collect()
    wall = time.perf_counter() - started
    stats.update(wall_s=round(wall, 2), answers_per_s=round(stats["rows_written"] / wall, 3) if wall else None,
                 tokens_per_s=round(stats["answer_tokens"] / wall, 1) if wall else None,
                 rows_total=len(existing) + stats["rows_written"])
    return stats


def _answer_row(entry: ModelEntry, pset: PromptSet, prompt: dict[str, Any], out: dict[str, Any],
                gen_id: str) -> dict[str, Any]:
    return {
        "model": entry.label, "model_spec": entry.spec, "prompt_set": pset.name, "index": prompt["row"],
        "prompt": prompt["prompt"], "answer": out["answer"], "category": prompt.get("category"),
        "is_harmful": prompt.get("is_harmful"), "prompt_tokens": out["prompt_tokens"],
        "answer_tokens": out["answer_tokens"], "truncated": out["truncated"], "finished": out["finished"],
        "gates": out["gates"], "gen_id": gen_id,
    }


class _progress:
    """A rich progress bar on stderr (answers/s and tokens/s), silent under --quiet."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 console=console.err, disable=console.quiet(), transient=False)
        self.total = total

    def __enter__(self):
        self.progress.__enter__()
        return self.progress, self.progress.add_task("generate", total=self.total, rate="")

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def log_counts(prompt_sets: Sequence[PromptSet]) -> None:
    for s in prompt_sets:
        dropped = ", ".join(f"{k} {v}" for k, v in s.counts.items() if v and k != "rows_in")
        console.log(f"prompts {s.name}: {len(s.prompts)} kept" + (f" ({dropped})" if dropped else ""))


# ---------------------------------------------------------------------------------------------- pipeline stage


def run(ctx: Any) -> None:
    """The pipeline's generate stage: every model named in stages.generate.models, plus the gate sweep."""
    from midpo_cli.manifest import write_manifest
    from midpo_cli.stages.common import model_ref, policy_ref, tokenizer_ref

    recipe, cfg = ctx.recipe, ctx.recipe.stages.generate
    refs = {"base": lambda: policy_ref(ctx), "safety_expert": lambda: str(ctx.input_path("safety_expert", "adapter")),
            "helpfulness_expert": lambda: str(ctx.input_path("helpfulness_expert", "adapter")),
            "midpo": lambda: model_ref(ctx, "router")}
    entries = [ModelEntry(name, refs[name]()) for name in cfg.models]
    if cfg.gate_sweep:
        midpo = refs["midpo"]()
        entries += [ModelEntry(f"midpo@gates={g[0]:g},{g[1]:g}", midpo, (g[0], g[1])) for g in cfg.gate_sweep]
    sets = [load_prompt_set(p, recipe.data.columns or None) for p in cfg.prompts]
    log_counts(sets)

    def loader(e: ModelEntry) -> Policy:
        tok = tokenizer_ref(recipe, e.spec) if e.spec == policy_ref(ctx) else None
        return load_policy(e.spec, gates=e.gates, seed=recipe.train.seed, tokenizer=tok,
                           trust_remote_code=recipe.trust_remote_code)

    out = ctx.folder / "answers.jsonl"
    stats = generate_to_file(entries, sets, out, template=recipe.data.template, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                             max_prompt_length=cfg.max_prompt_length, loader=loader)
    record = ctx.record()
    record.outputs = {"answers": ctx.rel(out)}
    record.metrics = {k: stats[k] for k in ("rows_total", "truncated_prompts", "answers_per_s", "tokens_per_s")}
    record.extra = {"prompt_sets": stats["prompt_sets"], "models": {e.label: e.spec for e in entries}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["generate"])
