"""The README.md model cards of `midpo export`: what an exported folder is, how to use it, and what the run that
made it measured.

Three cards, one per export target: `midpo_card` (a self-contained MidPO folder: the run's verdict first, then its
measurements, then what the folder holds and how it was trained), `merged_card` (both experts folded at fixed gates)
and `adapters_card` (each expert as a PEFT adapter). The run directory is read through its stage folders and
manifests (`midpo_cli.manifest`); the stage settings go beside the card, in `RECIPE_FILE` (`run_recipe`), so the
card stays short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError
from midpo_cli.evaluation.formatting import logged_value
from midpo_cli.evaluation.labels import is_sweep_label, router_kind
from midpo_cli.evaluation.probe_switch import switch_lines
from midpo_cli.evaluation.verdict import markdown, run_verdicts
from midpo_cli.io import read_json
from midpo_cli.manifest import read_manifest, stage_dir

USE_SNIPPET = """## Use

```bash
pip install "midpo-cli[serve]"          # then, from this folder's parent:
midpo chat {name}                       # talk to it; answers coloured by the safety gate, /dial B
echo "How do I bake bread?" | midpo chat {name} --json
midpo serve {name}                      # an OpenAI-compatible server: http://127.0.0.1:8000/v1
midpo export {name} --merged --gates 0.5,0.5 --to {name}-merged   # a plain transformers/vLLM/TGI folder
```

```python
from midpo_cli import load_midpo
model, tokenizer = load_midpo("{name}")          # {kind}
model.set_safety_bias(1.0)                         # the safety dial: > 0 leans safe, < 0 leans helpful
```
"""


def midpo_card(cfg: dict[str, Any], *, name: str, base: str, kind: str, template: str | None, run: Path | None,
               router_params: int, adapters: dict[str, dict[str, Any]], run_model: bool = True) -> str:
    """README.md of an exported MidPO folder: what it is, how it was trained, what it measured. `run_model`: the
    folder is the model the run's verdict judged (its router stage's `model`); a probe switch saved beside a learned
    router is not, and its card gives the switch's numbers, not the router's."""
    router, switch = cfg["router"], cfg.get("switch")
    routing = router_kind(switch, cfg.get("fixed_gates"), cfg.get("router"))
    front = ["---", "library_name: midpo", "tags: [midpo, lora, dpo, safety, helpfulness]"]
    if kind == "hub":
        front.append(f"base_model: {base}")
    lines = [*front, "---", "", "# MidPO model", "", *(_verdict_lines(run) if run_model else []),
             _what_it_is(cfg, routing), "",
             *(_run_sections(run) if run_model else _switch_sections(run)), "",
             USE_SNIPPET.format(name=name, kind=routing), "",
             "## Contents", "", "| path | what |", "|---|---|",
             f"| `base/` | the base model ({'copied from ' + base if kind == 'local' else base}) |" if kind != "hub"
             else f"| (hub) `{base}` | the base model, referenced |",
             "| `adapters/safety/`, `adapters/helpfulness/` | the experts (PEFT LoRA folders) |",
             *([f"| `{switch.get('file', 'switch.safetensors')}` | the probe switch (mean, std, weight, bias) |"]
               if switch else []),
             f"| `router.safetensors` | the routers ({router_params:,} parameters)"
             + (", not used: the switch sets the gates |" if switch else " |"),
             "| `midpo_config.json` | routed modules, LoRA scalings, router settings |", "",
             "## How it was trained", "",
             f"- prompt template: `{template}`" if template else "- prompt template: not recorded (midpo resolves "
             "`auto`: the tokenizer's chat template if it has one, else safe-rlhf)",
             f"- routed modules: `{cfg['target_modules'][0]}` … ({len(cfg['target_modules'])})",
             f"- gates: {routing}" + ("" if switch or cfg.get("fixed_gates") else
                                      f"; granularity `{router['granularity']}`, input `{router['input']}`, hidden "
                                      f"`{router['hidden']}`, initial gates {router['init_gates']}")]
    for expert, a in adapters.items():
        lines.append(f"- {expert} expert: LoRA r={a.get('r')}, alpha={a.get('lora_alpha')}, "
                     f"targets {a.get('target_modules')}, scaling {cfg['scaling'][expert]}")
    if run is not None and run_recipe(run):
        lines += ["", f"The settings of every stage of run `{run.name}` are in `{RECIPE_FILE}`."]
    return "\n".join(lines) + "\n"


def _what_it_is(cfg: dict[str, Any], routing: str) -> str:
    """One paragraph: the experts, and how this folder's gates are set."""
    layers = len(cfg["target_modules"])
    experts = ("A base causal LM with two LoRA experts — **safety** and **helpfulness**, each trained with SPE-DPO "
               "(DPO whose margin comes from a cost or reward model) — ")
    mix = "`y = W h + s_s·g_s·B_s A_s h + s_h·g_h·B_h A_h h`"
    if cfg.get("fixed_gates"):
        return experts + f"mixed at fixed gates in every one of {layers} layers: {mix}, {routing}."
    switch = cfg.get("switch")
    if switch:
        threshold = float(switch.get("threshold", 0.5))
        how = (f"it sends the prompt to the safety expert, gates (1, 0), when p ≥ {threshold:.4g}, else to the "
               "helpfulness expert, (0, 1)" if switch.get("mode", "hard") == "hard" else "the gates are (p, 1 − p)")
        return experts + (f"chosen per prompt by a **probe switch**: a logistic probe on the prompt's mean input of "
                          f"the {layers} routed layers (the base alone) gives p(harmful), and {how}, held for the "
                          f"whole answer: {mix}. The learned routers are not used.")
    return experts + (f"mixed inside the base by small learned per-layer routers: {mix}, with gates g in (0, 1) per "
                      f"token and routed layer ({layers} layers).")


def _switch_sections(run: Path | None) -> list[str]:
    """A probe switch saved beside a learned router: its own numbers (the router stage's threshold choice, the
    score stage's switch-against-router lines); the run's verdict and router metrics are the learned router's."""
    info = ((read_manifest(stage_dir(run, "router")) or {}).get("probe_switch") if run is not None else None) or {}
    lines = ["## The probe switch", ""]
    if info:
        lines.append(f"- fit on {info.get('fit_on_prompts')} prompts, {info.get('fit_on_harmful')} of them harmful "
                     f"(`switch_prompts: {info.get('fit_on')}`)")
    if "threshold" in info:
        lines.append(f"- threshold {logged_value(info['threshold'])} chosen on the dev prompts `{info.get('prompts')}` "
                     f"({info.get('judged_by')}): dev score {logged_value(info.get('dev_score'))}")
    summary = stage_dir(run, "score") / "summary.json" if run is not None else None
    if summary is not None and summary.is_file():
        lines += [f"- {line}" for line in switch_lines(read_json(summary).get("routing") or {})]
    if len(lines) == 2:
        lines.append("No run directory with the switch's measurements was found next to this model.")
    return lines


def _verdict_lines(run: Path | None) -> list[str]:
    """The run's computed verdict (midpo_cli.evaluation.verdict) first: whether the router earned its place."""
    items = run_verdicts(run) if run is not None else None
    return markdown(items) if items else []


def _run_sections(run: Path | None) -> list[str]:
    """The toy/score summary and the router's last metrics, read from the run directory if there is one (the
    results come first: the stage settings are a separate file, `run_recipe`)."""
    if run is None:
        return ["## Evaluation", "", "No run directory was found next to this model, so no measurements are "
                "included; `midpo generate` + `midpo score` (or `--run-dir`) add them."]
    lines = []
    metrics = _router_metrics(run)
    if metrics:
        lines += ["Router training, last logged values:", "", *metrics, ""]
    summary = stage_dir(run, "score") / "summary.json"
    if not summary.is_file():
        return [*lines, "## Evaluation", "", f"No `score/summary.json` in `{run.name}` yet."]
    data = read_json(summary)
    if not isinstance(data, dict):
        raise InputError(f"{summary}: holds a JSON {type(data).__name__}, not an object; the card reads the run's "
                         "results from it: re-run the score stage, or export with --run-dir of another run")
    return [*lines, *_toy_lines(data.get("toy") or []), *_score_lines(data.get("groups") or [])]


RECIPE_FILE = "training-recipe.yaml"
TRAINED_STAGES = ("sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "rank", "router")


def run_recipe(run: Path | None) -> str:
    """Each trained stage's resolved `config.yaml` of the run, one YAML document ('' when there is none)."""
    parts = []
    for stage in TRAINED_STAGES if run is not None else ():
        path = stage_dir(run, stage) / "config.yaml"
        if path.is_file():
            body = "\n".join("  " + line for line in path.read_text(encoding="utf-8").rstrip().splitlines())
            parts.append(f"{stage}:\n{body}")
    return f"# stage settings of run {run.name} (each stage's resolved config.yaml)\n" + "\n".join(parts) + "\n" \
        if parts else ""


def _router_metrics(run: Path) -> list[str]:
    """The router stage's last logged metrics (its manifest's), one bullet each; none before it finished."""
    metrics = (read_manifest(stage_dir(run, "router")) or {}).get("metrics")
    if not isinstance(metrics, dict):
        return []
    return [f"- {key}: {logged_value(value)}" for key, value in metrics.items() if isinstance(value, (int, float, str))]


def _toy_lines(toy: list[dict[str, Any]]) -> list[str]:
    if not toy:
        return []
    intro = ["## Evaluation: the toy world (ground-truth judge)", "",
             "The measured trade-off: share of harmful prompts answered safely against share of benign "
             "prompts answered helpfully, per model (fixed-gate mixes are `@gates=g_s,g_h`).", ""]
    head = ["| model | prompts | harmful answered safely | benign answered helpfully | toy score | mean g_s harmful "
            "| mean g_s benign |", "|---|---|---|---|---|---|---|"]
    keys = ("harmful_safe", "benign_helpful", "toy_score", "gate_safety_harmful", "gate_safety_benign")
    rows = [(str(e.get("model")), f"| {e.get('model')} | {e.get('prompt_set')} | "
             + " | ".join(logged_value(e.get(k)) for k in keys) + " |")
            for e in sorted(toy, key=lambda e: -(e.get("toy_score") or 0.0))]
    return _folded_table(intro, head, rows)


def _score_lines(groups: list[dict[str, Any]]) -> list[str]:
    if not groups:
        return []
    cols = ("reward", "cost", "harmless_rate", "refusal_rate_harmful", "refusal_rate_benign")
    intro = ["## Evaluation: score models", "", "Means over the prompt set (reward: helpfulness, higher is better; "
             "cost: harm, lower is better).", ""]
    head = ["| model | prompts | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows = [(str(g.get("model")), f"| {g.get('model')} | {g.get('prompt_set')} | "
             + " | ".join(logged_value(((g.get("metrics") or {}).get(c) or {}).get("mean")) for c in cols) + " |")
            for g in groups]
    return _folded_table(intro, head, rows)


def _folded_table(intro: list[str], head: list[str], rows: list[tuple[str, str]]) -> list[str]:
    """The table of the models, then the fixed-blend grid and dial settings (label, row): dozens of rows, folded
    under it so the card stays short."""
    variants = [row for label, row in rows if is_sweep_label(label)]
    lines = [*intro, *head, *(row for label, row in rows if not is_sweep_label(label))]
    if variants:
        lines += ["", f"<details><summary>{len(variants)} fixed blends and dial settings</summary>", "", *head,
                  *variants, "", "</details>"]
    return [*lines, ""]


CHAT_TEMPLATE_NOTE = ("it renders a user message to exactly the token ids training saw ({layout}), so a chat API "
                      "(vLLM's, TGI's, `midpo serve`) answers as the model was trained.")


def _template_note(template: str) -> str:
    layout = ("safe-rlhf's layout, `BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:`, led by the BOS only when "
              "the tokenizer adds one" if template == "safe-rlhf" else "the tokenizer's own chat template")
    return CHAT_TEMPLATE_NOTE.format(layout=layout)


def merged_card(source: Path, cfg: dict[str, Any], gates: tuple[float, float], template: str) -> str:
    """README.md of a merged export: what the fixed gates kept and lost, the prompt format, how to serve it."""
    return "\n".join([
        "---", "tags: [midpo, merged]", "---", "", "# Merged MidPO model", "",
        f"Both experts of the MidPO model `{source.name}` folded into the base weights at fixed gates "
        f"g_safety = {gates[0]:g}, g_helpfulness = {gates[1]:g}: W' = W + s_s·g_s·B_s A_s + s_h·g_h·B_h A_h in "
        f"{len(cfg['target_modules'])} layers. A plain Hugging Face model folder: transformers, vLLM and TGI load "
        "it without midpo. The learned routers are not in it (they choose gates per token, which no single "
        "weight matrix can hold); the export checked that its logits equal the MidPO model's at these gates.",
        "", f"Prompt template: `{template}`. The tokenizer carries the chat template: " + _template_note(template),
        "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(\".\")", "tokenizer = AutoTokenizer.from_pretrained(\".\")",
        "```", "", "```bash", "vllm serve .        # or: text-generation-launcher --model-id .", "```", ""])


def adapters_card(source: Path, base: str, kind: str, template: str, rank: int,
                  switch: dict[str, Any] | None = None) -> str:
    """README.md of the exported PEFT adapters; `rank`: the larger LoRA rank of the two (vLLM's --max-lora-rank);
    `switch`: midpo_config.json's entry when the model is a probe switch (its classifier is in `router/`)."""
    base_arg = base if kind == "hub" else "./base"
    choose = ("`router/` holds the model's probe switch, the classifier that picks the expert for each prompt (below)."
              if switch else "midpo's learned routers are not in them (they mix both experts per token and layer, "
              "which a one-adapter-per-request server cannot do): choose an expert per prompt outside midpo, use "
              "`midpo export --merged` for a fixed mix, or `midpo serve` for the routed model.")
    return "\n".join([
        "---", "tags: [midpo, lora, peft]", "---", "", "# MidPO experts as PEFT adapters", "",
        f"The two experts of the MidPO model `{source.name}`: `safety/` and `helpfulness/`, standalone PEFT LoRA "
        f"adapters on the base `{base_arg}`" + (" (copied here: it is not on the hub)" if kind != "hub" else "")
        + ". " + choose, "",
        f"Each `adapter_config.json` names its base as `{base_arg}`"
        + (" (the hub name)." if kind == "hub" else ", relative to this folder, not a path of the machine that "
           "exported it: load from here, or edit `base_model_name_or_path`."), "",
        f"Prompt template: `{template}`. `chat_template.jinja` is its chat template: " + _template_note(template), "",
        "## vLLM multi-LoRA", "", "```bash",
        f"vllm serve {base_arg} --enable-lora --max-lora-rank {rank} \\",
        "    --lora-modules safety=./safety helpfulness=./helpfulness --chat-template ./chat_template.jinja",
        "# then request model \"safety\" or \"helpfulness\" per prompt (OpenAI API: \"model\": \"safety\")",
        "```", "", *(_router_section(switch, template) if switch else []), "## transformers + peft", "", "```python",
        "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained(\"{base_arg}\")",
        "model = PeftModel.from_pretrained(base, \"./safety\", adapter_name=\"safety\")",
        "model.load_adapter(\"./helpfulness\", adapter_name=\"helpfulness\")",
        "model.set_adapter(\"helpfulness\")", "```", ""])


def _router_section(switch: dict[str, Any], template: str) -> list[str]:
    """How to choose the expert per prompt with the exported probe switch, and what it costs."""
    rule = (f"the safety expert when p(harmful) ≥ {float(switch.get('threshold', 0.5)):.4g}, else the helpfulness "
            "expert" if switch.get("mode", "hard") == "hard" else
            "gates (p, 1 − p); a one-adapter-per-request server gets the expert with the larger gate")
    return [
        "## Choosing the expert per prompt: the probe switch", "",
        "`router/switch.safetensors` is a logistic probe (mean, std, weight, bias) on the base's hidden states; "
        "`router/router.json` says what it reads — the input of each listed layer averaged over the prompt's tokens, "
        f"the base alone, the prompt in the `{template}` template — and its rule: {rule}. "
        "`router/route.py` is a reference router in plain Python + transformers (no midpo): it computes the features, "
        "picks the expert, and asks any OpenAI-compatible multi-LoRA server for the answer with "
        "`model=safety|helpfulness`.", "",
        "```bash", "pip install torch transformers safetensors",
        "python router/route.py \"How do I patch a hole in drywall?\"      # {\"p_harmful\": …, \"expert\": …}",
        "python router/route.py --server http://127.0.0.1:8000/v1 \"How do I patch a hole in drywall?\"", "```", "",
        "**Cost: one extra prefill of the base per request.** The probe reads the base's hidden states with no "
        "adapter; the server then prefills the prompt again with the chosen adapter (a prefix cache is kept per "
        "adapter, so the first pass is not reused). `midpo serve` on the MidPO folder routes the same way, that "
        "prefill included.", ""]
