"""`midpo generate`: answers of one or more models on one or more prompt sets, into a resumable JSONL."""

from __future__ import annotations

from pathlib import Path

import typer

from midpo_cli import console
from midpo_cli.commands.options import JsonOpt
from midpo_cli.recipe import GenerationSettings

_D = GenerationSettings()  # the option defaults: one definition of the generation settings


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    model: list[str] = typer.Option(..., "--model", "-m", help="[LABEL=]SPEC: base model (embedded:, hub, path), "
                                    "PEFT adapter folder, or MidPO model folder. Repeatable."),
    prompts: list[str] = typer.Option(..., "--prompts", "-p", help="[NAME=]SPEC: preset, embedded:, hub dataset, "
                                      "or a .jsonl/.csv/.txt file (one prompt a line). Repeatable."),
    output: Path = typer.Option(..., "--output", "-o", help="Answers JSONL (resumed if it exists)."),
    max_new_tokens: int = typer.Option(_D.max_new_tokens, "--max-new-tokens", min=1,
                                       help="Tokens to generate at most."),
    temperature: float = typer.Option(_D.temperature, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(_D.top_p, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", min=1, help="Prompts per batch."),
    seed: int = typer.Option(_D.seed, "--seed", help="Sampling seed."),
    max_prompt_length: int = typer.Option(_D.max_prompt_length, "--max-prompt-length", min=2,
                                          help="Prompt tokens kept (from the end; default: context - new tokens)."),
    template: str = typer.Option("auto", "--template", help="auto (each model's chat template if its tokenizer has "
                                 "one, else safe-rlhf), safe-rlhf or chat."),
    columns: str = typer.Option(None, "--columns", help="Column mapping for hub/file prompt sets: prompt=question,..."),
    gates: str = typer.Option(None, "--gates", help="Fixed G_SAFETY,G_HELPFULNESS for MidPO models."),
    safety_bias: float = typer.Option(0.0, "--safety-bias", help="Safety dial of MidPO models: adds B to the "
                                      "safety-gate logit, subtracts it from the helpfulness one (label @dial=+B)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a CUDA GPU that has it, else fp32), fp32, bf16 "
                              "or fp16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate answers (batched, KV cache, left padding); resumable: existing rows are skipped."""
    from midpo_cli.data.prompt_sets import load_prompt_set
    from midpo_cli.data.schema import parse_columns_option
    from midpo_cli.data.template import check_template
    from midpo_cli.evaluation.labels import parse_gates
    from midpo_cli.io import check_output
    from midpo_cli.modeling.files import check_model_folder
    from midpo_cli.modeling.loading import resolve_precision
    from midpo_cli.stages import generate as stage

    check_template(template)
    dtype = resolve_precision(dtype)  # `auto` → bf16 on a CUDA GPU that has it, else fp32
    fixed = parse_gates(gates) if gates is not None else None
    entries = stage.apply_routing(stage.model_entries(model), fixed, safety_bias)
    for entry in entries:  # before any work: weightless or broken model folders
        check_model_folder(entry.spec)
    check_output(output, "--output")  # before any work: a FIFO, a folder, a path under a file
    sets = [load_prompt_set(p, parse_columns_option(columns) or None) for p in prompts]
    stage.log_counts(sets)

    def loader(e):
        return stage.load_policy(e.spec, gates=e.gates, safety_bias=e.safety_bias, dtype=dtype, seed=seed,
                                 trust_remote_code=trust_remote_code)

    settings = _D.but(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
                      seed=seed, max_prompt_length=max_prompt_length)
    stats = stage.generate_to_file(entries, sets, output, settings, template=template, loader=loader)
    console.log(f"generate: {stats['rows_written']} new answers ({stats['rows_existing']} already there) → {output}"
                + (f"; {stats['truncated_prompts']} prompts truncated from the left" if stats["truncated_prompts"]
                   else ""))
    if as_json:
        console.emit_json(stats)
