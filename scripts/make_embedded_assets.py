"""Write the embedded default (docs/design.md §7): `toy-safety/*.jsonl` and the `tiny-llama/` config + tokenizer.

    python scripts/make_embedded_assets.py [--out DIR]     # default: midpo_cli/assets

Deterministic: the same command writes the same bytes (tests/test_toy_world.py regenerates everything into
a temporary folder and compares). The data come from `midpo_cli.assets.toy_world.build_toy_world()`.

The tokenizer is a byte-level BPE (vocab 768: 256 bytes, 3 specials, 509 merges) trained with the
`tokenizers` library on the toy training text (`toy_world.toy_text`: train/test/SFT prompts in the
safe-rlhf template, each followed by its answer). Special tokens: `<pad>` = 0, `<s>` = 1 (BOS), `</s>` = 2
(EOS). It has **no post-processor**: `tokenizer("hi").input_ids` is just the text's tokens, with neither
BOS nor EOS, because the data layer appends EOS to answers itself and the safe-rlhf template needs no BOS;
a tokenizer that added them would put EOS after every prompt. `clean_up_tokenization_spaces` is off, so
decoding returns the exact text (byte-level BPE is lossless).

config.json is written from a fixed dict rather than `LlamaConfig.save_pretrained`, whose output carries
the installed transformers version and would change the bytes on every upgrade. No weight files: the loader
initialises `embedded:tiny-llama` from a seed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midpo_cli.assets import ASSETS
from midpo_cli.assets.toy_world import build_toy_world, toy_text

TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
VOCAB_SIZE = 768
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
MODEL_MAX_LENGTH = 256


def jsonl_text(rows: Sequence[dict[str, Any]]) -> str:
    """One row a line, sorted keys, UTF-8 kept as is: a stable byte form for diffs and regeneration tests."""
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def train_tokenizer(lines: Sequence[str]) -> Any:
    """Byte-level BPE on the toy text; see the module docstring for the choices."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"BPE trainer made {tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    return tokenizer


def tokenizer_config() -> dict[str, Any]:
    pad, bos, eos = SPECIAL_TOKENS
    return {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
        "model_max_length": MODEL_MAX_LENGTH, "clean_up_tokenization_spaces": False,
        "add_bos_token": False, "add_eos_token": False, "padding_side": "right",
    }


def model_config(tokenizer: Any) -> dict[str, Any]:
    """The tiny LLaMA of docs/design.md §7 (1.9 M parameters with the tied 768-token embedding)."""
    pad, bos, eos = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 192, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 48,
        "hidden_act": "silu", "max_position_embeddings": MODEL_MAX_LENGTH, "initializer_range": 0.02,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False, "attention_dropout": 0.0,
        "mlp_bias": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
    }


def write_assets(out: Path, seed: int = 0) -> list[Path]:
    """Write every embedded asset under `out`; returns the files written."""
    world = build_toy_world(seed)
    written = []
    for split, rows in world.items():
        path = out / "toy-safety" / f"{split}.jsonl"
        write_text(path, jsonl_text(rows))
        written.append(path)
    tokenizer = train_tokenizer(toy_text(world, TEMPLATE))
    model_dir = out / "tiny-llama"
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(), indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(
            dict(zip(("pad_token", "bos_token", "eos_token"), SPECIAL_TOKENS, strict=True)),
            indent=2, sort_keys=True) + "\n",
        "config.json": json.dumps(model_config(tokenizer), indent=2, sort_keys=True) + "\n",
    }
    for name, text in files.items():
        write_text(model_dir / name, text)
        written.append(model_dir / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="asset folder (default: the package's)")
    parser.add_argument("--seed", type=int, default=0, help="toy-world seed (the shipped files use 0)")
    args = parser.parse_args(argv)
    for path in write_assets(args.out, args.seed):
        print(f"{path.stat().st_size:>9,d}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
