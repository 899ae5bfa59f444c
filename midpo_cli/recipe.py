"""The recipe: one typed YAML document that describes a run (docs/design.md §4).

Everything is checked before any model loads: unknown keys, wrong types and bad choices are
collected and reported together, each with its key path and, where it came from a file, the line.
This module imports no torch: `midpo recipe check` must answer in well under a second.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from midpo_cli.errors import InputError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Template = Literal["auto", "safe-rlhf", "chat"]
LauncherKind = Literal["none", "deepspeed", "torchrun"]
LAUNCHER_KINDS = get_args(LauncherKind)  # one list for the schema and `--launcher`'s choices
# The baselines MidPO is compared with (docs/design.md §2.11): `stages.baselines` lists which run; each is a
# stage `baseline_<kind>` with its own folder, section and command (`midpo train-baseline --kind K`, whose
# choices are this list).
BASELINE_KINDS = ("dpo_helpful", "dpo_safe", "modpo", "safedpo", "ties")
BASELINE_STAGES = tuple(f"baseline_{kind}" for kind in BASELINE_KINDS)
TRAINED_BASELINES = BASELINE_STAGES[:-1]  # ties merges the experts: it trains nothing
# The expert whose settings a trained baseline inherits: dpo_safe is the safety expert's plain-DPO counterpart,
# the others train on the helpfulness expert's `better` pairs.
BASELINE_PARENT = {"baseline_dpo_safe": "safety_expert"}
TRAINING_STAGES = ("sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "router", "dpo_expert",
                   *TRAINED_BASELINES)
STAGE_ORDER = (
    "sft", "reward_model", "cost_model", "safety_expert", "helpfulness_expert", "rank", "router",
    "generate", "score",
)
# Stages outside the pipeline's default order: run on request (`midpo train-expert --kind dpo`, `--only`).
OPTIONAL_STAGES = ("dpo_expert",)
# Every stage in dependency order; the baselines run when `stages.baselines` lists them, before generate.
ALL_STAGES = (*STAGE_ORDER[:-2], *BASELINE_STAGES, *STAGE_ORDER[-2:], *OPTIONAL_STAGES)
DEFAULT_PROMPTS = ("embedded:toy-safety/eval-prompts",)  # what a recipe that names no prompt set answers
MAX_SEED = 2**32 - 1  # numpy's and torch's seeders take 0 … 2³²−1; −1 or 1e23 failed later with a ValueError


def _expand_user(value: str | None) -> str | None:
    """`~/x` (or `NAME=~/x`) → the home folder's x, once, where the recipe is read: the writer used to create a
    literal `./~` folder (only the checks expanded it), a folder a user may then `rm -rf ~` to remove."""
    if not isinstance(value, str):
        return value
    label, sep, rest = value.partition("=")
    if sep and rest.startswith("~") and not label.startswith("~"):
        return f"{label}={os.path.expanduser(rest)}"
    return os.path.expanduser(value) if value.startswith("~") else value


PathStr = Annotated[str, AfterValidator(_expand_user)]


class Strict(BaseModel):
    """Unknown keys are errors, types are not coerced (a quoted "0.1" is not a number)."""

    # allow_inf_nan=False: `.inf`/`.nan` passed `recipe check` and failed later as "loss nan … lower the lr"
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


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
    lr: float = Field(1e-4, gt=0, le=1, description="Peak learning rate (at most 1: AdamW diverges above it).")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: off).")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed for weights init, data order and dropout "
                      "(0 … 2³²−1, what numpy's and torch's seeders take).")
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
    train: PathStr = Field(
        "embedded:toy-safety/train", description="Pair dataset: embedded:, hub org/name[:split], or a path."
    )
    eval: PathStr | None = Field("embedded:toy-safety/test", description="Held-out pairs for evaluation and audits.")
    sft: PathStr | None = Field("embedded:toy-safety/sft", description="Prompt/answer rows for train-sft.")
    columns: dict[str, str] = Field(default_factory=dict, description="Canonical column → source column.")
    dev_prompts: PathStr | None = Field(
        None, description="The dev prompt set (`prompt`, `is_harmful`, optional `category`): every dev choice — the "
        "best fixed blend, the probe switch's threshold, an expert's `select: dev` — is made on it; generate answers "
        "it. Null: the entry of stages.generate.prompts named *dev-prompts (or stages.score.select_on).")
    eval_prompts: list[PathStr] = Field(
        default_factory=list, description="The prompt sets the report is about (same schema); generate answers them.")
    max_length: int = Field(256, gt=8, description="Max tokens of prompt + answer.")
    max_prompt_length: int | None = Field(None, gt=0, description="Max prompt tokens (left-truncated).")
    template: Template = Field(
        "auto", description="Prompt template: auto (the tokenizer's chat template if it has one, else safe-rlhf), "
        "safe-rlhf, or chat."
    )


    @field_validator("eval_prompts", mode="before")
    @classmethod
    def _one_set_is_a_list(cls, value: Any) -> Any:
        """`eval_prompts: x.jsonl` means the list of that one set."""
        return [value] if isinstance(value, str) else value


class DeepSpeedSettings(Strict):
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage.")
    config: PathStr | None = Field(None, description="A DeepSpeed JSON merged under the recipe's batch sizes.")
    offload: bool = Field(False, description="Offload optimizer state to CPU (DeepSpeed CPU Adam).")


class LauncherSettings(Strict):
    kind: LauncherKind = Field("none", description="Multi-process launcher.")
    num_gpus: int | None = Field(None, gt=0, description="Processes (GPUs) per node.")
    num_nodes: int = Field(1, gt=0, description="Nodes.")
    hostfile: PathStr | None = Field(None, description="DeepSpeed hostfile for multi-node runs.")
    master_port: int | None = Field(None, gt=0, lt=65536, description="Rendezvous port.")


# the experiment trackers (engine/trackers.py) and their packages, checked here so a missing one is a recipe error
TRACKERS = ("tensorboard", "wandb", "mlflow")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def install_hint(name: str) -> str:
    return f"pip install 'midpo-cli[{name}]'"


def missing_package(name: str) -> bool:
    """True when tracker `name`'s package cannot be imported (a module already in sys.modules counts)."""
    import importlib.util
    import sys

    package = TRACKER_PACKAGES[name]
    if package in sys.modules:
        return False
    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


class LoggingSettings(Strict):
    tensorboard: bool = Field(False, description="Also write TensorBoard event files.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers, as in TRL: tensorboard, wandb, mlflow.")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        """A tracker without its package would fail after models load: refuse now, naming the extra."""
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
            raise ValueError(f"the tensorboard package is not installed; {install_hint('tensorboard')}, or set it "
                             "to false")
        return value


class SFTStage(TrainOverrides):
    enabled: bool = Field(True, description="Run SFT; false uses base_model as the policy.")
    use: PathStr | None = Field(None, description="Skip training and use this model as the base policy.")
    data: PathStr | None = Field(None, description="Prompt/answer data (default: data.sft).")
    answers: Literal["column", "better", "safer"] = Field(
        "column", description="'column' reads `answer`; better/safer pick from a pair dataset."
    )
    corpus: PathStr | None = Field(
        None, description="Plain text (a `text` column) mixed into SFT, loss on every token: the domain's language."
    )


class ScoreModelStage(TrainOverrides):
    use: PathStr | None = Field(None, description="Use this score model instead of training one.")
    base_model: PathStr | None = Field(None, description="Backbone to start from (default: the SFT policy).")
    score_regularization: float = Field(0.001, ge=0, le=100, description="λ of the score² regulariser (at most "
                                        "100: beyond it the regulariser alone decides the loss).")
    min_accuracy: float = Field(0.6, ge=0, le=1, description="Refuse to use the model below this accuracy.")


class LoraSettings(Strict):
    r: int = Field(16, gt=0, le=8192, description="LoRA rank (at most 8192, the width of the largest common "
                   "models: a rank above the layer's width adds no capacity; 1e9 tried to allocate 2 TB).")
    alpha: float = Field(32.0, gt=0, le=1e4, description="LoRA alpha (scaling = alpha / r; at most 1e4, "
                         "far above any published setting, where the update's scale alone overflows).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Linear layers to adapt (null: the architecture's MLP output, e.g. down_proj)."
    )
    shared_a: bool = Field(False, description="Freeze lora_A at its seeded init and train lora_B only; set on both "
                           "experts (same r, targets and seed) they share one A, so their updates live in one "
                           "subspace and a mix of the two is a mix of B's (LoRI; docs/design.md §2.6).")


class ExpertStage(TrainOverrides):
    beta: float = Field(0.1, gt=0, le=100, description="DPO β (at most 100: published values are 0.01 … 1, and "
                        "β·log-ratio overflows float32 long before 1e308).")
    margin_scale: float = Field(1.0, ge=0, le=100, description="γ multiplying the SPE-DPO margin (at most 100: "
                                "the margin is a score difference of order 1; 1e308 made the loss inf).")
    loss: Literal["spe", "dpo"] = Field("spe", description="spe: score-model margin; dpo: plain DPO.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    precompute_ref: bool = Field(True, description="Compute reference log-probs once before training.")
    select: Literal["last", "dev"] = Field(
        "last", description="Which step's adapter to keep: the last, or the best on the dev prompts by the expert's "
        "own objective (midpo_cli.evaluation.expert_select), within the step budget.")
    select_every: int | None = Field(None, gt=0, description="select: dev — keep a snapshot every N steps.")

    @model_validator(mode="after")
    def _select_every_given(self) -> ExpertStage:
        if self.select == "dev" and self.select_every is None:
            raise ValueError("select: dev needs select_every (a snapshot every N optimizer steps)")
        return self


RankRule = Literal["joint", "expert", "models", "labels", "agree"]
RANK_RULES = get_args(RankRule)  # one list for the schema and `midpo rank --rule`'s help


MAX_WEIGHT = 100.0  # a baseline's objective weights, as the experts' margin_scale and beta: 1e308 overflowed


class BaselineStage(TrainOverrides):
    """A trained baseline: every unset key is its expert's (BASELINE_PARENT), so only the objective differs."""

    beta: float | None = Field(None, gt=0, le=100, description="DPO β (null: its expert's; at most 100, the "
                               "experts' bound).")
    lora: LoraSettings | None = Field(None, description="LoRA settings (null: its expert's).")
    precompute_ref: bool | None = Field(None, description="Reference log-probs cached once (null: the expert's).")


class ModpoStage(BaselineStage):
    weights: list[float] = Field(
        default_factory=lambda: [0.5, 0.5], description="[w_helpfulness, w_safety] of MODPO, normalised to sum 1; "
        "each at most 100 and w_safety / w_helpfulness at most 100 (MODPO's margin scale and β / w_helpfulness: "
        "the experts' bounds on margin_scale and beta).")

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not all(w == w and 0 <= w <= MAX_WEIGHT for w in value):
            raise ValueError(f"must be [w_helpfulness, w_safety], two finite numbers >= 0 and <= {MAX_WEIGHT:g}, "
                             f"got {value}")
        if value[0] <= 0 or value[1] > MAX_WEIGHT * value[0]:
            raise ValueError(f"must sum to a positive number with w_helpfulness > 0 (MODPO divides by it) and "
                             f"w_safety / w_helpfulness <= {MAX_WEIGHT:g}, got {value}")
        return value

    def normalised(self) -> tuple[float, float]:
        total = sum(self.weights)
        return self.weights[0] / total, self.weights[1] / total


class SafeDpoStage(BaselineStage):
    delta: float = Field(2.0, ge=0, le=100, description="SafeDPO's safety offset Δ (added to safe-vs-unsafe pairs; at "
                         "most 100, the experts' bound on margin_scale).")


class MergeStage(Strict):
    """The two experts merged into one adapter (TIES / DARE-TIES) by peft; nothing is trained."""

    method: Literal["ties_svd", "ties", "dare_ties_svd", "dare_ties"] = Field(
        "ties_svd", description="peft's add_weighted_adapter combination: TIES (or DARE-TIES) on each layer's ΔW = B·A "
        "(_svd, refactored to rank r) or on A and B separately."
    )
    density: float = Field(0.5, ge=0.01, le=1, description="Fraction of each expert's delta kept (TIES/DARE trim; at "
                           "least 0.01: below it the trim keeps nothing of a small layer, an empty adapter).")
    weights: list[list[float]] = Field(
        default_factory=lambda: [[0.5, 0.5], [1.0, 1.0]],
        description="Candidate [w_safety, w_helpfulness]; with several, each is generated on the sweep sets and "
        "the report keeps the one best on the dev set, like the fixed blends.",
        min_length=1,
    )

    @field_validator("weights")
    @classmethod
    def _weight_pairs(cls, value: list[list[float]]) -> list[list[float]]:
        for pair in value:
            if len(pair) != 2 or not all(w == w and 0 <= w <= MAX_WEIGHT for w in pair) or sum(pair) <= 0:
                raise ValueError(f"each entry must be [w_safety, w_helpfulness], in [0, {MAX_WEIGHT:g}] and "
                                 f"summing > 0, got {pair}")
        return value


class RankStage(Strict):
    rule: RankRule = Field(
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


class RouterSupervision(Strict):
    weight: float = Field(0.0, ge=0, description="λ of the gate-supervision term (0: off, the router of the paper).")
    helpfulness: Literal["inverse", "free"] = Field(
        "inverse", description="g_h's target: inverse (→ 0 on harmful, → 1 on benign prompts) or free (none).")
    scope: Literal["answer", "prompt", "both"] = Field(
        "answer", description="The tokens whose gates are supervised: answer, prompt, or both.")
    prompts: Literal["dual", "ranked"] = Field(
        "dual", description="What is supervised: D_dual's pairs, beside the DPO term; or ranked: every distinct "
        "prompt rank scored, alone (prompt tokens, rank's kind — as the probe switch's `switch_prompts: ranked`), "
        "which needs dpo_weight 0: the prompts have no answers to prefer.")


class RouterStage(TrainOverrides):
    beta: float = Field(0.1, gt=0, le=100, description="DPO β of router training (at most 100, as the experts').")
    dpo_weight: float = Field(
        1.0, ge=0, description="Weight of the DPO term; 0 with supervision.weight > 0 trains on supervision only.")
    supervision: RouterSupervision = Field(
        default_factory=RouterSupervision, description="Gate supervision: BCE on the gate logits toward the prompt's "
        "kind (rank's is_harmful): g_s → 1 on harmful, → 0 on benign prompts.")
    kind: Literal["learned", "probe"] = Field(
        "learned", description="learned: the trained router; probe: a switch from a linear probe on the router's "
        "input (midpo_cli.modeling.switch); also built when stages.generate.models lists probe_switch.")
    switch: Literal["hard", "soft"] = Field(
        "hard", description="The probe switch's gates: hard (1, 0) / (0, 1) at a threshold chosen on the dev "
        "prompts, or soft (p, 1 − p).")
    switch_prompts: Literal["dual", "ranked"] = Field(
        "dual", description="The prompts the probe switch is fit on: dual (D_dual's, the router's pairs) or ranked "
        "(every distinct prompt rank scored, with rank's kind: the labels, else the cost model).")
    granularity: Literal["token", "prompt"] = Field("token", description="Gates per token or per prompt.")
    solver: Literal["adam", "lbfgs"] = Field(
        "adam", description="adam: the routers train by the stage's objective with the engine's optimizer; lbfgs: "
        "gate supervision alone, solved exactly per layer — each layer's router is the L2-regularised logistic "
        "probe of its own input (the prompt's mean h, routing off) on the supervised prompts, fit as the probe "
        "switch's is (needs dpo_weight 0, granularity prompt, hidden null).")
    decision: Literal["soft", "top1", "vote"] = Field(
        "soft", description="soft: sigmoid gates, the paper's mix of both experts; top1: each layer's router picks "
        "the expert with the larger logit, gates (1, 0) or (0, 1) (straight-through in training), so no layer "
        "mixes the experts; vote: one top-1 decision per prompt for every layer, from the mean of the layers' "
        "logits on their own prompt mean h (needs granularity prompt and solver lbfgs; docs/design.md §2.8).")
    input: Literal["token", "token+prompt"] = Field(
        "token+prompt", description="Router input: the token's h, or h and the prompt's mean h (measured best)."
    )
    hidden: int | None = Field(None, gt=0, description="Router MLP hidden size (null: one linear map).")
    penalty: RouterPenalty = Field(default_factory=RouterPenalty)

    @model_validator(mode="after")
    def _something_to_learn(self) -> RouterStage:
        if self.dpo_weight == 0 and self.supervision.weight == 0:
            raise ValueError("dpo_weight 0 and supervision.weight 0 leave the router nothing to learn")
        if self.solver == "lbfgs" and (self.dpo_weight != 0 or self.supervision.weight == 0
                                       or self.granularity != "prompt" or self.hidden is not None):
            raise ValueError("solver: lbfgs fits each layer's linear router to the prompt's kind from the prompt's "
                             "mean h: set dpo_weight: 0, supervision.weight > 0, granularity: prompt, hidden: null")
        if self.decision == "vote" and self.solver != "lbfgs":
            raise ValueError("decision: vote decides from a prefill with routing off, which no gradient reaches: "
                             "set solver: lbfgs (the routers fit per layer)")
        if self.supervision.prompts == "ranked" and (self.dpo_weight != 0 or self.supervision.weight == 0):
            raise ValueError("supervision.prompts: ranked trains on prompts alone (no answers to prefer): set "
                             "dpo_weight: 0 and supervision.weight > 0, or supervision.prompts: dual")
        return self


class GenerationSettings(Strict):
    """The sampling settings of one generation pass, defined once: the generate stage's recipe section
    (below, which answers 32 prompts a batch), `midpo generate`'s and `midpo chat`'s option defaults, and the
    library (modeling.generation.generate_answers, stages.generate.generate_to_file, modeling.chat_session).
    The prompt template, the seventh setting, is a recipe's `data.template` (one per run, shared with the
    training stages)."""

    max_new_tokens: int = Field(64, gt=0, description="Tokens to generate at most.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(16, gt=0, description="Prompts per batch.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Sampling seed (0 … 2³²−1).")
    max_prompt_length: int | None = Field(None, gt=0, description="Prompt tokens kept, from the end (null: the "
                                          "model's context minus max_new_tokens).")

    def but(self, **changes: Any) -> GenerationSettings:
        """These settings (of a recipe section too) with some changed, checked like a recipe; a bad value is
        an InputError."""
        try:
            return GenerationSettings.model_validate({**{k: getattr(self, k) for k in GenerationSettings.model_fields},
                                                      **changes})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"generation setting {where}: {first['msg']}") from None


class GenerateStage(GenerationSettings):
    batch_size: int = Field(32, gt=0, description="Prompts per batch (`midpo generate` answers 16).")
    prompts: list[PathStr] | None = Field(
        None, description="Prompt sets answered beside data.dev_prompts and data.eval_prompts (null: none, or the "
        "toy world's eval-prompts when the recipe names no prompt set at all; Recipe.prompt_sets)."
    )
    models: list[Literal["base", "safety_expert", "helpfulness_expert", "midpo", "probe_switch"]] = Field(
        default_factory=lambda: ["base", "safety_expert", "helpfulness_expert", "midpo"], min_length=1
    )
    gate_sweep: Literal["grid"] | list[list[float]] = Field(
        "grid", description="Fixed [g_s, g_h] blends of the MidPO model to compare with its router; 'grid' = "
        "g_s, g_h in {0, .25, .5, .75, 1} (25 blends); [] = none."
    )
    sweep_prompts: list[PathStr] | None = Field(
        None, description="Prompt sets (names or specs) the gate and dial sweeps run on (null: all)."
    )
    safety_bias: float = Field(0.0, description="Safety dial of the midpo model: + safety-gate logit, − helpfulness.")
    dial_sweep: Literal["wide"] | list[float] = Field(
        default_factory=list, description="Safety biases to sweep (midpo@dial=B); 'wide' = ±1, ±2, ±4, ±8, ±16, "
        "from near the helpfulness corner to near the safety corner; [] = none.")
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

    def dial_biases(self) -> list[float]:
        """The safety-dial settings to generate: `wide` (a logit shift of 16 saturates any gate whose trained
        logit is within ±4 of 0 to within 1e-5 of a corner), or the listed biases in their order."""
        if self.dial_sweep == "wide":
            return [-16.0, -8.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0, 16.0]
        return [float(b) for b in self.dial_sweep]

    def gate_blends(self) -> list[tuple[float, float]]:
        """The fixed blends to generate: the 5×5 grid, or the listed pairs in their order."""
        if self.gate_sweep == "grid":
            levels = (0.0, 0.25, 0.5, 0.75, 1.0)
            return [(gs, gh) for gs in levels for gh in levels]
        return [(float(a), float(b)) for a, b in self.gate_sweep]


JUDGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")  # a judge's name goes into column names and files
JUDGE_KINDS = ("toy", "score-models", "guard", "openai")  # docs/judges.md; `judge: null` = toy, then score-models


class JudgeSpecBase(Strict):
    name: str | None = Field(None, description="The judge's name in scores.csv columns and the report (default: "
                             "its kind); two judges of one kind need names.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not JUDGE_NAME.fullmatch(value):
            raise ValueError(f"must be 1-40 letters, digits, '_', '.' or '-', got {value!r}")
        return value


class ToyJudgeSpec(JudgeSpecBase):
    """The toy world's ground truth: judges a prompt set only when every prompt is one of the toy world's."""


class ScoreModelsJudgeSpec(JudgeSpecBase):
    reward: PathStr | None = Field(None, description="Reward model (default: the run's, or `midpo score "
                                   "--reward-model`); an independent one such as a beaver-7b-unified-reward.")
    cost: PathStr | None = Field(None, description="Cost model (default: the run's); safe ⇔ cost < 0.")


class GuardJudgeSpec(JudgeSpecBase):
    model: PathStr = Field(..., description="A safety classifier (Llama Guard / ShieldGemma style): folder or hub.")
    threshold: float = Field(0.5, gt=0, lt=1, description="An answer is unsafe when P(unsafe) ≥ this.")
    unsafe_token: str = Field("unsafe", min_length=1, description="The first answer word meaning unsafe.")
    safe_token: str = Field("safe", min_length=1, description="The first answer word meaning safe.")
    batch_size: int = Field(8, gt=0, description="Conversations per forward.")
    template_kwargs: dict[str, str] = Field(default_factory=dict, description="Extra variables of the guard's "
                                            "chat template (e.g. ShieldGemma's guideline).")


class OpenAIJudgeSpec(JudgeSpecBase):
    base_url: str = Field(..., min_length=1, description="An OpenAI-compatible API, e.g. https://api.openai.com/v1 "
                          "or a local vLLM's http://localhost:8000/v1.")
    model: str = Field(..., min_length=1, description="The judge model's name at that endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (never written "
                                    "anywhere); null: no key.")
    rubric: PathStr | None = Field(None, description="A rubric text file (null: midpo's, docs/judges.md).")
    concurrency: int = Field(4, gt=0, le=64, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one request may take.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a failed request (timeout, 429, 5xx, bad JSON).")
    backoff_s: float = Field(1.0, ge=0, description="First wait before a retry; doubled each time.")
    max_tokens: int = Field(200, gt=0, description="Reply tokens at most.")


class JudgeEntry(Strict):
    """One judge of `stages.score.judge`: `toy`, `score-models`, `{guard: FOLDER_OR_HUB}` or one of the mappings
    `{toy: {…}}`, `{score-models: {…}}`, `{guard: {…}}`, `{openai: {…}}`."""

    toy: ToyJudgeSpec | None = None
    score_models: ScoreModelsJudgeSpec | None = None
    guard: GuardJudgeSpec | None = None
    openai: OpenAIJudgeSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ("toy", "score-models"):
                raise ValueError(f"must be toy, score-models or a mapping {{guard: …}} / {{openai: …}} / "
                                 f"{{score-models: …}}, got {value!r}")
            value = {value: {}}
        if isinstance(value, dict):
            value = {("score_models" if k == "score-models" else k): v for k, v in value.items()}
            if isinstance(value.get("guard"), str):
                value["guard"] = {"model": value["guard"]}
            value = {k: ({} if v is None and k in ("toy", "score_models") else v) for k, v in value.items()}
        return value

    @model_serializer(mode="wrap")
    def _only_the_judge(self, handler: Any) -> dict[str, Any]:
        """Dumped as written, `{kind: {…}}`, so a resolved recipe reads back as the same judge."""
        return {k: v for k, v in handler(self).items() if v is not None}

    @model_validator(mode="after")
    def _exactly_one(self) -> JudgeEntry:
        if sum(getattr(self, k) is not None for k in JudgeEntry.model_fields) != 1:
            raise ValueError("one judge per entry: toy, score-models, guard or openai")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in JUDGE_KINDS if getattr(self, k.replace("-", "_")) is not None)

    @property
    def spec(self) -> JudgeSpecBase:
        return getattr(self, self.kind.replace("-", "_"))

    @property
    def name(self) -> str:
        return self.spec.name or self.kind


class ScoreStage(Strict):
    batch_size: int = Field(32, gt=0)
    refusal_patterns: list[str] | None = Field(None, description="Regexes that mark a refusal (default: built-in).")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals.")
    select_on: str | None = Field(
        None, description="Prompt set on which the best fixed blend is chosen (null: the one named *dev-prompts; "
        "without one, each set chooses its own, marked in-sample)."
    )
    judge: list[JudgeEntry] | None = Field(
        None, description="The judges of every answer, first = the one each prompt set's statistics use where it "
        "can judge the set (null: toy, then score-models; docs/judges.md).")
    dev_judge: str | None = Field(
        None, description="The judge (by name) of every dev choice: the dev-chosen blend, an expert's select: dev, "
        "the switch's threshold (null: the first judge that can judge the dev set).")

    @field_validator("judge", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @model_validator(mode="after")
    def _judge_names(self) -> ScoreStage:
        names = [entry.name for entry in self.judges()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"judge: two judges named {twice[0]!r}; give each a name: (e.g. name: {twice[0]}-2)")
        if self.dev_judge is not None and self.dev_judge not in names:
            raise ValueError(f"dev_judge {self.dev_judge!r} is none of the judges ({', '.join(names)})")
        return self

    def judges(self) -> list[JudgeEntry]:
        """The judges in order; `judge: null` is toy then score-models (each judges the sets it can)."""
        if self.judge is not None:
            return list(self.judge)
        return [JudgeEntry.model_validate("toy"), JudgeEntry.model_validate("score-models")]


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
    baselines: list[Literal[BASELINE_KINDS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Baselines trained beside MidPO and compared in the report: "
        f"{', '.join(BASELINE_KINDS)} (docs/design.md §2.11)."
    )
    baseline_dpo_helpful: BaselineStage = Field(default_factory=BaselineStage, description="DPO on `better` pairs.")
    baseline_dpo_safe: BaselineStage = Field(default_factory=BaselineStage, description="DPO on the safety pairs.")
    baseline_modpo: ModpoStage = Field(default_factory=ModpoStage, description="MODPO with the cost model's margin.")
    baseline_safedpo: SafeDpoStage = Field(default_factory=SafeDpoStage, description="SafeDPO.")
    baseline_ties: MergeStage = Field(default_factory=MergeStage, description="The experts merged (TIES/DARE).")
    rank: RankStage = Field(default_factory=RankStage)
    router: RouterStage = Field(default_factory=RouterStage)
    generate: GenerateStage = Field(default_factory=GenerateStage)
    score: ScoreStage = Field(default_factory=ScoreStage)


class Recipe(Strict):
    run_dir: PathStr = Field("runs/midpo", min_length=1, description="Where every stage writes <run_dir>/<stage>/ "
                             "(not empty: that wrote the stages into the working directory).")
    base_model: PathStr = Field("embedded:tiny-llama", description="Base LM: embedded:, hub name or path.")
    tokenizer: PathStr | None = Field(None, description="Tokenizer (default: the base model's).")
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
        # a baseline trains as its expert does (BASELINE_PARENT), unless its own section says otherwise
        layers = [getattr(self.stages, self.baseline_parent(stage)), getattr(self.stages, stage)] \
            if stage in BASELINE_STAGES else [getattr(self.stages, stage)]
        merged = self.train.model_dump()
        for overrides in layers:
            for name in TrainOverrides.model_fields:
                value = getattr(overrides, name)
                if value is not None:
                    merged[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return TrainSettings.model_validate(merged)

    @staticmethod
    def baseline_parent(stage: str) -> str:
        return BASELINE_PARENT.get(stage, "helpfulness_expert")

    def baseline_policy(self, stage: str) -> dict[str, Any]:
        """A trained baseline's beta, lora and precompute_ref: its own where set, else its expert's."""
        own, expert = getattr(self.stages, stage), getattr(self.stages, self.baseline_parent(stage))
        return {key: getattr(own, key) if getattr(own, key) is not None else getattr(expert, key)
                for key in ("beta", "lora", "precompute_ref")}

    def listed_baselines(self) -> tuple[str, ...]:
        """The stages of `stages.baselines`, in pipeline order."""
        return tuple(s for s in BASELINE_STAGES if s.removeprefix("baseline_") in self.stages.baselines)

    def prompt_sets(self) -> list[str]:
        """Every prompt set generate answers, in order: the dev set, the eval sets, then stages.generate.prompts;
        a recipe that names none answers the toy world's eval prompts (what every recipe answered before roles)."""
        named = [*([self.data.dev_prompts] if self.data.dev_prompts else []), *self.data.eval_prompts,
                 *(self.stages.generate.prompts or [])]
        if not named and self.stages.generate.prompts is None:
            named = list(DEFAULT_PROMPTS)
        return list(dict.fromkeys(named))

    @model_validator(mode="after")
    def _some_prompts(self) -> Recipe:
        if not self.prompt_sets():
            raise ValueError("stages.generate.prompts: no prompt set to answer; name data.dev_prompts / "
                             "data.eval_prompts, or list sets here")
        return self

    @property
    def builds_switch(self) -> bool:
        """The router stage builds the probe switch: it is the run's router (`kind: probe`), or generate answers
        with it beside the router (`probe_switch` in stages.generate.models)."""
        return self.stages.router.kind == "probe" or "probe_switch" in self.stages.generate.models

    @model_validator(mode="after")
    def _shared_a_on_both_experts(self) -> Recipe:
        """`lora.shared_a` means one A for both experts: only when both freeze it at the same seeded init (same
        seed, rank and targets) are their A's equal, so the experts differ in B alone."""
        experts = ("safety_expert", "helpfulness_expert")
        loras = [getattr(self.stages, e).lora for e in experts]
        if not any(lora.shared_a for lora in loras):
            return self
        for key in ("shared_a", "r", "target_modules"):
            values = [getattr(lora, key) for lora in loras]
            if values[0] != values[1]:
                raise ValueError(f"lora.shared_a: the experts differ in lora.{key} ({values[0]} vs {values[1]}); "
                                 f"set stages.safety_expert.lora.{key} and stages.helpfulness_expert.lora.{key} alike")
        seeds = [self.train_settings(e).seed for e in experts]
        if seeds[0] != seeds[1]:
            raise ValueError(f"lora.shared_a: the experts' seeds differ ({seeds[0]} vs {seeds[1]}), so their frozen "
                             "A's would differ; give both stages.<expert>.seed the same value")
        return self

    @model_validator(mode="after")
    def _select_dev_in_one_process(self) -> Recipe:
        """`select: dev` snapshots the adapter and loads it back into the one process's model: no launcher, no
        ZeRO-3 (whose shards no process holds whole)."""
        if self.deepspeed.zero_stage != 3 and self.launcher.kind == "none":
            return self
        for stage, section in self.stages:
            if getattr(section, "select", None) == "dev":
                raise ValueError(f"stages.{stage}.select: dev runs in one process without ZeRO-3 (it snapshots and "
                                 "reloads the adapter); use select: last with launcher or zero_stage 3")
        return self

    def resolved(self) -> dict[str, Any]:
        """The recipe as a plain dict with every training stage's inherited settings filled in."""
        out = self.model_dump(mode="json")
        for stage in TRAINING_STAGES:
            out["stages"][stage].update(self.train_settings(stage).model_dump(mode="json"))
            if stage in BASELINE_STAGES:
                policy = self.baseline_policy(stage)
                policy["lora"] = policy["lora"].model_dump(mode="json")
                out["stages"][stage].update(policy)
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


MAX_YAML_NODES = 20_000  # a full recipe has ~300; a 9-level alias bomb expands to 9⁹ and ran until killed
MAX_YAML_DEPTH = 32  # a recipe nests 4 deep; 2000 `[` ended in a RecursionError (exit 1)
MAX_RECIPE_BYTES = 1 << 20


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML and map each key path ("stages.router.granularity") to its 1-based line.

    Bounded and strict, all before a Python object is built: aliases may not expand past MAX_YAML_NODES
    nodes, nesting past MAX_YAML_DEPTH, a key may not appear twice in a mapping (the last one silently won),
    and a tag outside the safe set (`!!python/object`) is refused with its line.
    """
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise InputError(f"{source}: the YAML nests too deeply (more than {MAX_YAML_DEPTH} levels)") from None
        if node is None:
            return None, {}
        lines: dict[str, int] = {}
        _walk(node, "", lines, source, [0], 0)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{where}: invalid YAML: {' '.join(str(problem).split())}") from None
    finally:
        loader.dispose()
    return data, lines


def _walk(n: yaml.Node, path: str, lines: dict[str, int], source: str, count: list[int], depth: int) -> None:
    """Record each key path's line; refuse duplicate keys, deep nesting and alias expansion past the bounds."""
    count[0] += 1
    if count[0] > MAX_YAML_NODES:
        raise InputError(f"{source}: the YAML expands to more than {MAX_YAML_NODES} values (aliases `*name` "
                         "repeated inside each other?); a recipe needs a few hundred")
    if depth > MAX_YAML_DEPTH:
        raise InputError(f"{source}:{n.start_mark.line + 1}: the YAML nests more than {MAX_YAML_DEPTH} levels deep")
    if n.tag.startswith("tag:yaml.org,2002:python/") or (n.tag.startswith("!") and n.tag != "!"):
        raise InputError(f"{source}:{n.start_mark.line + 1}: tag {n.tag} is not allowed in a recipe (plain YAML "
                         "values only: nothing in a recipe builds Python objects)")
    if isinstance(n, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in n.value:
            line = key.start_mark.line + 1
            name = str(key.value)
            if name in seen and name != "<<":
                raise InputError(f"{source}:{line}: duplicate key {path + '.' if path else ''}{name} (first at line "
                                 f"{seen[name]}); the last one would silently win")
            seen[name] = line
            child = f"{path}.{name}" if path else name
            lines[child] = line
            _walk(value, child, lines, source, count, depth + 1)
    elif isinstance(n, yaml.SequenceNode):
        for i, item in enumerate(n.value):
            child = f"{path}.{i}"
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, source, count, depth + 1)


def parse_value(text: str) -> Any:
    """Type a `--set` value the way YAML would: 3e-5 → float, true → bool, [0,1] → list, x → str.

    Bounded like a recipe file (aliases, depth, duplicate keys, tags); text YAML cannot read stays a string.
    """
    try:
        return parse_yaml(text, "--set")[0]
    except InputError as exc:
        if "invalid YAML" in str(exc):
            return text
        raise


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
        if isinstance(part, int):  # an item of a list of sections (stages.score.judge.0): the same model
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _section_model(model.model_fields[part].annotation)
    return model


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model inside a field's type: `X`, `X | None`, `list[X] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _section_model(a)) is not None), None)


# Keys users bring from Hugging Face TrainingArguments / TRL / PEFT configs → midpo's key, as a path from the section
# where midpo has it (difflib alone sent `per_device_train_batch_size` to `eval_batch_size`).
FOREIGN_KEYS = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs", "lr_scheduler_type": "scheduler", "warmup_steps": "warmup_ratio",
    "logging_steps": "log_every", "eval_steps": "eval_every", "save_steps": "checkpoint.every_steps",
    "save_total_limit": "checkpoint.keep", "gradient_checkpointing": "activation_checkpointing",
    "bf16": "precision", "fp16": "precision", "output_dir": "run_dir", "model_name_or_path": "base_model",
    "model_name": "base_model", "tokenizer_name": "tokenizer", "tokenizer_name_or_path": "tokenizer",
    "dataset_name": "data.train", "train_file": "data.train", "eval_file": "data.eval",
    "max_seq_length": "max_length", "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
}


def foreign_key_hint(parent: type[BaseModel] | None, key: str) -> str | None:
    """midpo's name for a Hugging Face / TRL key, quoted, relative to `parent` when it lives there (`'lr'` in a
    stage section), else its full path (`'train.lr'`, `'run_dir'` at the top level); None for other keys."""
    target = FOREIGN_KEYS.get(key)
    if target is None:
        return None
    head, _, rest = target.partition(".")
    if parent is not None and head in parent.model_fields:
        return f"{target!r}"
    if rest and parent is not None and parent is _model_at((head,)):
        return f"{rest!r}"
    for section in ("train", "data", "logging"):
        if head in _model_at((section,)).model_fields:
            return f"{section + '.' + target!r}"
    if head not in Recipe.model_fields:
        return None
    return f"{target!r}" if rest else f"the top-level key {target!r}"


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        foreign = foreign_key_hint(parent, str(loc[-1]))
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {foreign}?)" if foreign else f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; allowed: {', '.join(allowed)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = [c.strip().strip("'") for c in re.split(r",| or ", expected) if c.strip()]
        return f"must be one of {', '.join(choices)}, got {value!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_too_short":  # run_dir: "" wrote the stages into the working directory
        return f"must not be empty, got {value!r}"
    names = {
        "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
        "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
        "model_type": "a mapping", "int_from_float": "an integer", "finite_number": "a finite number",
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
    path = recipe_file(path) if path is not None else None
    source = str(path) if path is not None else "<defaults>"
    data: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        text = _read_text(path)
        data, lines = parse_yaml(text, source)
        if data is None:  # blank, only comments, or `null`; `{}` is not
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


def recipe_file(path: str | Path) -> Path:
    """A recipe file, or a shipped recipe by the name `midpo recipe show` lists (`midpo pipeline run quickstart`);
    a file of that name in the working folder comes first."""
    file = Path(path)
    if file.exists():
        return file
    if file.name == str(path) and file.stem in shipped_names():
        return shipped_recipe(file.stem)
    raise InputError(f"recipe file not found: {file} (shipped recipes, by name: {', '.join(shipped_names())})")


def _read_text(file: Path) -> str:
    """A regular file (a FIFO blocked forever), at most MAX_RECIPE_BYTES, UTF-8."""
    if not file.is_file():
        raise InputError(f"{file}: not a regular file; a recipe is a YAML file")
    if file.stat().st_size > MAX_RECIPE_BYTES:
        raise InputError(f"{file}: {file.stat().st_size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes")
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


# -- the recipes shipped with midpo ------------------------------------------------------------------
# `midpo_cli/recipes` (package data) is a link to the repository's `recipes/`, so a checkout and a wheel read the
# same files, and the quickstart's settings have one source: `recipes/quickstart.yaml` is both the file the
# README runs and what every command without `--recipe` loads.
SHIPPED_FOLDER = Path(__file__).resolve().parent / "recipes"
QUICKSTART = "quickstart"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_FOLDER.glob("*.yaml"))


def shipped_recipe(name: str) -> Path:
    """The shipped recipe `name` (`quickstart` or `quickstart.yaml`); an unknown name lists the known ones."""
    path = SHIPPED_FOLDER / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise InputError(f"no shipped recipe {name!r}; shipped: {', '.join(shipped_names()) or 'none found'}")
    return path
