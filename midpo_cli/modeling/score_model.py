"""Score models (reward and cost) in safe-rlhf's checkpoint format, so released beaver models load unchanged.

A score model is a decoder backbone plus a linear `score_head` (hidden → 1); its score for a text is
the head's output at the last non-pad token (docs/design.md §2). The format, as written by safe-rlhf's
`safe_rlhf/models/score_model/` (`<Arch>ForScore` classes, e.g. LlamaForScore) and read here:

- config.json: the backbone's HF config with `architectures: ["<Arch>ForScore"]` and
  `score_dim` (default 1), `score_bias` (default true), `score_type` ("reward" | "cost" | "critic",
  default "reward"), `do_normalize` (default false), `normalizer_type` (null | "RunningMeanStd" |
  "ExponentialMovingAverage"), `momentum` (EMA only), `mean`, `var` (lists of score_dim floats).
- weights: the backbone under HF's `base_model_prefix` for the architecture — `model.*` (LLaMA,
  Mistral, Qwen2, Gemma, Phi, OPT), `transformer.*` (GPT-2, GPT-Neo, GPT-J, BLOOM), `gpt_neox.*` —
  then `score_head.weight` (score_dim, hidden), `score_head.bias` (score_dim,) and the normalizer's
  buffers `normalizer.mean`, `normalizer.var` (score_dim,), `normalizer.count` (1,). Files:
  model.safetensors / pytorch_model.bin, or their sharded `*.index.json` forms; tokenizer files beside.
- normalisation: when `do_normalize` is true safe-rlhf divides every score at inference too, by the
  score type's function: reward → affine (s − mean)/(std + 1e-8), cost → scale s/(std + 1e-8),
  critic → identity; mean/var come from the weights' normalizer buffers (they override the config's
  copy on load). midpo does the same; it never updates the statistics (training never normalises).

The backbone is loaded with transformers' own `AutoModel.from_pretrained`, which strips the prefix,
handles dtypes, shards, safetensors and `weights_only` .bin loading; only the head and normaliser
tensors are read here.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from midpo_cli import console
from midpo_cli.data.tokenize import longest_first, pad_sequences, prompt_answer_ids
from midpo_cli.errors import InputError
from midpo_cli.io import atomic_dir, read_json
from midpo_cli.modeling.loading import (
    has_weights,
    load_causal_lm,
    load_error,
    load_tokenizer,
    quiet_transformers,
    resolve_model_path,
    torch_dtype,
    weights_error,
)

SCORE_TYPES = ("reward", "cost", "critic")
NORMALIZE_FUNCTIONS = {"reward": "affine", "cost": "scale", "critic": "identity"}
NORMALIZER_TYPES = (None, "RunningMeanStd", "ExponentialMovingAverage")
HEAD_KEYS = ("score_head.weight", "score_head.bias", "normalizer.mean", "normalizer.var", "normalizer.count")
EPSILON = 1e-8  # safe-rlhf's Normalizer.normalize default


class Normalizer(nn.Module):
    """safe-rlhf's score normaliser at inference: fixed mean/var buffers and one normalize function."""

    def __init__(self, normalize_function: str, score_dim: int = 1) -> None:
        super().__init__()
        self.normalize_function = normalize_function
        self.register_buffer("mean", torch.zeros(score_dim))
        self.register_buffer("var", torch.ones(score_dim))
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        std = self.var.sqrt().to(scores.dtype)
        if self.normalize_function == "affine":
            return (scores - self.mean.to(scores.dtype)) / (std + EPSILON)
        if self.normalize_function == "scale":
            return scores / (std + EPSILON)
        return scores


class ScoreModel(nn.Module):
    """Backbone (any HF decoder base model) + `score_head`; state_dict keys match safe-rlhf's.

    The backbone is registered under its architecture's `base_model_prefix` (so `model.*` for LLaMA,
    `transformer.*` for GPT-2) and reachable as `.backbone`; `config` is the backbone's config,
    carrying the score keys that `save_score_model` writes.
    """

    def __init__(self, backbone: nn.Module, *, score_type: str, score_bias: bool = True,
                 do_normalize: bool = False, normalizer_type: str | None = None) -> None:
        super().__init__()
        if score_type not in SCORE_TYPES:
            raise InputError(f"score_type {score_type!r} is not one of {', '.join(SCORE_TYPES)}")
        self.prefix = type(backbone).base_model_prefix or "model"
        self.add_module(self.prefix, backbone)
        config = backbone.config
        hidden = getattr(config, "word_embed_proj_dim", None) or config.hidden_size  # OPT projects out
        dtype = next(backbone.parameters()).dtype
        self.score_head = nn.Linear(hidden, 1, bias=score_bias, dtype=dtype)
        self.normalizer = Normalizer(NORMALIZE_FUNCTIONS[score_type])
        self.score_type = score_type
        self.do_normalize = do_normalize
        self.config = config
        config.score_dim, config.score_bias, config.score_type = 1, score_bias, score_type
        config.do_normalize, config.normalizer_type = do_normalize, normalizer_type
        params = inspect.signature(backbone.forward).parameters
        self._position_ids = "position_ids" in params  # BLOOM (ALiBi) takes none
        self._use_cache = "use_cache" in params

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.prefix)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """The engine's memory switch, handed to the backbone (the head is one linear: nothing to recompute)."""
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)
        if callable(enable):  # transformers ≥ 5
            enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask (B, T) → (scores (B, T), end_scores (B,)), float32.

        The end score is read at the last position whose mask is 1, so right and left padding give
        the same result; position ids are counted over real tokens only (as `generate` does), so a
        left-padded sequence also sees the positions it would see unpadded.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.long()
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if self._position_ids:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if self._use_cache:
            kwargs["use_cache"] = False
        hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state  # (B, T, E)
        scores = self.score_head(hidden).float().squeeze(-1)  # (B, T)
        positions = torch.arange(mask.shape[1], device=mask.device)
        end_index = (positions * mask).amax(-1)  # (B,) last real token (0 for an all-pad row)
        end_scores = scores.gather(1, end_index.unsqueeze(1)).squeeze(1)  # (B,)
        if self.do_normalize:
            scores, end_scores = self.normalizer(scores), self.normalizer(end_scores)
        return scores, end_scores


def _init_head(model: ScoreModel, seed: int) -> None:
    """N(0, initializer_range) weight and zero bias, as safe-rlhf's post_init leaves a fresh head."""
    std = getattr(model.config, "initializer_range", 0.02)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = torch.randn(model.score_head.weight.shape, generator=gen) * std
        model.score_head.weight.copy_(weight)
        if model.score_head.bias is not None:
            model.score_head.bias.zero_()


def new_score_model(base_model_name: str, score_type: str, seed: int = 0, *, dtype: str = "fp32",
                    trust_remote_code: bool = False) -> tuple[ScoreModel, Any]:
    """(score model, tokenizer) from a causal LM's backbone (its LM head dropped) and a fresh head.

    The embedded tiny LLaMA has no weights: its backbone is drawn from `seed`, like the policy's.
    """
    lm = load_causal_lm(base_model_name, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
    backbone = lm.base_model
    model = ScoreModel(backbone, score_type=score_type)
    _init_head(model, seed)
    tokenizer = load_tokenizer(base_model_name, trust_remote_code=trust_remote_code)
    return model, tokenizer


def architecture_name(config: Any) -> str:
    """safe-rlhf's class name: LlamaConfig → LlamaForScore, GPT2Config → GPT2ForScore, ..."""
    return type(config).__name__.removesuffix("Config") + "ForScore"


def _state_for_safetensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; a tensor that shares storage with an earlier one is cloned."""
    out, seen = {}, set()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[key] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def save_score_model(model: ScoreModel, tokenizer: Any, path: str | Path, *, score_type: str | None = None,
                     extra_config: dict[str, Any] | None = None) -> Path:
    """Write a safe-rlhf-format folder (config.json, model.safetensors, tokenizer files) atomically."""
    from safetensors.torch import save_file

    score_type = score_type or model.score_type
    if score_type != model.score_type:
        raise InputError(f"save_score_model: score_type {score_type!r} differs from the model's "
                         f"{model.score_type!r}")
    config = copy.deepcopy(model.config)
    config.architectures = [architecture_name(config)]
    config.score_dim, config.score_bias = 1, model.score_head.bias is not None
    config.score_type, config.do_normalize = score_type, model.do_normalize
    config.normalizer_type = getattr(config, "normalizer_type", None)
    config.mean = model.normalizer.mean.tolist()
    config.var = model.normalizer.var.tolist()
    for key, value in (extra_config or {}).items():
        setattr(config, key, value)
    with atomic_dir(path) as tmp:
        config.save_pretrained(tmp)
        save_file(_state_for_safetensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
    return Path(path)


def _local_folder(name: str, trust_remote_code: bool) -> Path:
    """A local folder for `name`, downloading a hub repo's config, tokenizer and one weight format."""
    path = resolve_model_path(name, what="score model")
    if Path(path).is_dir():
        return Path(path)
    if Path(path).exists():
        raise InputError(f"score model {name!r} is a file; give the model folder")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
    patterns += ["*.py"] if trust_remote_code else []
    try:
        folder = Path(snapshot_download(path, allow_patterns=patterns))
        if not has_weights(folder):  # older checkpoints (the beaver models) may ship .bin only
            folder = Path(snapshot_download(path, allow_patterns=[*patterns, "pytorch_model*.bin"]))
    except (OSError, ValueError) as exc:
        raise load_error(name, "score model", exc) from exc
    return folder


def _read_tensors(file: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Those of `keys` present in one safetensors or .bin file (.bin: torch.load, weights_only=True)."""
    try:
        return _read_file_tensors(file, keys)
    except Exception as exc:  # truncated safetensors, a refused pickle: one line naming the file
        problem = weights_error(file, exc)
        if problem is None:
            raise
        raise problem from None


def _read_file_tensors(file: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as fh:
            present = set(fh.keys())
            return {k: fh.get_tensor(k) for k in keys if k in present}
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) .bin files cannot be memory-mapped
        state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: state[k] for k in keys if k in state}


def _head_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The score head and normaliser tensors (HEAD_KEYS) of a checkpoint, sharded or not."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            weight_map = read_json(index).get("weight_map", {})
            by_file: dict[str, list[str]] = {}
            for key in HEAD_KEYS:
                if key in weight_map:
                    by_file.setdefault(weight_map[key], []).append(key)
            out: dict[str, torch.Tensor] = {}
            for file, keys in by_file.items():
                out.update(_read_tensors(folder / file, keys))
            return out
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise InputError(f"score model {folder}: no model.safetensors or pytorch_model.bin in the folder")
    return {k: v for file in files for k, v in _read_tensors(file, HEAD_KEYS).items()}


def _check_config(folder: Path, raw: dict[str, Any]) -> None:
    archs = raw.get("architectures") or []
    is_score = any(str(a).endswith("ForScore") for a in archs) or "score_type" in raw or "score_dim" in raw
    if not is_score:
        raise InputError(f"{folder / 'config.json'}: architectures {archs} has no score head; a score model "
                         "needs a safe-rlhf '<Arch>ForScore' checkpoint (train one with `midpo train-rm`)")
    if raw.get("score_dim", 1) != 1:
        raise InputError(f"{folder / 'config.json'}: score_dim {raw['score_dim']}; midpo needs one score per "
                         "text (score_dim 1)")
    if raw.get("score_type", "reward") not in SCORE_TYPES:
        raise InputError(f"{folder / 'config.json'}: score_type {raw['score_type']!r} is not one of "
                         f"{', '.join(SCORE_TYPES)}")
    if raw.get("normalizer_type") not in NORMALIZER_TYPES:
        raise InputError(f"{folder / 'config.json'}: normalizer_type {raw['normalizer_type']!r} is not "
                         "one of RunningMeanStd, ExponentialMovingAverage, null")


def _load_backbone(folder: Path, name: str, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModel

    try:
        with quiet_transformers():
            backbone, info = AutoModel.from_pretrained(
                folder, dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise load_error(name, "score model", exc) from exc
    except Exception as exc:  # a truncated safetensors file, a pickle refused by weights_only
        problem = weights_error(folder, exc)
        if problem is None:
            raise
        raise problem from None
    problems = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if problems:
        shown = ", ".join(str(p) for p in problems[:4]) + (" …" if len(problems) > 4 else "")
        raise InputError(f"score model {name!r}: backbone weights missing or mis-shaped in {folder}: {shown} "
                         f"(expected keys under '{type(backbone).base_model_prefix}.')")
    return backbone


def load_score_model(path: str | Path, *, expected_type: str | None = None, dtype: str = "fp32",
                     trust_remote_code: bool = False, device: str | torch.device | None = None
                     ) -> tuple[ScoreModel, Any]:
    """(score model in eval mode, its tokenizer) from a safe-rlhf-format folder or hub repo."""
    name = str(path)
    folder = _local_folder(name, trust_remote_code)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise InputError(f"score model {name!r}: {config_file} does not exist")
    raw = read_json(config_file)
    _check_config(folder, raw)
    head = _head_tensors(folder)
    if "score_head.weight" not in head:
        raise InputError(f"score model {name!r}: the weights in {folder} have no score head "
                         "(score_head.weight); is this a causal LM rather than a score model?")
    if head["score_head.weight"].shape[0] != 1:
        raise InputError(f"score model {name!r}: score_head.weight has {head['score_head.weight'].shape[0]} "
                         "outputs; midpo needs one score per text (score_dim 1)")
    score_type = raw.get("score_type", "reward")
    if expected_type is not None and expected_type != score_type:
        console.warn(f"score model {name!r} says score_type {score_type!r} in its config.json, but it is "
                     f"used as a {expected_type} model; check that reward and cost models are not swapped")
    backbone = _load_backbone(folder, name, torch_dtype(dtype), trust_remote_code)
    model = ScoreModel(backbone, score_type=score_type, score_bias="score_head.bias" in head,
                       do_normalize=bool(raw.get("do_normalize", False)),
                       normalizer_type=raw.get("normalizer_type"))
    with torch.no_grad():
        model.score_head.weight.copy_(head["score_head.weight"])
        if "score_head.bias" in head:
            model.score_head.bias.copy_(head["score_head.bias"])
        for key in ("mean", "var"):  # weights' buffers win over the config's copy, as in safe-rlhf
            value = head.get(f"normalizer.{key}")
            value = value if value is not None else raw.get(key)
            if value is not None:
                getattr(model.normalizer, key).copy_(torch.as_tensor(value, dtype=torch.float32).reshape(1))
        if "normalizer.count" in head:
            model.normalizer.count.copy_(head["normalizer.count"].reshape(1))
    model.eval()
    if device is not None:
        model.to(device)
    tokenizer = load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
    return model, tokenizer


def _length_limit(model: ScoreModel, tokenizer: Any) -> int | None:
    """The smaller of the tokenizer's model_max_length (when set) and the model's position limit."""
    limits = [getattr(model.config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    sane = [v for v in limits if isinstance(v, int) and 0 < v < 1_000_000]  # HF's "unset" is ~1e30
    return min(sane) if sane else None


def reading_template(requested: str, config: Any, tokenizer: Any) -> str:
    """The conversation format a score model reads: the one it recorded when midpo trained it; else the
    requested one (the policy's) when its tokenizer can apply it; else safe-rlhf's, the format of the
    beaver score models, which record nothing and have no chat template.

    Why not the policy's always: a chat-template policy (an instruct base) scored by a safe-rlhf score model
    would either fail ("has no chat template") or feed the score model text it never saw.
    """
    from midpo_cli.data.template import has_chat_template, recorded_template, resolve_template

    recorded = recorded_template(config)
    if recorded is not None and (recorded != "chat" or has_chat_template(tokenizer)):
        return recorded
    if requested in ("chat", "auto") and not has_chat_template(tokenizer):
        return "safe-rlhf"
    return resolve_template(requested, tokenizer)


def score_texts(model: ScoreModel, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
                batch_size: int = 32, template: str = "safe-rlhf", max_length: int | None = None,
                label: str = "scoring") -> list[float]:
    """End score of each (prompt, answer), in input order; `template` is the policy's, read by the score model
    in its own format (`reading_template`); `label` names the step in the progress display.

    Text is built exactly as training builds it (data.tokenize.prompt_answer_ids: template prompt,
    answer, then EOS), so the model scores what it was trained on. Sequences are sorted by length
    and batched to limit padding; longer than `max_length` (default: the tokenizer's
    model_max_length or the model's position limit, the smaller) they are cut on the right, as
    safe-rlhf's tokenizer truncation does, with a warning.
    """
    from midpo_cli.data.template import format_prompt

    template = reading_template(template, model.config, tokenizer)
    if len(prompts) != len(answers):
        raise InputError(f"score_texts: {len(prompts)} prompts but {len(answers)} answers")
    if batch_size < 1:
        raise InputError(f"score_texts: batch_size must be ≥ 1, got {batch_size}")
    if not prompts:
        return []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token")
    texts = [format_prompt(p, template, tokenizer) for p in prompts]
    p_ids, a_ids, _ = prompt_answer_ids(tokenizer, texts, list(answers), template)
    seqs = [p + a + [eos] for p, a in zip(p_ids, a_ids, strict=True)]
    limit = max_length or _length_limit(model, tokenizer)
    if limit is not None:
        cut = sum(len(s) > limit for s in seqs)
        if cut:
            console.warn(f"score_texts: {cut} of {len(seqs)} texts exceed {limit} tokens and were cut")
            seqs = [s[:limit] for s in seqs]
    was_training = model.training
    model.eval()
    try:
        with console.progress(label, len(seqs), unit="answers") as bar:
            return _end_scores(model, seqs, eos if pad is None else pad, batch_size, bar)
    finally:
        model.train(was_training)


@torch.inference_mode()
def _end_scores(model: ScoreModel, seqs: list[list[int]], pad: int, batch_size: int, bar: console.Bar
                ) -> list[float]:
    """The end score of each token sequence, batched longest first (so a batch pads to similar lengths)."""
    device = next(model.parameters()).device
    out = [0.0] * len(seqs)
    for idx in longest_first(seqs, batch_size):
        batch = pad_sequences([seqs[i] for i in idx], [0] * len(idx), pad)
        _, end = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        for i, value in zip(idx, end.float().cpu().tolist(), strict=True):
            out[i] = value
        bar.advance(len(idx))
    return out


def score_pairs(model: ScoreModel, tokenizer: Any, prompts: Sequence[str], chosen: Sequence[str],
                rejected: Sequence[str], *, batch_size: int = 32, template: str = "safe-rlhf", label: str = "scoring"
                ) -> tuple[list[float], list[float]]:
    """(scores of the chosen answers, scores of the rejected ones), each in input order.

    One `score_texts` call over both sides, so chosen and rejected answers are batched together by length.
    """
    scores = score_texts(model, tokenizer, [*prompts, *prompts], [*chosen, *rejected], batch_size=batch_size,
                         template=template, label=label)
    return scores[: len(prompts)], scores[len(prompts):]
