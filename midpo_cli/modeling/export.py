"""Ship a trained MidPO model to stacks that do not know midpo's routed layers (`midpo export`).

Three targets, each written atomically and checked before it is renamed into place (like every
midpo artifact: `engine.artifacts.save_verified`):

- **merged**: both experts folded into the base weights at fixed gates,
  W' = W + s_s·g_s·B_s A_s + s_h·g_h·B_h A_h, saved as a plain Hugging Face folder (safetensors).
  The routers are token-dependent, so no plain model equals the routed one; fixed gates are the one
  mix a single weight matrix can hold exactly. The fold is done in float64 and checked: the reloaded
  folder's logits must equal the MidPO model's at the same fixed gates.
- **adapters**: each expert as a standalone PEFT adapter folder (prompt-level routing outside midpo,
  e.g. vLLM multi-LoRA), checked against the MidPO model at gates (1, 0) and (0, 1).
- **midpo**: a self-contained MidPO folder with a model card, reloaded with `load_midpo` and checked
  against the source model with its routers as trained.

Each target gets a README.md model card (midpo_cli.evaluation.model_card); this module writes the weights.

Where the base lives decides what is copied. A hub name stays a reference (the base is public and
versioned there, as with any PEFT adapter). A local folder or `embedded:` base is copied into
`base/`: a local path does not exist on anyone else's machine, and the embedded base has no weight
files at all (it is drawn from a seed), so its weights are written out.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from midpo_cli import console
from midpo_cli.assets import is_embedded
from midpo_cli.engine.artifacts import FOLD_ULPS, save_verified
from midpo_cli.errors import ArtifactCheckError, InputError
from midpo_cli.evaluation.model_card import RECIPE_FILE, adapters_card, merged_card, midpo_card, run_recipe
from midpo_cli.io import atomic_write_json, atomic_write_text, check_output, read_json
from midpo_cli.manifest import MANIFEST, read_checked, read_manifest, stage_dir
from midpo_cli.modeling.midpo import CONFIG_FILE, EXPERTS, ROUTER_FILE, MidpoModel, load_midpo, read_midpo_config

PROBE_PROMPTS = ("How do I pick a lock?", "Give me a recipe for bread.")


# -- input checks ---------------------------------------------------------------------------------

def check_destination(to: str | Path) -> Path:
    """An export never overwrites: `--to` must not exist, or be an empty folder."""
    to = Path(to).expanduser()
    if to.is_symlink() or to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise InputError(f"--to {to}: already exists and is not an empty folder; choose a new path")
    return check_output(to, "--to", folder=True)  # a path under a file failed after the export's work


def midpo_config(folder: str | Path, what: str) -> dict[str, Any]:
    """The source's midpo_config.json, or a one-line error saying the export needs a MidPO folder."""
    folder = Path(folder).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        raise InputError(f"{folder}: not a MidPO model folder (no {CONFIG_FILE}); {what} needs one "
                         "(e.g. <run_dir>/router/model)")
    return read_midpo_config(folder)


def base_location(folder: Path, cfg: dict[str, Any]) -> tuple[str, str]:
    """(where the base is, kind): kind is `local` (a folder), `embedded` or `hub`."""
    base = str(folder / cfg["base_model"]) if cfg.get("base_model_relative") else str(cfg["base_model"])
    if is_embedded(base):
        return base, "embedded"
    if Path(base).expanduser().exists():
        return str(Path(base).expanduser().resolve()), "local"
    return base, "hub"


def trained_template(cfg: dict[str, Any], model: Any = None) -> str | None:
    """The prompt template a MidPO model was trained with, if anything recorded it."""
    from midpo_cli.data.template import RECORD_KEY, TEMPLATES, recorded_template

    for key in (RECORD_KEY, "template"):
        if cfg.get(key) in TEMPLATES:
            return str(cfg[key])
    config = getattr(model, "config", None)
    return recorded_template(config) if config is not None else None


# -- probes ---------------------------------------------------------------------------------------

def probe_batch(tokenizer: Any, device: torch.device) -> torch.Tensor:
    """(2, T) ids of two formatted prompts cut to the same length: real text, no padding to mask."""
    from midpo_cli.data.template import SAFE_RLHF

    ids = [tokenizer(SAFE_RLHF.format(prompt=p))["input_ids"] for p in PROBE_PROMPTS]
    width = min(len(x) for x in ids)
    return torch.tensor([x[:width] for x in ids], dtype=torch.long, device=device)


def midpo_logits(model: MidpoModel, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the routed model; the whole probe counts as prompt for routers that read it."""
    kwargs = {"prompt_mask": torch.ones_like(ids)} if model.state.needs_prompt and model.state.fixed is None else {}
    with torch.no_grad():
        return model(ids, **kwargs).logits.float().cpu()


def _dtype(name: str) -> torch.dtype:
    from midpo_cli.modeling.loading import torch_dtype

    return torch_dtype(name)


# -- folding ---------------------------------------------------------------------------------------

def fold_experts(model: MidpoModel, gates: tuple[float, float]) -> nn.Module:
    """Replace every routed linear by a plain nn.Linear holding W + Σ s·g·B A; return the plain HF model.

    The MidPO wrapper is consumed (it routes nothing afterwards). A folded weight that was shared with
    the input embeddings (a tied lm_head) gets its own copy and the config is untied, or loading the
    folder would tie the embeddings to the merged head again.
    """
    hf = model.model
    embeddings = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    shared = embeddings.weight if embeddings is not None else None
    for path, routed in list(model.routed.items()):
        base = routed.base
        weight = base.weight
        total = weight.detach().double()
        for name, gate in zip(EXPERTS, gates, strict=True):
            if gate:
                delta = routed.lora_B[name].weight.double() @ routed.lora_A[name].weight.double()
                total = total + (gate * routed.scaling[name]) * delta
        plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            plain.weight.copy_(total.to(weight.dtype))
            if base.bias is not None:
                plain.bias.copy_(base.bias)
        if shared is not None and weight is shared:
            _untie(hf)
        parent_path, _, child = path.rpartition(".")
        setattr(hf.get_submodule(parent_path) if parent_path else hf, child, plain)
    model.routed = {}
    return hf


def _untie(hf: nn.Module) -> None:
    for config in {id(c): c for c in (hf.config, getattr(hf.config, "get_text_config", lambda: None)())
                   if c is not None}.values():
        config.tie_word_embeddings = False
    console.log("export: the head was routed and tied to the embeddings; the merged model unties them")


# -- the three targets -------------------------------------------------------------------------------

def export_merged(source: str | Path, to: str | Path, gates: tuple[float, float], *, dtype: str = "fp32",
                  trust_remote_code: bool = False) -> dict[str, Any]:
    """Fold both experts at `gates` into the base and save a plain HF folder; verified by reloading it
    with plain `AutoModelForCausalLM` and comparing logits with the MidPO model at the same gates."""
    from transformers import AutoModelForCausalLM

    source, to = Path(source).expanduser(), check_destination(to)
    cfg = midpo_config(source, "--merged")
    model, tokenizer = load_midpo(source, dtype=dtype, fixed_gates=gates, trust_remote_code=trust_remote_code)
    template = trained_template(cfg, model)
    ids = probe_batch(tokenizer, model.device)
    reference = midpo_logits(model, ids)
    hf = fold_experts(model, gates)
    if template is not None:
        from midpo_cli.data.template import RECORD_KEY

        setattr(hf.config, RECORD_KEY, template)

    chat_template = checked_chat_template(tokenizer, template)

    def save(tmp: Path) -> None:
        from midpo_cli.modeling.loading import quiet_transformers

        with quiet_transformers():
            hf.save_pretrained(str(tmp))
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(str(tmp))
        atomic_write_text(tmp / "README.md", merged_card(source, cfg, gates, served_template(tokenizer, template)))

    def load(tmp: Path) -> nn.Module:
        from midpo_cli.modeling.loading import quiet_transformers, torch_dtype

        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch_dtype(dtype),
                                                        trust_remote_code=trust_remote_code).eval()

    # the fold rounds W + s·g·B A in `dtype` once more: the check allows that rounding (FOLD_ULPS)
    save_verified(save, to, load_fn=load, probe_fn=lambda m: m(ids.to(m.device)).logits,
                  reference=reference, dtype=_dtype(dtype), ulps=FOLD_ULPS)
    return {"target": "merged", "source": str(source), "to": str(to), "gates": list(gates), "dtype": dtype,
            "template": template, "routed_layers": len(cfg["target_modules"])}


def served_template(tokenizer: Any, template: str | None) -> str:
    """The prompt template an export serves with: the one the model recorded, else what `auto` resolves to."""
    from midpo_cli.data.template import resolve_template

    return template or resolve_template("auto", tokenizer)


def checked_chat_template(tokenizer: Any, template: str | None) -> str:
    """The chat template an export carries (midpo_cli.data.template.serving_chat_template), checked on the probe
    prompts: rendered and encoded as a chat API does (Hugging Face's `apply_chat_template`, no special tokens added),
    a user message must give exactly the ids training saw; otherwise nothing is written."""
    from midpo_cli.data.template import serving_chat_template
    from midpo_cli.data.tokenize import encode_prompts

    used = served_template(tokenizer, template)
    chat = serving_chat_template(tokenizer, used)
    for prompt in PROBE_PROMPTS:
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], chat_template=chat,
                                            add_generation_prompt=True, tokenize=True)
        got = list(out["input_ids"] if isinstance(out, Mapping) else out)
        want = encode_prompts([prompt], tokenizer, used)[0][0]
        if got != want:
            raise ArtifactCheckError(f"the chat template for template {used!r} encodes {prompt!r} as {got[:8]}…, "
                                     f"training as {want[:8]}…: no export would answer as the model was trained")
    return chat


def write_base(dst: Path, base: str, kind: str, tokenizer: Any, *, trust_remote_code: bool = False) -> None:
    """Copy a local base folder as it is, or write out the weights of one that has none on disk."""
    from midpo_cli.modeling.loading import has_weights, load_causal_lm, quiet_transformers

    if kind == "local" and has_weights(base):
        shutil.copytree(base, dst)
        for stale in ("README.md",):  # a base folder's card would describe another model
            (dst / stale).unlink(missing_ok=True)
    else:  # embedded, or a config-only folder: load_midpo drew its weights from seed 0, so do we
        model = load_causal_lm(base, trust_remote_code=trust_remote_code)
        with quiet_transformers():
            model.save_pretrained(str(dst))
        del model
    if not (dst / "tokenizer_config.json").is_file() and tokenizer is not None:
        tokenizer.save_pretrained(str(dst))


def export_adapters(source: str | Path, to: str | Path, *, dtype: str = "fp32",
                    trust_remote_code: bool = False) -> dict[str, Any]:
    """Each expert as a standalone PEFT adapter folder (+ `base/` when the base is not on the hub), the chat template
    training's prompts need, and for a probe switch the classifier that picks the expert (midpo_cli.modeling
    .export_switch)."""
    from midpo_cli.modeling.export_switch import ROUTER_DIR, check_router, write_router

    source, to = Path(source).expanduser(), check_destination(to)
    cfg = midpo_config(source, "--adapters")
    base, kind = base_location(source, cfg)
    model, tokenizer = load_midpo(source, dtype=dtype, trust_remote_code=trust_remote_code)
    template = served_template(tokenizer, trained_template(cfg, model))
    chat_template = checked_chat_template(tokenizer, template)
    ids = probe_batch(tokenizer, model.device)
    references = {}
    for name, gates in (("safety", (1.0, 0.0)), ("helpfulness", (0.0, 1.0))):
        with model.fixed_gates(*gates):
            references[name] = midpo_logits(model, ids)
    switch_p = switch_probabilities(model, tokenizer, template)
    del model
    base_ref = base if kind == "hub" else PORTABLE_BASE  # never an absolute path of this machine

    def save(tmp: Path) -> None:
        ranks = []
        for name in EXPERTS:
            shutil.copytree(adapter_folder(source, cfg, name), tmp / name)
            adapter_cfg = read_json(tmp / name / "adapter_config.json")
            ranks.append(int(adapter_cfg.get("r", 8)))
            adapter_cfg["base_model_name_or_path"] = base_ref
            atomic_write_json(tmp / name / "adapter_config.json", adapter_cfg)
        if kind != "hub":
            write_base(tmp / "base", base, kind, tokenizer, trust_remote_code=trust_remote_code)
        atomic_write_text(tmp / CHAT_TEMPLATE_FILE, chat_template)
        if switch_p is not None:
            write_router(tmp / ROUTER_DIR, source, cfg, template, base if kind == "hub" else "../base", kind != "hub")
        atomic_write_text(tmp / "README.md", adapters_card(source, base, kind, template, rank=max(ranks),
                                                           switch=cfg.get("switch")))

    def load(tmp: Path) -> nn.Module:
        peft = _peft_experts(tmp, base if kind == "hub" else str(tmp / "base"), dtype, trust_remote_code)
        if switch_p is not None:
            check_router(tmp / ROUTER_DIR, peft, tokenizer, list(PROBE_PROMPTS), switch_p)
        return peft

    save_verified(save, to, load_fn=load, probe_fn=lambda peft: _peft_probe(peft, ids),
                  reference=torch.stack(list(references.values())), dtype=_dtype(dtype))
    return {"target": "adapters", "source": str(source), "to": str(to), "base": base_ref if kind != "hub" else base,
            "base_copied": kind != "hub", "adapters": {n: str(to / n) for n in EXPERTS}, "template": template,
            "chat_template": str(to / CHAT_TEMPLATE_FILE),
            "router": str(to / ROUTER_DIR) if switch_p is not None else None}


CHAT_TEMPLATE_FILE = "chat_template.jinja"  # beside the adapters: `vllm serve … --chat-template` reads it


def switch_probabilities(model: MidpoModel, tokenizer: Any, template: str) -> list[float] | None:
    """midpo's p(harmful) of the probe prompts for a probe switch (what the exported router must give), else None."""
    if model.switch is None:
        return None
    from midpo_cli.modeling.switch import prompt_probabilities

    return prompt_probabilities(model, model.switch, tokenizer, template, list(PROBE_PROMPTS))


PORTABLE_BASE = "./base"  # adapters' base_model_name_or_path for a copied base: relative to the export folder


def adapter_folder(source: Path, cfg: dict[str, Any], name: str) -> Path:
    ref = Path(cfg["adapters"][name])
    return ref if ref.is_absolute() else source / ref


def _peft_experts(tmp: Path, base: str, dtype: str, trust_remote_code: bool) -> nn.Module:
    """The exported adapters on the exported (or hub) base, through peft alone: what a user will run."""
    from peft import PeftModel

    from midpo_cli.modeling.loading import load_causal_lm

    plain = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    peft = PeftModel.from_pretrained(plain, str(tmp / "safety"), adapter_name="safety")
    peft.load_adapter(str(tmp / "helpfulness"), adapter_name="helpfulness")
    return peft.eval()


def _peft_probe(peft: Any, ids: torch.Tensor) -> torch.Tensor:
    out = []
    for name in EXPERTS:
        peft.set_adapter(name)
        out.append(peft(ids.to(peft.device)).logits.float().cpu())
    return torch.stack(out)


def export_midpo(source: str | Path, to: str | Path, *, run_dir: str | Path | None = None,
                 trust_remote_code: bool = False) -> dict[str, Any]:
    """A self-contained MidPO folder (base, adapters, routers, tokenizer, config) with a model card."""
    source, to = Path(source).expanduser(), check_destination(to)
    cfg = midpo_config(source, "--midpo")
    run = find_run_dir(source, run_dir)  # before any model loads: a wrong --run-dir is bad input
    base, kind = base_location(source, cfg)
    model, tokenizer = load_midpo(source, trust_remote_code=trust_remote_code)
    template = trained_template(cfg, model)
    ids = probe_batch(tokenizer, model.device)
    reference = midpo_logits(model, ids)
    router_params = sum(p.numel() for p in model.router_parameters())
    del model
    inside = kind == "local" and Path(base).is_relative_to(source.resolve())

    def save(tmp: Path) -> None:
        for item in source.iterdir():
            if item.name == "README.md" or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        new = {**cfg, "adapters": {n: f"adapters/{n}" for n in EXPERTS}, "adapters_copied": True}
        for name in EXPERTS:
            if not (tmp / "adapters" / name).is_dir():
                shutil.copytree(adapter_folder(source, cfg, name), tmp / "adapters" / name)
        if kind == "hub":
            new.update(base_model=base, base_model_relative=False)
        elif not inside:
            write_base(tmp / "base", base, kind, tokenizer, trust_remote_code=trust_remote_code)
            new.update(base_model="base", base_model_relative=True)
        if template is not None:
            new["template"] = template
        atomic_write_json(tmp / CONFIG_FILE, new)
        lora = {n: read_json(tmp / "adapters" / n / "adapter_config.json") for n in EXPERTS}
        card = midpo_card(new, name=to.name, base=base, kind=kind, template=template, run=run,
                          router_params=router_params, adapters=lora,
                          run_model=run is None or run_role(source, run) != "switch")
        atomic_write_text(tmp / "README.md", card)
        if run_recipe(run):
            atomic_write_text(tmp / RECIPE_FILE, run_recipe(run))

    save_verified(save, to, load_fn=lambda tmp: load_midpo(tmp, trust_remote_code=trust_remote_code)[0],
                  probe_fn=lambda m: midpo_logits(m, ids), reference=reference)
    return {"target": "midpo", "source": str(source), "to": str(to), "base": base if kind == "hub" else "base",
            "base_copied": kind != "hub", "template": template, "run_dir": str(run) if run else None}


def check_same_router(source: Path, run: Path) -> None:
    """--run-dir must be the run `source` came from (its router stage's model or switch, by path or by identical
    weights): the card copies that run's settings, and another run's would describe a different model."""
    manifest, problem = read_checked(stage_dir(run, "router") / MANIFEST)
    model = (manifest or {}).get("outputs", {}).get("model") if isinstance((manifest or {}).get("outputs"), dict) \
        else None
    if not isinstance(model, str):
        raise InputError(f"--run-dir {run}: {problem or 'no finished router stage (router/manifest.json)'}; the card "
                         "could not say which run made the model")
    if run_role(source, run) is None:
        trained = Path(model) if Path(model).is_absolute() else run / model
        raise InputError(f"--run-dir {run}: its router model is {trained}, not {source} (their {ROUTER_FILE} "
                         "differ); give the run the model came from, or leave --run-dir out")


def run_role(source: Path, run: Path) -> str | None:
    """Which output of the run's router stage `source` is: `model` (what the run's verdict judged) or `switch` (a
    probe switch saved beside a learned router); by path, else by identical router and switch weights."""
    manifest = read_manifest(stage_dir(run, "router")) or {}
    outputs = manifest.get("outputs") if isinstance(manifest.get("outputs"), dict) else {}
    for role in ("model", "switch"):
        ref = outputs.get(role)
        if isinstance(ref, str) and same_model(Path(ref) if Path(ref).is_absolute() else run / ref, source):
            return role
    return None


def same_model(trained: Path, source: Path) -> bool:
    if trained.resolve() == source.resolve():
        return True
    from midpo_cli.modeling.switch import SWITCH_FILE

    files = [(trained / name, source / name) for name in (ROUTER_FILE, SWITCH_FILE)]
    return (trained / ROUTER_FILE).is_file() and all(
        (a.is_file() == b.is_file()) and (not a.is_file() or a.read_bytes() == b.read_bytes()) for a, b in files)


def find_run_dir(source: Path, run_dir: str | Path | None) -> Path | None:
    """The run the model came from: given, or `<run_dir>/router/model` (or `/switch`) recognised by its manifest."""
    if run_dir is not None:
        run = Path(run_dir).expanduser()
        if not run.is_dir():
            raise InputError(f"--run-dir {run}: no such folder")
        check_same_router(source, run)
        return run
    stage = source.resolve().parent
    manifest = read_manifest(stage)
    return stage.parent if manifest and manifest.get("stage") == "router" else None
