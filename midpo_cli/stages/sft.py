"""Stage `sft`: supervised fine-tuning on prompt/answer text, loss on the answer tokens only.

With `stages.sft.use: MODEL` or `enabled: false` nothing is trained: the manifest records which
model is the base policy, so every later stage reads its policy from one place.
"""

from __future__ import annotations

import random

from midpo_cli import console
from midpo_cli.data.filters import select_pairs
from midpo_cli.data.readers import Table, load_rows
from midpo_cli.data.template import RECORD_KEY
from midpo_cli.data.tokenize import collate_sft, encode_sft, encode_text
from midpo_cli.engine.answer_logps import answer_logps
from midpo_cli.engine.artifacts import logits_on, model_dtype, save_checked
from midpo_cli.engine.loop import train
from midpo_cli.errors import InputError
from midpo_cli.losses.preference import answer_nll
from midpo_cli.manifest import write_manifest
from midpo_cli.modeling.loading import load_causal_lm, load_tokenizer, quiet_transformers
from midpo_cli.stages.kit.context import StageContext
from midpo_cli.stages.kit.inputs import engine_settings, stage_template, tokenizer_ref

EVAL_FRACTION = 0.05
EVAL_MAX_ROWS = 300


def run(ctx: StageContext) -> None:
    recipe, cfg = ctx.recipe, ctx.recipe.stages.sft
    record = ctx.record()
    if cfg.use or not cfg.enabled:
        ref = cfg.use or recipe.base_model
        tokenizer = load_tokenizer(tokenizer_ref(recipe, ref), trust_remote_code=recipe.trust_remote_code)  # fail early
        record.extra["template"] = stage_template(ctx, tokenizer)
        console.log(f"sft: not training; base policy is {ref}")
        record.outputs = {"model": ref}
        write_manifest(ctx.folder, record, recipe.resolved()["stages"]["sft"])
        return

    settings = engine_settings(recipe, "sft")
    tokenizer = load_tokenizer(tokenizer_ref(recipe, recipe.base_model), trust_remote_code=recipe.trust_remote_code)
    rows = sft_rows(cfg.data or recipe.data.sft, cfg.answers, recipe.data.columns)
    train_rows, eval_rows = split_eval(rows, seed=settings.seed)
    template = stage_template(ctx, tokenizer)
    train_feats, drops = encode_sft(train_rows, tokenizer, template, recipe.data.max_length)
    eval_feats, _ = encode_sft(eval_rows, tokenizer, template, recipe.data.max_length)
    console.log(f"sft: {len(train_feats)} train rows, {len(eval_feats)} eval rows; encoding "
                f"{console.counts_text(drops)}")
    corpus_feats, corpus_drops = corpus_features(cfg.corpus, tokenizer, recipe.data.max_length)

    model = load_causal_lm(recipe.base_model, dtype=settings.precision, seed=settings.seed,
                           trust_remote_code=recipe.trust_remote_code)
    pad_id = tokenizer.pad_token_id

    def collate(features):
        return collate_sft(features, pad_id)

    def loss_fn(model, batch):
        loss = answer_nll(answer_logps(model, batch), batch["response_mask"])  # sft_loss without full logits
        return loss, {"nll": loss.detach()}

    result = train(model=model, train_data=train_feats + corpus_feats, collate=collate, loss_fn=loss_fn,
                   settings=settings, out_dir=ctx.folder, eval_data=eval_feats or None, resume=ctx.resume,
                   stage_name="sft")

    out = ctx.folder / "model"
    setattr(result.model.config, RECORD_KEY, template)  # config.json records it: later runs can warn on a mismatch
    save_causal_lm(result.model, tokenizer, out, collate([*eval_feats, *train_feats][:4]))
    record.outputs = {"model": ctx.rel(out)}
    record.metrics = {
        "train_loss": result.last_metrics.get("loss"),
        "eval_loss": (result.last_eval or {}).get("loss"),
        "steps": result.global_step,
        "samples_per_s": result.samples_per_s,
    }
    record.extra = {"template": template, "resumed_from_step": result.resumed_from_step,
                    "data": {"train_rows": len(train_feats), "eval_rows": len(eval_feats), "dropped": drops,
                             "corpus_rows": len(corpus_feats), "corpus": corpus_drops}}
    write_manifest(ctx.folder, record, recipe.resolved()["stages"]["sft"])


def sft_rows(spec: str | None, answers: str, columns: dict[str, str]) -> list[dict]:
    """Prompt/answer rows: an `answer` column, or the better/safer response of a pair dataset."""
    if not spec:
        raise InputError("stages.sft: no SFT data; set data.sft or stages.sft.data, or stages.sft.enabled: false to "
                         "use base_model as the policy (an instruction-tuned base)")
    table = load_rows(spec, columns=columns)
    if answers == "column":
        missing = [c for c in ("prompt", "answer") if table.rows and c not in table.rows[0]]
        if missing:
            raise InputError(
                f"{table.source}: missing column {missing[0]!r} for SFT (columns: {', '.join(table.rows[0])}); "
                "map it with data.columns or use --answers better|safer on a pair dataset"
            )
        return [{"prompt": r["prompt"], "answer": r["answer"]} for r in table.rows]
    stage = "reward_model" if answers == "better" else "cost_model"
    selection = select_pairs(Table(rows=table.rows, source=table.source), stage)
    return [{"prompt": p.prompt, "answer": p.chosen} for p in selection.pairs]


def corpus_features(spec: str | None, tokenizer, max_length: int) -> tuple[list, dict]:
    """`stages.sft.corpus`: plain-text rows trained beside the prompt/answer rows, loss on every token.

    Why SFT takes them: a base learns what the words of its domain mean from text, not from answers; the
    toy world's corpus is the pretraining its from-scratch base never had (docs/design.md §7). The corpus
    has its own one column, `text`, so data.columns (the pair and SFT data's mapping) does not apply.
    """
    if not spec:
        return [], {}
    table = load_rows(spec)
    feats, counts = encode_text(table.rows, tokenizer, max_length)
    console.log(f"sft: {len(feats)} corpus rows from {table.source} (loss on every token); encoding "
                f"{console.counts_text(counts)}")
    return feats, counts


def split_eval(rows: list[dict], *, seed: int) -> tuple[list[dict], list[dict]]:
    """A deterministic held-out slice for eval loss (the SFT set has no split of its own)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(EVAL_MAX_ROWS, int(len(rows) * EVAL_FRACTION))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in order[:n_eval]]


def save_causal_lm(model, tokenizer, out, probe_batch: dict) -> None:
    """save_pretrained into a temp folder, reload, compare probe logits, then rename into place."""
    from transformers import AutoModelForCausalLM

    probe = {k: v for k, v in probe_batch.items() if k in ("input_ids", "attention_mask")}

    def save_fn(path):
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)

    with quiet_transformers():  # no "Writing model shards" / "Loading weights" bars between midpo's lines
        save_checked(model, out, save_fn=save_fn, forward=logits_on(probe),  # reloaded in the dtype it trained in
                     load_fn=lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=model_dtype(model)))
