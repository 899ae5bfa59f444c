"""Stage `generate` and `midpo generate`: answers of one or more models on one or more prompt sets.

Output: a JSONL file, one row per (model, prompt set, prompt) — see ROW_FIELDS. The file is
**resumable**: rows are keyed by (model, prompt_set, index), rows already present are skipped on a
re-run, and each finished batch is appended in one write followed by fsync. Why append + fsync and
not "rewrite a temp file + os.replace" per batch: rewriting costs O(file) per batch (quadratic over
a run); appending costs O(batch). A crash during the append can leave a partial last line; on the
next run that trailing partial line is cut off (and said), complete lines are kept, so a crash
loses at most the batch being written. Every row records what wrote it: the generation settings
(`gen`, and their id `gen_id`), the template, and the model (`model_spec`, and `model_id`: a hash of
the model folder's content plus its fixed gates and safety dial). A re-run refuses to mix other
settings or another model under the same label into the file, and a file that is not an answers
file is refused before anything is written to it. Ctrl-C stops after the batch being written and
says how many answers are kept; the same command resumes.

Models (`--model [LABEL=]SPEC`): a folder with `midpo_config.json` is a MidPO model; a folder with
`adapter_config.json` is a PEFT adapter on the base named in that config; anything else (embedded:,
hub name, local folder) is a base causal LM. The row's `model` is LABEL (or SPEC); fixed gates add
`@gates=G_S,G_H`, a safety dial `@dial=+B` (midpo_cli.headroom). Prompt sets (`--prompts [NAME=]SPEC`): a
preset name (data/prompt_sets.py), an embedded: set, a hub dataset with a column mapping, or a local
JSONL/CSV/TXT file; empty prompts are skipped and counted.
"""

from __future__ import annotations

import gc
import hashlib
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
from midpo_cli.errors import InputError, Interrupted
from midpo_cli.manifest import fingerprint

ROW_FIELDS = ("model", "model_spec", "model_id", "fixed_gates", "safety_bias", "prompt_set", "index", "prompt",
              "answer", "category", "is_harmful", "prompt_tokens", "answer_tokens", "truncated", "finished", "gates",
              "template", "gen", "gen_id")
ANSWER_KEYS = ("model", "prompt_set", "index", "answer")  # what makes a line an answers row
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


def load_policy(spec: str, *, gates: Sequence[float] | None = None, safety_bias: float = 0.0, dtype: str = "fp32",
                seed: int = 0, tokenizer: str | None = None, trust_remote_code: bool = False) -> Policy:
    """Resolve a model spec (module docstring) into a model in eval mode and its tokenizer."""
    from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer

    folder = Path(spec).expanduser()
    if (folder / "midpo_config.json").is_file():
        from midpo_cli.modeling.midpo import load_midpo

        model, tok = load_midpo(folder, dtype=dtype, fixed_gates=gates, trust_remote_code=trust_remote_code)
        model.set_safety_bias(safety_bias)
        return Policy(model, tok, "midpo")
    if gates is not None:
        raise InputError(f"--gates applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    if safety_bias:
        raise InputError(f"--safety-bias applies to MidPO model folders only; {spec} is not one (no midpo_config.json)")
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        from midpo_cli.modeling.lora import adapter_base, check_adapter_base

        base = adapter_base(folder)  # resolved from the adapter folder (midpo.json), else PEFT's config
        if not base:
            raise InputError(f"{folder / 'adapter_config.json'}: base_model_name_or_path is empty")
        base_model = load_causal_lm(base, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
        # the base it was trained on, not a look-alike; identified by its stored weights, so in any --dtype
        check_adapter_base(folder, base_model, base_name=base, source=base, seed=seed,
                           trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base_model, str(folder)).eval()
        has_tok = (folder / "tokenizer_config.json").is_file()
        tok = load_tokenizer(tokenizer or (str(folder) if has_tok else base), trust_remote_code=trust_remote_code)
        return Policy(model, tok, "adapter")
    model = load_causal_lm(spec, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code).eval()
    return Policy(model, load_tokenizer(tokenizer or spec, trust_remote_code=trust_remote_code), "base")


_HASH_WHOLE = 64 << 20  # files up to 64 MiB are hashed whole; larger ones by size, head and tail


def content_fingerprint(spec: str) -> str:
    """What a model spec points at, cheaply: a local file/folder's content, else the name itself.

    Why content and not the path: a run dir that moves keeps its answers resumable, and a folder
    overwritten by another model (same path) does not. Weight files over 64 MiB are hashed by size and
    their first and last MiB, so a 7 B folder costs milliseconds, not a full read.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        return fingerprint({"name": spec})
    files = sorted(f for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path) if f != path else f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= _HASH_WHOLE:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                digest.update(fh.read())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- output file


def read_answers(path: Path) -> list[dict[str, Any]]:
    """Rows of an answers file. Everything is checked before anything is written: a file that is not
    an answers file is refused untouched; then a trailing partial line (a crash mid-append) is cut off
    and reported, and a complete last row without its newline gets one."""
    if not path.exists():
        return []
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")
    rows = [_answer_line(path, number, line) for number, line in enumerate(complete, start=1) if line.strip()]
    fix: bytes | None = None  # what to do with the last line: None = nothing
    if tail.strip():
        try:
            rows.append(_answer_line(path, len(complete) + 1, tail))
            fix = b"\n"
        except InputError:
            if not tail.startswith(b'{"model": '):  # not the start of a row this module wrote
                raise
            fix = b""
    if fix == b"\n":
        with open(path, "ab") as fh:
            fh.write(fix)
    elif fix == b"":
        cut = len(data) - len(tail)
        console.warn(f"{path}: dropping a partial last line ({len(tail)} bytes) left by an interrupted run")
        with open(path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def _answer_line(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        row = None
    if not isinstance(row, dict) or any(k not in row for k in ANSWER_KEYS):
        raise InputError(f"{path}: line {number} is not an answers row (JSON with {', '.join(ANSWER_KEYS)}); "
                         "not an answers file? Give another --output")
    return row


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
    safety_bias: float = 0.0
    sets: tuple[str, ...] | None = None  # prompt-set names this entry answers (None: all)


def model_entries(texts: Sequence[str], gates: Sequence[float] | None = None) -> list[ModelEntry]:
    from midpo_cli.headroom import blend_label

    out = []
    for text in texts:
        label, spec = split_label(text)
        label = label or spec
        g = (float(gates[0]), float(gates[1])) if gates is not None else None
        out.append(ModelEntry(blend_label(label, g) if g else label, spec, g))
    labels = [e.label for e in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"--model: the model id {dupes[0]!r} is given twice; label them: --model NAME=SPEC")
    return out


def apply_routing(entries: Sequence[ModelEntry], gates: tuple[float, float] | None,
                  safety_bias: float) -> list[ModelEntry]:
    """`--gates` / `--safety-bias` change MidPO folders only (the others keep their plain id); an error
    when neither applies to any --model, or when both are given (fixed gates bypass the dial)."""
    from midpo_cli.headroom import blend_label, dial_label

    if gates is None and not safety_bias:
        return list(entries)
    if gates is not None and safety_bias:
        raise InputError("--gates and --safety-bias: fixed gates bypass the routers, so a dial would do nothing; "
                         "give one of them")
    flag = "--gates" if gates is not None else "--safety-bias"
    out = []
    for e in entries:
        if not (Path(e.spec) / "midpo_config.json").is_file():
            out.append(e)
        elif gates is not None:
            out.append(ModelEntry(blend_label(e.label, gates), e.spec, gates))
        else:
            out.append(ModelEntry(dial_label(e.label, safety_bias), e.spec, safety_bias=safety_bias))
    if out == list(entries):
        raise InputError(f"{flag}: none of the --model folders is a MidPO model (midpo_config.json)")
    return out


@dataclass
class _Run:
    """State of one generate_to_file call, shared by its helpers."""

    output: Path
    settings: dict[str, Any]
    gen_id: str
    stats: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)


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

    `loader(entry) -> Policy` defaults to `load_policy(entry.spec, gates=..., safety_bias=...)`; a model
    whose rows all exist is not loaded at all, and consecutive entries of one MidPO folder (a gate or
    dial sweep) share one loaded model, switched by `set_fixed_gates` / `set_safety_bias`.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {"template": template, "max_new_tokens": max_new_tokens, "temperature": temperature,
                "top_p": top_p, "seed": seed, "max_prompt_length": max_prompt_length}
    existing = read_answers(output)
    run = _Run(output, settings, _gen_id(settings), {})
    other = next((r for r in existing if r.get("gen_id") != run.gen_id), None)
    if other is not None:
        was = other.get("gen") or other.get("gen_id")
        raise InputError(f"{output} holds answers generated with other settings ({was} vs {settings}); "
                         "use another --output or delete the file")
    ids = _check_models(models, existing, output)
    done = {(r["model"], r["prompt_set"], int(r["index"])) for r in existing}
    todo = {(m.label, s.name): [p for p in s.prompts if (m.label, s.name, p["row"]) not in done]
            if m.sets is None or s.name in m.sets else [] for m in models for s in prompt_sets}
    total = sum(len(v) for v in todo.values())
    run.stats = {"output": str(output), "gen_id": run.gen_id, "rows_existing": len(existing), "rows_written": 0,
                 "answer_tokens": 0, "truncated_prompts": 0, "prompt_sets": {s.name: s.counts for s in prompt_sets}}
    loader = loader or (lambda e: load_policy(e.spec, gates=e.gates, safety_bias=e.safety_bias))
    try:
        _generate_all(models, prompt_sets, todo, total, ids, loader, run, batch_size)
    except KeyboardInterrupt:  # the file is the truth: the interrupt may land between a write and its count
        kept = output.read_bytes().count(b"\n") if output.exists() else 0
        raise Interrupted(f"generate interrupted: {kept} answers kept in {output} ({kept - len(existing)} new); "
                          "rerun the same command to continue where it stopped") from None
    wall = time.perf_counter() - run.started
    rows_written = run.stats["rows_written"]
    run.stats.update(wall_s=round(wall, 2), answers_per_s=round(rows_written / wall, 3) if wall else None,
                     tokens_per_s=round(run.stats["answer_tokens"] / wall, 1) if wall else None,
                     rows_total=len(existing) + rows_written)
    return run.stats


def _check_models(models: Sequence[ModelEntry], existing: list[dict[str, Any]], output: Path) -> dict[str, str]:
    """Each entry's model_id; refuse when the file's rows under a label came from another model."""
    by_spec: dict[str, str] = {}
    ids = {}
    for m in models:
        if m.spec not in by_spec:
            by_spec[m.spec] = content_fingerprint(m.spec)
        ids[m.label] = fingerprint({"content": by_spec[m.spec], "gates": list(m.gates) if m.gates else None,
                                    "safety_bias": float(m.safety_bias)})[:12]
    for r in existing:
        want = ids.get(r["model"])
        if want is not None and r.get("model_id") is None:
            raise InputError(f"{output}: its answers of {r['model']!r} record no model id (written by an older midpo), "
                             "so resuming could mix two models; use another --output or delete the file")
        if want is not None and r.get("model_id") != want:
            raise InputError(f"{output}: its answers of {r['model']!r} were written by another model "
                             f"({r.get('model_spec')}, id {r.get('model_id')}) than the one given now "
                             f"({next(m.spec for m in models if m.label == r['model'])}, id {want}); "
                             "use another --output, another label, or delete the file")
    return ids


def _generate_all(models: Sequence[ModelEntry], prompt_sets: Sequence[PromptSet],
                  todo: dict[tuple[str, str], list[dict[str, Any]]], total: int, ids: dict[str, str],
                  loader: Callable[[ModelEntry], Any], run: _Run, batch_size: int) -> None:
    cached: tuple[str, Any, Any] | None = None  # (spec, policy, its routing state as loaded)
    try:
        with _progress(total) as (progress, task):
            for entry in models:
                if not any(todo[(entry.label, s.name)] for s in prompt_sets):
                    continue
                if cached is not None and (cached[0] != entry.spec or cached[1].kind != "midpo"):
                    _restore(cached)
                    cached = None
                    gc.collect()
                if cached is None:
                    policy = loader(entry)
                    state = getattr(policy.model, "state", None)
                    cached = (entry.spec, policy, (getattr(state, "fixed", None), getattr(state, "safety_bias", 0.0)))
                policy = cached[1]
                if policy.kind == "midpo":  # one loaded model serves every blend and dial of its folder
                    policy.model.set_fixed_gates(entry.gates if entry.gates is not None else cached[2][0])
                    policy.model.set_safety_bias(entry.safety_bias)
                _generate_entry(entry, policy, prompt_sets, todo, ids, run, batch_size, progress, task)
    finally:
        if cached is not None:
            _restore(cached)


def _restore(cached: tuple[str, Any, Any]) -> None:
    """Leave a (possibly caller-owned) MidPO model with the gates and dial it was loaded with."""
    if cached[1].kind == "midpo":
        cached[1].model.set_fixed_gates(cached[2][0])
        cached[1].model.set_safety_bias(cached[2][1])


def _generate_entry(entry: ModelEntry, policy: Any, prompt_sets: Sequence[PromptSet],
                    todo: dict[tuple[str, str], list[dict[str, Any]]], ids: dict[str, str], run: _Run,
                    batch_size: int, progress: Any, task: Any) -> None:
    from midpo_cli.modeling.generation import generate_answers

    for pset in prompt_sets:
        pending = todo[(entry.label, pset.name)]
        progress.update(task, description=f"{entry.label} · {pset.name}")
        batches = generate_answers(
            policy.model, policy.tokenizer, [p["prompt"] for p in pending], batch_size=batch_size,
            **{k: v for k, v in run.settings.items()})
        for batch in batches:
            rows = [_answer_row(entry, pset, pending[b["index"]], b, run, ids[entry.label]) for b in batch]
            append_rows(run.output, rows)
            _count(run, batch, len(rows))
            elapsed = max(time.perf_counter() - run.started, 1e-9)
            progress.update(task, advance=len(rows), rate=f"{run.stats['rows_written'] / elapsed:.1f} "
                            f"answers/s · {run.stats['answer_tokens'] / elapsed:.0f} tok/s")


def _count(run: _Run, batch: list[dict[str, Any]], written: int) -> None:
    run.stats["rows_written"] += written
    run.stats["answer_tokens"] += sum(b["answer_tokens"] for b in batch)
    run.stats["truncated_prompts"] += sum(b["truncated"] for b in batch)


def _answer_row(entry: ModelEntry, pset: PromptSet, prompt: dict[str, Any], out: dict[str, Any], run: _Run,
                model_id: str) -> dict[str, Any]:
    gen = {k: v for k, v in run.settings.items() if k != "template"}
    return {
        "model": entry.label, "model_spec": entry.spec, "model_id": model_id,
        "fixed_gates": list(entry.gates) if entry.gates is not None else None,
        "safety_bias": float(entry.safety_bias), "prompt_set": pset.name, "index": prompt["row"],
        "prompt": prompt["prompt"], "answer": out["answer"], "category": prompt.get("category"),
        "is_harmful": prompt.get("is_harmful"), "prompt_tokens": out["prompt_tokens"],
        "answer_tokens": out["answer_tokens"], "truncated": out["truncated"], "finished": out["finished"],
        "gates": out["gates"], "template": run.settings["template"], "gen": gen, "gen_id": run.gen_id,
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
        console.log(f"prompts {s.name}: {console.counts_text({**s.counts, 'kept': len(s.prompts)})}")


# ---------------------------------------------------------------------------------------------- pipeline stage


def run(ctx: Any) -> None:
    """The pipeline's generate stage: stages.generate.models, the gate and dial sweeps, the gate maps."""
    from midpo_cli.io import atomic_write_json
    from midpo_cli.manifest import write_manifest
    from midpo_cli.pipeline.inputs import model_ref, policy_ref, tokenizer_ref

    recipe, cfg = ctx.recipe, ctx.recipe.stages.generate
    refs = {"base": lambda: policy_ref(ctx), "safety_expert": lambda: str(ctx.input_path("safety_expert", "adapter")),
            "helpfulness_expert": lambda: str(ctx.input_path("helpfulness_expert", "adapter")),
            "midpo": lambda: model_ref(ctx, "router")}
    sets = [load_prompt_set(p, recipe.data.columns or None) for p in cfg.prompts]
    log_counts(sets)
    entries = stage_entries(cfg, refs, sets)

    def loader(e: ModelEntry) -> Policy:
        tok = tokenizer_ref(recipe, e.spec) if e.spec == policy_ref(ctx) else None
        return load_policy(e.spec, gates=e.gates, safety_bias=e.safety_bias, seed=recipe.train.seed, tokenizer=tok,
                           trust_remote_code=recipe.trust_remote_code)

    out = ctx.folder / "answers.jsonl"
    stats = generate_to_file(entries, sets, out, template=recipe.data.template, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                             max_prompt_length=cfg.max_prompt_length, loader=loader)
    record = ctx.record()
    record.outputs = {"answers": ctx.rel(out)}
    if cfg.gate_maps and "midpo" in cfg.models:
        router = next(e for e in entries if e.label == "midpo")
        maps = gate_maps(loader(router), sets, per_kind=cfg.gate_maps, label="midpo", template=recipe.data.template,
                         max_new_tokens=cfg.max_new_tokens, max_prompt_length=cfg.max_prompt_length)
        if maps["prompts"]:
            atomic_write_json(ctx.folder / "gate_maps.json", maps)
            record.outputs["gate_maps"] = ctx.rel(ctx.folder / "gate_maps.json")
    record.metrics = {k: stats[k] for k in ("rows_total", "truncated_prompts", "answers_per_s", "tokens_per_s")}
    record.extra = {"prompt_sets": stats["prompt_sets"], "models": {e.label: e.spec for e in entries}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["generate"])


def stage_entries(cfg: Any, refs: dict[str, Callable[[], str]], sets: Sequence[PromptSet]) -> list[ModelEntry]:
    """The stage's models: stages.generate.models, then the fixed blends and the dial settings of midpo.

    Blends answer every sweep set (the dev set chooses the best one, the others report it); dials skip
    the dev set, since the dial curve is drawn on the reported sets only.
    """
    from midpo_cli.headroom import blend_label, dial_label

    entries = [ModelEntry(name, refs[name](), safety_bias=cfg.safety_bias if name == "midpo" else 0.0)
               for name in cfg.models]
    sweep_sets = _sweep_sets(sets, cfg.sweep_prompts)
    midpo = refs["midpo"]() if cfg.gate_blends() or cfg.dial_sweep else ""
    entries += [ModelEntry(blend_label("midpo", g), midpo, g, sets=sweep_sets) for g in cfg.gate_blends()]
    reported = tuple(s.name for s in sets if not s.name.endswith("dev-prompts")
                     and (sweep_sets is None or s.name in sweep_sets))
    dial_sets = reported or sweep_sets
    entries += [ModelEntry(dial_label("midpo", b), midpo, safety_bias=b, sets=dial_sets) for b in cfg.dial_sweep]
    return entries


def _sweep_sets(sets: Sequence[PromptSet], wanted: Sequence[str] | None) -> tuple[str, ...] | None:
    """Names of the prompt sets the sweeps answer (stages.generate.sweep_prompts: names or specs)."""
    if wanted is None:
        return None
    names = []
    for w in wanted:
        hit = [s.name for s in sets if w in (s.name, s.spec) or s.name.endswith(("/" + w, ":" + w))]
        if not hit:
            raise InputError(f"stages.generate.sweep_prompts: {w!r} is not one of stages.generate.prompts "
                             f"({', '.join(s.name for s in sets)})")
        names += hit
    return tuple(names)


# ---------------------------------------------------------------------------------------------- gate maps


def pick_gate_prompts(sets: Sequence[PromptSet], per_kind: int) -> list[tuple[str, PromptSet, dict[str, Any]]]:
    """(kind, set, prompt) for a few harmful, benign and trap prompts, from the first evaluation set.

    Traps come from a set named `*traps` (half harmful, half benign where it has both); harmful and
    benign prompts from the first other set that is not a dev set (the dev set if it is all there is).
    """
    traps = [s for s in sets if s.name.endswith("traps")]
    plain = [s for s in sets if s not in traps and not s.name.endswith("dev-prompts")] or \
        [s for s in sets if s not in traps]
    out: list[tuple[str, PromptSet, dict[str, Any]]] = []
    if plain:
        for kind, flag in (("harmful", True), ("benign", False)):
            out += [(kind, plain[0], p) for p in plain[0].prompts if p.get("is_harmful") is flag][:per_kind]
    if traps:
        harm = [p for p in traps[0].prompts if p.get("is_harmful") is True]
        rest = [p for p in traps[0].prompts if p.get("is_harmful") is not True]
        half = per_kind - per_kind // 2 if harm and rest else per_kind
        chosen = harm[:half] + rest[:per_kind - min(half, len(harm))]
        out += [("trap", traps[0], p) for p in chosen]
    return out


def gate_maps(policy: Policy, sets: Sequence[PromptSet], *, per_kind: int, label: str, template: str,
              max_new_tokens: int, max_prompt_length: int | None = None) -> dict[str, Any]:
    """Per routed layer × answer token gates of a MidPO model on a few prompts (the report's heatmaps).

    The answer is generated greedily, then teacher-forced through the model; column k holds the gates
    at the position whose output is answer token k (the same steps a row's mean `gates` averages), and
    is labelled with that token.
    """
    import torch

    from midpo_cli.modeling.generation import generate_answers

    picked = pick_gate_prompts(sets, per_kind)
    model, tok = policy.model, policy.tokenizer
    out: dict[str, Any] = {"model": label, "layers": list(model.routed), "prompts": []}
    if not picked:
        return out
    answers = {r["index"]: r for b in generate_answers(model, tok, [p["prompt"] for _, _, p in picked],
                                                        template=template, max_new_tokens=max_new_tokens,
                                                        max_prompt_length=max_prompt_length) for r in b}
    for i, (kind, pset, prompt) in enumerate(picked):
        r = answers[i]
        seq = r["prompt_ids"] + r["produced_ids"]
        p = len(r["prompt_ids"])
        mask = torch.zeros(1, len(seq), dtype=torch.long)
        mask[0, :p] = 1
        with torch.no_grad():
            model(torch.tensor([seq], device=model.device), prompt_mask=mask.to(model.device))
        cols = list(range(p - 1, p - 1 + len(r["produced_ids"])))
        layers = [g[0, cols, :].float().cpu() for g in model.gates()]  # each (K, 2)
        out["prompts"].append({
            "kind": kind, "prompt_set": pset.name, "index": prompt["row"], "prompt": prompt["prompt"],
            "category": prompt.get("category"), "is_harmful": prompt.get("is_harmful"), "answer": r["answer"],
            "tokens": [tok.decode([t]) if t not in (tok.eos_token_id,) else (tok.eos_token or "</s>")
                       for t in r["produced_ids"]],
            "safety": [[round(float(x), 4) for x in g[:, 0]] for g in layers],
            "helpfulness": [[round(float(x), 4) for x in g[:, 1]] for g in layers],
        })
    return out
