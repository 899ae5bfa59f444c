"""The recipe: one typed YAML document that describes a run (docs/design.md §4).

Everything is checked before any model loads: unknown keys, wrong types and bad choices are
collected and reported together, each with its key path and, where it came from a file, the line.
This module imports no torch: `midpo recipe check` must answer in well under a second.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from midpo_cli.errors import InputError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Template = Literal["auto", "safe-rlhf", "chat"]
TRAINING_STAGES = ("sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "router", "dpo_expert")
STAGE_ORDER = (
    "sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "rank", "router",
    "generate", "score",
)
# Stages outside the pipeline's default order: run on request (`midpo train-expert --kind dpo`, `--only`).
OPTIONAL_STAGES = ("dpo_expert",)
ALL_STAGES = (*STAGE_ORDER, *OPTIONAL_STAGES)
TENSORBOARD_HINT = "pip install 'midpo-cli[tensorboard]'"


class Strict(BaseModel):
    """Unknown keys are errors, types are not coerced (a quoted "0.1" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class CheckpointSettings(Strict):
    every_steps: int | None = Field(None, gt=0, description="Save a checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, description="How many recent checkpoints to keep.")


class TrainSettings(Strict):
    """Defaults shared by every training stage; each stage may override any of them.

    The one list of training settings: a stage's overrides (`TrainOverrides`) and the engine's settings
    (`midpo_cli.engine.settings.EngineSettings`) are derived from it (tests/test_recipe.py checks they agree).
    """

    epochs: int = Field(1, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Micro-batch size per process (pairs or rows).")
    eval_batch_size: int | None = Field(None, gt=0, description="Evaluation batch size (default: batch_size).")
    grad_accum: int = Field(1, gt=0, description="Gradient accumulation steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: off).")
    seed: int = Field(42, description="Seed for weights init, data order and dropout.")
    precision: Precision = Field(
        "auto", description="Weights' dtype: auto (bf16 on a CUDA GPU that has it, else fp32), fp32, bf16 or fp16."
    )
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N optimizer steps.")
    eval_each_epoch: bool = Field(True, description="Evaluate at the end of each epoch.")
    log_every: int = Field(10, gt=0, description="Log metrics every N optimizer steps.")
    activation_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass: less memory, more compute."
    )
    share_prompt: bool = Field(
        True, description="Experts and router: each pair's prompt encoded once, one packed row prompt ‖ chosen ‖ "
        "rejected with a block attention mask, instead of two rows (same log-probs, fewer tokens).",
    )
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)


def _unset_by_default(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """`model`'s fields with the same types and checks, each also accepting and defaulting to None (unset)."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        unset = copy.copy(info)
        unset.default, unset.default_factory = None, None
        fields[key] = (info.annotation | None, unset)
    return create_model(name, __base__=Strict, __doc__=doc, __module__=__name__, **fields)


TrainOverrides = _unset_by_default(
    TrainSettings, "TrainOverrides", "Every TrainSettings key, unset by default: unset means 'inherit from train:'.")


class DataSettings(Strict):
    train: str = Field(
        "embedded:toy-safety/train", description="Pair dataset: embedded:, hub org/name[:split], or a path."
    )
    eval: str | None = Field("embedded:toy-safety/test", description="Held-out pairs for evaluation and audits.")
    sft: str | None = Field("embedded:toy-safety/sft", description="Prompt/answer rows for train-sft.")
    columns: dict[str, str] = Field(default_factory=dict, description="Canonical column → source column.")
    max_length: int = Field(256, gt=8, description="Max tokens of prompt + answer.")
    max_prompt_length: int | None = Field(None, gt=0, description="Max prompt tokens (left-truncated).")
    template: Template = Field(
        "auto", description="Prompt template: auto (the tokenizer's chat template if it has one, else safe-rlhf), "
        "safe-rlhf, or chat."
    )


class DeepSpeedSettings(Strict):
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage.")
    config: str | None = Field(None, description="A DeepSpeed JSON merged under the recipe's batch sizes.")
    offload: bool = Field(False, description="Offload optimizer state to CPU (DeepSpeed CPU Adam).")


class LauncherSettings(Strict):
    kind: Literal["none", "deepspeed", "torchrun"] = Field("none", description="Multi-process launcher.")
    num_gpus: int | None = Field(None, gt=0, description="Processes (GPUs) per node.")
    num_nodes: int = Field(1, gt=0, description="Nodes.")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs.")
    master_port: int | None = Field(None, gt=0, lt=65536, description="Rendezvous port.")


class LoggingSettings(Strict):
    tensorboard: bool = Field(False, description="Also write TensorBoard event files.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers, as in TRL: tensorboard, wandb, mlflow.")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        """A tracker without its package would fail after models load: refuse now, naming the extra."""
        from midpo_cli.engine.trackers import install_hint, missing_package

        missing = [name for name in dict.fromkeys(value) if missing_package(name)]
        if missing:
            raise ValueError("; ".join(f"the {n} package is not installed ({install_hint(n)})" for n in missing)
                             + ", or remove it from report_to")
        return value

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, value: bool) -> bool:
        """Without the package the engine could only warn and write nothing: refuse before any model loads."""
        import importlib.util

        if value and importlib.util.find_spec("tensorboard") is None:
            raise ValueError(f"the tensorboard package is not installed; {TENSORBOARD_HINT}, or set it to false")
        return value


class SFTStage(TrainOverrides):
    enabled: bool = Field(True, description="Run SFT; false uses base_model as the policy.")
    use: str | None = Field(None, description="Skip training and use this model as the base policy.")
    data: str | None = Field(None, description="Prompt/answer data (default: data.sft).")
    answers: Literal["column", "better", "safer"] = Field(
        "column", description="'column' reads `answer`; better/safer pick from a pair dataset."
    )
    corpus: str | None = Field(
        None, description="Plain text (a `text` column) mixed into SFT, loss on every token: the domain's language."
    )


class ScoreModelStage(TrainOverrides):
    use: str | None = Field(None, description="Use this score model instead of training one.")
    base_model: str | None = Field(None, description="Backbone to start from (default: the SFT policy).")
    score_regularization: float = Field(0.001, ge=0, description="λ of the score² regulariser.")
    min_accuracy: float = Field(0.6, ge=0, le=1, description="Refuse to use the model below this accuracy.")


class LoraSettings(Strict):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Linear layers to adapt (null: the architecture's MLP output, e.g. down_proj)."
    )


class ExpertStage(TrainOverrides):
    beta: float = Field(0.1, gt=0, description="DPO β.")
    margin_scale: float = Field(1.0, ge=0, description="γ multiplying the SPE-DPO margin.")
    loss: Literal["spe", "dpo"] = Field("spe", description="spe: score-model margin; dpo: plain DPO.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    precompute_ref: bool = Field(True, description="Compute reference log-probs once before training.")


class RankStage(Strict):
    rule: Literal["joint", "expert", "models", "labels", "agree"] = Field(
        "joint", description="How D_dual is chosen: joint (one answer wins on both axes), expert (the safer answer "
        "on harmful prompts, the better on benign ones), or the paper's models/labels."
    )
    by: Literal["auto", "labels", "models"] = Field(
        "auto", description="joint/expert: judge by the labels or the score models (auto: labels when present)."
    )
    balance: Literal["cells", "contrast", "kinds", "none"] = Field(
        "cells", description="joint/expert: equal pairs per (prompt kind, rejected unsafe?) cell; contrast: without "
        "harmful safe-vs-safe pairs; per prompt kind; or none."
    )
    batch_size: int = Field(32, gt=0, description="Scoring batch size.")


class RouterPenalty(Strict):
    safety: float = Field(0.0, ge=0, description="λ_s · mean|g_s| (the paper uses 1; 0 measured best, RESULTS.md).")
    helpfulness: float = Field(0.0, ge=0, description="λ_h · mean|g_h − 1|.")
    scope: Literal["answer", "all"] = Field("answer", description="Average over answer tokens or all real tokens.")


class RouterStage(TrainOverrides):
    beta: float = Field(0.1, gt=0, description="DPO β of router training.")
    granularity: Literal["token", "prompt"] = Field("token", description="Gates per token or per prompt.")
    input: Literal["token", "token+prompt"] = Field(
        "token+prompt", description="Router input: the token's h, or h and the prompt's mean h (measured best)."
    )
    hidden: int | None = Field(None, gt=0, description="Router MLP hidden size (null: one linear map).")
    penalty: RouterPenalty = Field(default_factory=RouterPenalty)


class GenerateStage(Strict):
    prompts: list[str] = Field(
        default_factory=lambda: ["embedded:toy-safety/eval-prompts"], min_length=1, description="Prompt sets."
    )
    models: list[Literal["base", "safety_expert", "helpfulness_expert", "midpo"]] = Field(
        default_factory=lambda: ["base", "safety_expert", "helpfulness_expert", "midpo"], min_length=1
    )
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(32, gt=0)
    seed: int = 0
    max_prompt_length: int | None = Field(None, gt=0)
    gate_sweep: Literal["grid"] | list[list[float]] = Field(
        "grid", description="Fixed [g_s, g_h] blends of the MidPO model to compare with its router; 'grid' = "
        "g_s, g_h in {0, .25, .5, .75, 1} (25 blends); [] = none."
    )
    sweep_prompts: list[str] | None = Field(
        None, description="Prompt sets (names or specs) the gate and dial sweeps run on (null: all)."
    )
    safety_bias: float = Field(0.0, description="Safety dial of the midpo model: + safety-gate logit, − helpfulness.")
    dial_sweep: list[float] = Field(default_factory=list, description="Safety biases to sweep (midpo@dial=B).")
    gate_maps: int = Field(4, ge=0, description="Prompts per kind (harmful, benign, trap) with per-token gate maps.")

    @field_validator("gate_sweep")
    @classmethod
    def _gates_in_unit_square(cls, value: Any) -> Any:
        for pair in [] if value == "grid" else value:
            if len(pair) != 2 or not all(0.0 <= g <= 1.0 for g in pair):
                raise ValueError(f"each entry must be [g_safety, g_helpfulness] in [0, 1], got {pair}")
        return value

    @field_validator("safety_bias")
    @classmethod
    def _finite_bias(cls, value: float) -> float:
        if value != value or abs(value) == float("inf"):
            raise ValueError(f"must be a finite number, got {value!r}")
        return value

    def gate_blends(self) -> list[tuple[float, float]]:
        """The fixed blends to generate: the 5×5 grid, or the listed pairs in their order."""
        if self.gate_sweep == "grid":
            levels = (0.0, 0.25, 0.5, 0.75, 1.0)
            return [(gs, gh) for gs in levels for gh in levels]
        return [(float(a), float(b)) for a, b in self.gate_sweep]


class ScoreStage(Strict):
    batch_size: int = Field(32, gt=0)
    refusal_patterns: list[str] | None = Field(None, description="Regexes that mark a refusal (default: built-in).")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals.")
    select_on: str | None = Field(
        None, description="Prompt set on which the best fixed blend is chosen (null: the one named *dev-prompts; "
        "without one, each set chooses its own, marked in-sample)."
    )


class Stages(Strict):
    sft: SFTStage = Field(default_factory=SFTStage)
    reward_model: ScoreModelStage = Field(default_factory=ScoreModelStage)
    cost_model: ScoreModelStage = Field(default_factory=ScoreModelStage)
    safety_expert: ExpertStage = Field(default_factory=ExpertStage)
    helpfulness_expert: ExpertStage = Field(default_factory=ExpertStage)
    dpo_expert: ExpertStage = Field(
        default_factory=lambda: ExpertStage(loss="dpo"),
        description="The plain-DPO baseline (margin 0, `better` pairs), kept beside the helpfulness expert.",
    )
    rank: RankStage = Field(default_factory=RankStage)
    router: RouterStage = Field(default_factory=RouterStage)
    generate: GenerateStage = Field(default_factory=GenerateStage)
    score: ScoreStage = Field(default_factory=ScoreStage)


class Recipe(Strict):
    run_dir: str = Field("runs/midpo", description="Where every stage writes <run_dir>/<stage>/.")
    base_model: str = Field("embedded:tiny-llama", description="Base LM: embedded:, hub name or path.")
    tokenizer: str | None = Field(None, description="Tokenizer (default: the base model's).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off by default).")
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    stages: Stages = Field(default_factory=Stages)

    def train_settings(self, stage: str) -> TrainSettings:
        """The stage's effective training settings: `train:` overlaid with the stage's own keys."""
        if stage not in TRAINING_STAGES:
            raise KeyError(stage)
        overrides = getattr(self.stages, stage)
        merged = self.train.model_dump()
        for name in TrainOverrides.model_fields:
            value = getattr(overrides, name)
            if value is not None:
                merged[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return TrainSettings.model_validate(merged)

    def resolved(self) -> dict[str, Any]:
        """The recipe as a plain dict with every training stage's inherited settings filled in."""
        out = self.model_dump(mode="json")
        for stage in TRAINING_STAGES:
            out["stages"][stage].update(self.train_settings(stage).model_dump(mode="json"))
        return out


# ---------------------------------------------------------------------------------------------
# YAML with line numbers, and YAML 1.2 floats ("1e-4" is a number, not a string).

_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].append(("tag:yaml.org,2002:float", _FLOAT_RE))


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML and map each key path ("stages.router.granularity") to its 1-based line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{where}: invalid YAML: {problem}") from None
    if node is None:
        return {}, {}
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, path: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                child = f"{path}.{key.value}" if path else str(key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                child = f"{path}.{i}"
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    walk(node, "")
    return yaml.load(text, Loader=_Loader), lines  # noqa: S506 - _Loader is a SafeLoader


def parse_value(text: str) -> Any:
    """Type a `--set` value the way YAML would: 3e-5 → float, true → bool, [0,1] → list, x → str."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError:
        return text


Override = str | tuple[str, str]  # "a.b=c", or ("a.b=c", "--rule") when a command flag set it


def apply_overrides(data: dict[str, Any], overrides: list[Override]) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply `a.b=c` overrides in order; return the data and {path: '--set' or the flag} for error messages.

    A mapping value merges into the section like a recipe file's does (`--set 'train={lr: 1e-3}'` keeps
    train.batch_size), instead of replacing the whole section with defaults.
    """
    origin: dict[str, str] = {}
    for entry in overrides:
        item, flag = entry if isinstance(entry, tuple) else (entry, None)
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise InputError(f"--set {item!r}: empty key")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise InputError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        value = parse_value(raw)
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            value = deep_merge(node[parts[-1]], value)
        node[parts[-1]] = value
        origin[".".join(parts)] = flag or "--set"
    return data, origin


# ---------------------------------------------------------------------------------------------
# Validation errors → one readable line each.


class RecipeError(InputError):
    """Every problem of a recipe at once; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        # one problem: one line (scripts and logs read one `error:` line); several: a header and one each
        text = problems[0] if len(problems) == 1 else (
            f"{len(problems)} problem(s) in the recipe:\n" + "\n".join(problems))
        super().__init__(text)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; allowed: {', '.join(allowed)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = [c.strip().strip("'") for c in re.split(r",| or ", expected) if c.strip()]
        return f"must be one of {', '.join(choices)}, got {value!r}"
    if kind == "missing":
        return "required key is missing"
    names = {
        "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
        "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
        "model_type": "a mapping", "int_from_float": "an integer",
    }
    if kind in names:
        return f"must be {names[kind]}, got {value!r}"
    for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in ctx and kind.startswith(("greater", "less")):
            return f"must be {op} {ctx[key]}, got {value!r}"
    return err["msg"].removeprefix("Value error, ")


def _problem_lines(exc: ValidationError, source: str, lines: dict[str, int], origin: dict[str, str]) -> list[str]:
    out = []
    for err in exc.errors():
        # Drop union-branch markers pydantic adds for `X | None` fields.
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and p.endswith("]")) and p != "function-after"
        )
        path = ".".join(str(p) for p in loc)
        # the override that set this key, a key below it (`--set train.x.deep=3` → train.x) or above it
        where = next((label for key, label in origin.items()
                      if key == path or key.startswith(path + ".") or path.startswith(key + ".")), None)
        if where is None:
            probe = path
            while probe and probe not in lines:
                probe = probe.rpartition(".")[0]
            where = f"{source}:{lines[probe]}" if probe in lines else source
        err = {**err, "loc": loc}
        out.append(f"{where} {path or '<root>'}: {_describe(err)}")
    return list(dict.fromkeys(out))


def load_recipe(
    path: str | Path | None = None,
    overrides: list[Override] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    source = str(path) if path is not None else "<defaults>"
    data: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise InputError(f"recipe file not found: {file}")
        text = _read_text(file)
        data, lines = parse_yaml(text, source)
        if not lines and yaml.compose(text, Loader=_Loader) is None:  # blank or only comments; `{}` is not
            raise InputError(f"{source}: the recipe is empty, so every key would take its default (run_dir "
                             f"{Recipe.model_fields['run_dir'].default}, base_model "
                             f"{Recipe.model_fields['base_model'].default}, data embedded:toy-safety); "
                             "write `{}` to mean exactly that")
        if not isinstance(data, dict):
            raise InputError(f"{source}: a recipe must be a mapping of keys, got {type(data).__name__}")
    if base:
        data = deep_merge(base, data)
    data, origin = apply_overrides(data, list(overrides or []))
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_problem_lines(exc, source, lines, origin)) from None


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{file}: cannot read the recipe ({exc.strerror})") from None


def deep_merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: `high`'s keys over `low`'s, sections merged key by key; neither input is changed.

    For recipes (a base, a file, `--set` sections) and DeepSpeed configs (a user JSON over the recipe's).
    """
    out = copy.deepcopy(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
