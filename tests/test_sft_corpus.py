"""`stages.sft.corpus`: plain-text rows trained beside the prompt/answer rows (docs/design.md §2.2).

The encoding and the loss on such rows are checked in tests/test_data.py (against a float64 per-row loop);
here the stage itself: the corpus rows reach training, the manifest counts them, and the SFT fingerprint
changes with the corpus (so adding one re-runs SFT and everything after it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midpo_cli.assets import resolve_embedded
from midpo_cli.pipeline.graph import expected_fingerprint
from midpo_cli.recipe import load_recipe


def _slice(spec: str, n: int, out: Path) -> Path:
    out.write_text("\n".join(resolve_embedded(spec).read_text().splitlines()[:n]) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from midpo_cli.commands.stage_cmds import execute

    root = tmp_path_factory.mktemp("sft-corpus")
    sft = _slice("embedded:toy-safety/sft", 40, root / "sft.jsonl")
    corpus = _slice("embedded:toy-safety/corpus", 24, root / "corpus.jsonl")
    out = {}
    for name, extra in (("plain", []), ("corpus", [f"stages.sft.corpus={corpus}"])):
        recipe = load_recipe(None, [f"run_dir={root / name}", f"data.sft={sft}", "data.max_length=96",
                                    "stages.sft.epochs=1", "stages.sft.batch_size=8", *extra])
        execute("sft", recipe, resume=True)
        out[name] = root / name
        out[f"{name}-recipe"] = recipe
    return out


def _manifest(run: Path) -> dict:
    return json.loads((run / "sft" / "manifest.json").read_text())


def test_corpus_rows_are_trained_and_counted(runs) -> None:
    plain, corpus = _manifest(runs["plain"]), _manifest(runs["corpus"])
    assert plain["data"]["corpus_rows"] == 0
    assert corpus["data"]["corpus_rows"] == 24
    assert corpus["data"]["train_rows"] == plain["data"]["train_rows"] == 38  # 2 held out for the eval loss
    assert corpus["metrics"]["steps"] == 7 > plain["metrics"]["steps"] == 4  # full batches: 62 // 8 vs 38 // 8


def test_the_corpus_is_part_of_the_sft_fingerprint(runs) -> None:
    assert (expected_fingerprint(runs["plain-recipe"], "sft", {})
            != expected_fingerprint(runs["corpus-recipe"], "sft", {}))
    assert (expected_fingerprint(runs["plain-recipe"], "reward_model", {"sft": {"fingerprint": "x"}})
            == expected_fingerprint(runs["corpus-recipe"], "reward_model", {"sft": {"fingerprint": "x"}}))


def test_data_columns_map_the_sft_rows_not_the_corpus(tmp_path) -> None:
    """data.columns renames the pair / SFT data's columns; the corpus keeps its own `text` column."""
    from midpo_cli.modeling.loading import load_tokenizer
    from midpo_cli.pipeline.preflight import check_data
    from midpo_cli.stages.sft import corpus_features, sft_rows

    rows = [json.loads(line) for line in resolve_embedded("embedded:toy-safety/sft").read_text().splitlines()[:40]]
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"question": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    corpus = _slice("embedded:toy-safety/corpus", 4, tmp_path / "corpus.jsonl")
    recipe = load_recipe(None, [f"run_dir={tmp_path / 'run'}", f"data.sft={sft}", "data.columns={prompt: question}",
                                f"stages.sft.corpus={corpus}", "stages.sft.batch_size=8"])
    check_data(recipe, "sft")  # no error: the mapping is not applied to the corpus
    assert len(sft_rows(str(sft), "column", recipe.data.columns)) == 40
    feats, counts = corpus_features(str(corpus), load_tokenizer("embedded:tiny-llama"), 96)
    assert counts["kept"] == len(feats) == 4
