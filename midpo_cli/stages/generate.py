"""Stage `generate` and `midpo generate`: answers of one or more models on one or more prompt sets.

Output: a JSONL file, one row per (model, prompt set, prompt) — see ROW_FIELDS. The file is
**resumable**: rows are keyed by (model, prompt_set, index), rows already present are skipped on a
re-run, and each finished batch is appended in one write followed by fsync (the file's format, reader
and appender: midpo_cli.evaluation.answers), so a crash loses at most the batch being written. Every
row records what wrote it: the generation settings (`gen`, and their id `gen_id`), the template, and the
model (`model_spec`, and `model_id`: a hash of the model folder's content plus its fixed gates and safety
dial). A re-run refuses to mix other settings or another model under the same label into the file, and a
file that is not an answers file is refused before anything is written to it. Ctrl-C stops after the
batch being written and says how many answers are kept; the same command resumes.

Models (`--model [LABEL=]SPEC`): a base causal LM, a PEFT adapter folder or a MidPO model folder
(midpo_cli.modeling.policy). The row's `model` is LABEL (or SPEC); fixed gates add `@gates=G_S,G_H`, a
safety dial `@dial=+B` (midpo_cli.evaluation.labels). Prompt sets (`--prompts [NAME=]SPEC`): a preset
name, an embedded: set, a hub dataset with a column mapping, or a local JSONL/CSV/TXT file
(midpo_cli.data.prompt_sets.load_prompt_set); empty prompts are skipped and counted.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli import console
from midpo_cli.data.prompt_sets import PromptSet, load_prompt_set, split_label
from midpo_cli.errors import InputError, Interrupted
from midpo_cli.evaluation.answers import append_rows, read_answers
from midpo_cli.io import check_output
from midpo_cli.manifest import fingerprint, write_manifest
from midpo_cli.modeling.policy import Policy, load_policy
from midpo_cli.recipe import GenerationSettings

ROW_FIELDS = ("model", "model_spec", "model_id", "fixed_gates", "safety_bias", "prompt_set", "index", "prompt",
              "answer", "category", "is_harmful", "prompt_tokens", "answer_tokens", "truncated", "finished", "gates",
              "template", "gen", "gen_id")
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
    from midpo_cli.evaluation.labels import blend_label

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
    from midpo_cli.evaluation.labels import blend_label, dial_label

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
    settings: dict[str, Any]  # what each row records: the template and `generation` but its batch size
    gen_id: str
    generation: GenerationSettings
    stats: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)


def generate_to_file(
    models: Sequence[ModelEntry],
    prompt_sets: Sequence[PromptSet],
    output: str | Path,
    settings: GenerationSettings | None = None,
    *,
    template: str = "safe-rlhf",
    loader: Callable[[ModelEntry], Any] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Generate every missing (model, prompt set, prompt) row into `output`; return run statistics.

    `settings` (default: GenerationSettings()) with any of them changed by name (`max_new_tokens=8`); all
    but the batch size are recorded in each row (`gen`) and must match the rows already in the file.

    `loader(entry) -> Policy` defaults to `load_policy(entry.spec, gates=..., safety_bias=...)`; a model
    whose rows all exist is not loaded at all, and consecutive entries of one MidPO folder (a gate or
    dial sweep) share one loaded model, switched by `set_fixed_gates` / `set_safety_bias`.
    """
    output = check_output(output, "--output")  # a FIFO blocked the resume's read forever
    output.parent.mkdir(parents=True, exist_ok=True)
    generation = (settings or GenerationSettings()).but(**changes)
    with output_lock(output):
        return _generate_locked(models, prompt_sets, output, generation, template=template, loader=loader)


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the answers file for the whole run: two `generate`s on one file both appended
    the same rows (392 of 812 duplicated). A file this call created and left empty is removed again."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{path} is being written by another `midpo generate` right now; wait for it to "
                             "finish (then rerun to resume) or give another --output") from None
        yield
    finally:
        if not existed and os.fstat(fd).st_size == 0:
            path.unlink(missing_ok=True)
        os.close(fd)


def _generate_locked(models: Sequence[ModelEntry], prompt_sets: Sequence[PromptSet], output: Path,
                     generation: GenerationSettings, *, template: str,
                     loader: Callable[[ModelEntry], Any] | None) -> dict[str, Any]:
    recorded = {"template": template, **generation.model_dump(exclude={"batch_size"})}
    existing = read_answers(output)
    run = _Run(output, recorded, _gen_id(recorded), generation, {})
    other = next((r for r in existing if r.get("gen_id") != run.gen_id), None)
    if other is not None:
        changed = _settings_changed(other, recorded)
        raise InputError(f"{output} holds answers generated with other settings ({changed}); use another --output, "
                         "the same settings, or delete the file")
    ids = _check_models(models, existing, output)
    done = {(r["model"], r["prompt_set"], int(r["index"])) for r in existing}
    todo = {(m.label, s.name): [p for p in s.prompts if (m.label, s.name, p["row"]) not in done]
            if m.sets is None or s.name in m.sets else [] for m in models for s in prompt_sets}
    total = sum(len(v) for v in todo.values())
    run.stats = {"output": str(output), "gen_id": run.gen_id, "rows_existing": len(existing), "rows_written": 0,
                 "answer_tokens": 0, "truncated_prompts": 0, "prompt_sets": {s.name: s.counts for s in prompt_sets}}
    loader = loader or (lambda e: load_policy(e.spec, gates=e.gates, safety_bias=e.safety_bias))
    try:
        _generate_all(models, prompt_sets, todo, total, ids, loader, run)
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


def _settings_changed(row: dict[str, Any], recorded: dict[str, Any]) -> str:
    """`key was → now` for each setting (the template included: rows keep it apart from `gen`) that differs between
    an existing row and this run; the template was left out of the message, so a resume that only changed it
    was refused without saying why."""
    was = {"template": row.get("template"), **(row.get("gen") or {})} if isinstance(row.get("gen"), dict) else None
    if was is None:
        return f"gen_id {row.get('gen_id')!r}, now {_gen_id(recorded)!r}"
    return "; ".join(f"{k} {was.get(k)!r} → {recorded.get(k)!r}" for k in sorted(set(was) | set(recorded))
                     if was.get(k) != recorded.get(k)) or "the same settings, another gen_id"


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
                  loader: Callable[[ModelEntry], Any], run: _Run) -> None:
    cached: tuple[str, Any, Any] | None = None  # (spec, policy, its routing state as loaded)
    try:
        with console.progress("generate", total, unit="answers") as bar:
            for entry in models:
                if not any(todo[(entry.label, s.name)] for s in prompt_sets):
                    continue
                if cached is not None and (cached[0] != entry.spec or cached[1].kind != "midpo"):
                    _restore(cached)
                    cached = None
                    gc.collect()
                if cached is None:
                    policy = loader(entry)
                    cached = (entry.spec, policy, _neutral_state(policy, entry))
                policy = cached[1]
                if policy.kind == "midpo":  # one loaded model serves every blend and dial of its folder
                    policy.model.set_fixed_gates(entry.gates if entry.gates is not None else cached[2][0])
                    policy.model.set_safety_bias(entry.safety_bias)
                _generate_entry(entry, policy, prompt_sets, todo, ids, run, bar)
            bar.update(description="generate")  # the end line counts every model's answers
    finally:
        if cached is not None:
            _restore(cached)


def _neutral_state(policy: Any, entry: ModelEntry) -> tuple[Any, float]:
    """(fixed gates, safety bias) the loaded model has apart from this entry's own routing: what every later
    entry of the same folder starts from, and what it is left with. A loader applies the entry's gates or dial
    as it loads (load_policy does): a sweep whose first entry is a blend must not hand its gates to the dial
    settings after it (they answered as that blend when another model sat between the router and its sweep)."""
    state = getattr(policy.model, "state", None)
    fixed, bias = getattr(state, "fixed", None), getattr(state, "safety_bias", 0.0)
    return (None if entry.gates is not None else fixed), (0.0 if entry.safety_bias else bias)


def _restore(cached: tuple[str, Any, Any]) -> None:
    """Leave a (possibly caller-owned) MidPO model with the gates and dial it was loaded with."""
    if cached[1].kind == "midpo":
        cached[1].model.set_fixed_gates(cached[2][0])
        cached[1].model.set_safety_bias(cached[2][1])


def _generate_entry(entry: ModelEntry, policy: Any, prompt_sets: Sequence[PromptSet],
                    todo: dict[tuple[str, str], list[dict[str, Any]]], ids: dict[str, str], run: _Run,
                    bar: console.Bar) -> None:
    from midpo_cli.modeling.generation import generate_answers

    for pset in prompt_sets:
        pending = todo[(entry.label, pset.name)]
        bar.update(description=f"generate {entry.label} · {pset.name}")
        batches = generate_answers(policy.model, policy.tokenizer, [p["prompt"] for p in pending], run.generation,
                                   template=run.settings["template"])
        for batch in batches:
            rows = [_answer_row(entry, pset, pending[b["index"]], b, run, ids[entry.label]) for b in batch]
            append_rows(run.output, rows)
            _count(run, batch, len(rows))
            elapsed = max(time.perf_counter() - run.started, 1e-9)
            bar.advance(len(rows), info=f"{run.stats['answer_tokens'] / elapsed:.0f} tok/s")


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


def log_counts(prompt_sets: Sequence[PromptSet]) -> None:
    for s in prompt_sets:
        console.log(f"prompts {s.name}: {console.counts_text({**s.counts, 'kept': len(s.prompts)})}")


# ---------------------------------------------------------------------------------------------- pipeline stage


def run(ctx: Any) -> None:
    """The pipeline's generate stage: stages.generate.models, the gate and dial sweeps, the gate maps."""
    from midpo_cli.io import atomic_write_json
    from midpo_cli.stages.kit.dev_set import dev_set_name
    from midpo_cli.stages.kit.inputs import baseline_models, model_ref, policy_ref, tokenizer_ref

    recipe, cfg = ctx.recipe, ctx.recipe.stages.generate
    refs = {"base": lambda: policy_ref(ctx), "safety_expert": lambda: str(ctx.input_path("safety_expert", "adapter")),
            "helpfulness_expert": lambda: str(ctx.input_path("helpfulness_expert", "adapter")),
            "midpo": lambda: model_ref(ctx, "router"), "probe_switch": lambda: model_ref(ctx, "router", "switch")}
    sets = [load_prompt_set(p, recipe.data.columns or None) for p in recipe.prompt_sets()]
    log_counts(sets)
    dev = dev_set_name(recipe)
    entries = stage_entries(cfg, refs, sets, dev)
    entries += [ModelEntry(label, spec, sets=only)  # stages.baselines, beside MidPO
                for label, spec, only in baseline_models(ctx, _sweep_sets(sets, cfg.sweep_prompts))]

    def loader(e: ModelEntry) -> Policy:
        tok = tokenizer_ref(recipe, e.spec) if e.spec == policy_ref(ctx) else None
        return load_policy(e.spec, gates=e.gates, safety_bias=e.safety_bias, seed=recipe.train.seed, tokenizer=tok,
                           trust_remote_code=recipe.trust_remote_code)

    out = ctx.folder / "answers.jsonl"
    stats = generate_to_file(entries, sets, out, cfg, template=recipe.data.template, loader=loader)
    record = ctx.record()
    record.outputs = {"answers": ctx.rel(out)}
    if cfg.gate_maps and "midpo" in cfg.models:
        router = next(e for e in entries if e.label == "midpo")
        maps = gate_maps(loader(router), sets, per_kind=cfg.gate_maps, label="midpo", template=recipe.data.template,
                         max_new_tokens=cfg.max_new_tokens, max_prompt_length=cfg.max_prompt_length, dev=dev)
        if maps["prompts"]:
            atomic_write_json(ctx.folder / "gate_maps.json", maps)
            record.outputs["gate_maps"] = ctx.rel(ctx.folder / "gate_maps.json")
    record.metrics = {k: stats[k] for k in ("rows_total", "truncated_prompts", "answers_per_s", "tokens_per_s")}
    record.extra = {"prompt_sets": stats["prompt_sets"], "models": {e.label: e.spec for e in entries}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["generate"])


def is_dev(name: str, dev: str | None) -> bool:
    """The set is the recipe's dev set (`dev`: its name); without a recipe, the one named *dev-prompts."""
    return name == dev if dev is not None else name.endswith("dev-prompts")


def stage_entries(cfg: Any, refs: dict[str, Callable[[], str]], sets: Sequence[PromptSet],
                  dev: str | None = None) -> list[ModelEntry]:
    """The stage's models: stages.generate.models, then the fixed blends and the dial settings of midpo.

    Blends answer every sweep set (the dev set chooses the best one, the others report it); dials skip
    the dev set, since the dial curve is drawn on the reported sets only.
    """
    from midpo_cli.evaluation.labels import blend_label, dial_label

    entries = [ModelEntry(name, refs[name](), safety_bias=cfg.safety_bias if name == "midpo" else 0.0)
               for name in cfg.models]
    sweep_sets = _sweep_sets(sets, cfg.sweep_prompts)
    midpo = refs["midpo"]() if cfg.gate_blends() or cfg.dial_biases() else ""
    entries += [ModelEntry(blend_label("midpo", g), midpo, g, sets=sweep_sets) for g in cfg.gate_blends()]
    reported = tuple(s.name for s in sets if not is_dev(s.name, dev)
                     and (sweep_sets is None or s.name in sweep_sets))
    dial_sets = reported or sweep_sets
    entries += [ModelEntry(dial_label("midpo", b), midpo, safety_bias=b, sets=dial_sets) for b in cfg.dial_biases()]
    return entries


def _sweep_sets(sets: Sequence[PromptSet], wanted: Sequence[str] | None) -> tuple[str, ...] | None:
    """Names of the prompt sets the sweeps answer (stages.generate.sweep_prompts: names or specs)."""
    if wanted is None:
        return None
    names = []
    for w in wanted:
        hit = [s.name for s in sets if w in (s.name, s.spec) or s.name.endswith(("/" + w, ":" + w))]
        if not hit:
            raise InputError(f"stages.generate.sweep_prompts: {w!r} is not one of the prompt sets generate answers "
                             f"({', '.join(s.name for s in sets)})")
        names += hit
    return tuple(names)


# ---------------------------------------------------------------------------------------------- gate maps


def pick_gate_prompts(sets: Sequence[PromptSet], per_kind: int,
                      dev: str | None = None) -> list[tuple[str, PromptSet, dict[str, Any]]]:
    """(kind, set, prompt) for a few harmful, benign and trap prompts, from the first evaluation set.

    Traps come from a set named `*traps` (half harmful, half benign where it has both); harmful and
    benign prompts from the first other set that is not a dev set (the dev set if it is all there is).
    """
    traps = [s for s in sets if s.name.endswith("traps")]
    plain = [s for s in sets if s not in traps and not is_dev(s.name, dev)] or \
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
              max_new_tokens: int, max_prompt_length: int | None = None, dev: str | None = None) -> dict[str, Any]:
    """Per routed layer × answer token gates of a MidPO model on a few prompts (the report's heatmaps).

    The answer is generated greedily, then teacher-forced through the model; column k holds the gates
    at the position whose output is answer token k (the same steps a row's mean `gates` averages), and
    is labelled with that token.
    """
    import torch

    from midpo_cli.modeling.generation import generate_answers

    picked = pick_gate_prompts(sets, per_kind, dev)
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
