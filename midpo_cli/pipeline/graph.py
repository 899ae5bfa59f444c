"""The stage graph, what each stage's fingerprint covers, and whether a stage is done (no torch:
`pipeline plan` uses it). `stage_plans` is the one place that computes fingerprints and statuses for the
pipeline, `pipeline plan` and a standalone stage command alike.

Why each edge exists: the reward and cost models start from the SFT policy's backbone; each
expert needs its score model for margins; rank needs both score models; the router mixes both
experts on the SFT base and reads D_dual from rank; generate runs every model; score needs the
answers and both score models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midpo_cli.manifest import read_manifest, stage_dir, stage_fingerprint
from midpo_cli.pipeline.changes import why_rerun
from midpo_cli.pipeline.folders import ATTEMPT, PREVIOUS, pickup
from midpo_cli.pipeline.status import folder_state, stage_done, unusable
from midpo_cli.recipe import ALL_STAGES, STAGE_ORDER, TRAINING_STAGES, Recipe

DEPENDS: dict[str, tuple[str, ...]] = {
    "sft": (),
    "reward_model": ("sft",),
    "cost_model": ("sft",),
    "safety_expert": ("sft", "cost_model"),
    "helpfulness_expert": ("sft", "reward_model"),
    "rank": ("reward_model", "cost_model"),
    "router": ("sft", "safety_expert", "helpfulness_expert", "rank"),
    "generate": ("sft", "safety_expert", "helpfulness_expert", "router"),
    "score": ("generate", "reward_model", "cost_model"),
    "dpo_expert": ("sft",),  # the plain-DPO baseline: margin 0, so no score model
    # the baselines (docs/design.md §2.11): MODPO's margin comes from the cost model; ties merges the experts
    "baseline_dpo_helpful": ("sft",),
    "baseline_dpo_safe": ("sft",),
    "baseline_modpo": ("sft", "cost_model"),
    "baseline_safedpo": ("sft",),
    "baseline_ties": ("sft", "safety_expert", "helpfulness_expert"),
}


def stage_config(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The slice of the recipe a stage's result depends on (launcher/logging don't change results)."""
    section = recipe.resolved()["stages"][stage]
    config: dict[str, Any] = {
        "base_model": recipe.base_model,
        "tokenizer": recipe.tokenizer,
        "data": stage_data(recipe, stage),
        "stage": section,
    }
    if stage in TRAINING_STAGES:
        config["zero_stage"] = recipe.deepspeed.zero_stage
    score = recipe.stages.score
    if (score.judge is not None or score.dev_judge is not None) and makes_dev_choice(recipe, stage):
        # who judges its dev choice is part of its result; left out while it is the default, so the fingerprints
        # of runs made before judges were a setting still hold
        config["dev_judge"] = {k: recipe.resolved()["stages"]["score"][k] for k in ("judge", "dev_judge")}
    return config


def makes_dev_choice(recipe: Recipe, stage: str) -> bool:
    """An expert with `select: dev`, or the router choosing the hard switch's threshold."""
    from midpo_cli.stages.kit.dev_set import chooses_switch_threshold

    if stage == "router":
        return chooses_switch_threshold(recipe)
    return getattr(getattr(recipe.stages, stage, None), "select", None) == "dev"


def stage_data(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The data keys a stage reads: sft reads only data.sft, the others never read it, generate/score read
    neither split, and a prompt set named by its role counts for the stages that read it (`prompt_roles`), so
    editing one dataset re-runs only the stages that use it."""
    data = recipe.data.model_dump(mode="json")
    roles = {key: data.pop(key) for key in PROMPT_ROLES}
    if stage == "sft":
        sft = recipe.stages.sft
        if sft.use or not sft.enabled:
            return {}
        return {k: v for k, v in data.items() if k not in ("train", "eval")}
    data.pop("sft", None)
    if stage in ("generate", "score"):
        data.pop("train", None)
        data.pop("eval", None)
    return {**data, **{key: roles[key] for key in prompt_roles(recipe, stage) if roles[key]}}


PROMPT_ROLES = ("dev_prompts", "eval_prompts")


def prompt_roles(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The prompt roles a stage's result depends on: generate answers both, score and every dev choice (an
    expert's `select: dev`, the hard probe switch's threshold) read the dev set. Unset roles leave a recipe
    written before them with the fingerprints it had."""
    from midpo_cli.stages.kit.dev_set import chooses_switch_threshold

    if stage == "generate":
        return PROMPT_ROLES
    cfg = getattr(recipe.stages, stage, None)
    dev = stage == "score" or getattr(cfg, "select", None) == "dev" or (
        stage == "router" and chooses_switch_threshold(recipe))
    return ("dev_prompts",) if dev else ()


def dependencies(recipe: Recipe, stage: str) -> tuple[str, ...]:
    deps = DEPENDS[stage]
    if stage == "safety_expert" and recipe.stages.safety_expert.loss == "dpo":
        deps = tuple(d for d in deps if d != "cost_model")
    if stage == "helpfulness_expert" and recipe.stages.helpfulness_expert.loss == "dpo":
        deps = tuple(d for d in deps if d != "reward_model")
    if stage == "generate":  # the listed baselines are answered as models beside MidPO
        deps += recipe.listed_baselines()
    return deps


def select_stages(
    *, start: str | None = None, until: str | None = None, only: list[str] | None = None,
    recipe: Recipe | None = None,
) -> list[str]:
    """The stages to run in pipeline order: STAGE_ORDER plus the recipe's `stages.baselines`; any stage by --only.
    An empty range is an error (`--from score --until sft` ran nothing and exited 0)."""
    from midpo_cli.errors import InputError

    if only:
        return [s for s in ALL_STAGES if s in only]
    for flag, name in (("--from", start), ("--until", until)):
        if name is not None and name not in ALL_STAGES:
            raise InputError(f"{flag} {name}: no such stage ({', '.join(ALL_STAGES)})")
    lo = ALL_STAGES.index(start) if start else 0
    hi = ALL_STAGES.index(until) + 1 if until else len(ALL_STAGES)
    if lo >= hi:
        raise InputError(f"--from {start} --until {until}: {start} comes after {until}, so nothing would run")
    listed = recipe.listed_baselines() if recipe is not None else ()
    return [s for s in ALL_STAGES[lo:hi] if s in STAGE_ORDER or s in listed]


def expected_fingerprint(recipe: Recipe, stage: str, manifests: dict[str, dict[str, Any] | None]) -> str:
    """The fingerprint the recipe asks of `stage`, given its inputs' manifests (by stage name)."""
    inputs = {dep: manifests.get(dep) for dep in dependencies(recipe, stage)}
    return stage_fingerprint(stage, stage_config(recipe, stage), inputs)


@dataclass
class StagePlan:
    """One selected stage: its status — done / will run / will resume / will restore / blocked / refused — and why."""

    stage: str
    status: str
    why: str
    depends_on: list[str]
    fingerprint: str  # what the recipe asks for now
    manifest: dict[str, Any] | None  # the finished result in the stage folder, if any
    missing: list[str]  # dependencies neither selected nor done (status blocked)

    def row(self) -> dict[str, Any]:
        """What `midpo pipeline plan` shows (and prints with --json)."""
        return {"stage": self.stage, "status": self.status, "why": self.why, "depends_on": self.depends_on,
                "fingerprint": self.fingerprint}


def stage_plans(recipe: Recipe, stages: list[str], force: set[str] | None = None) -> list[StagePlan]:
    """The plan of each selected stage, in pipeline order, from the stage folders only.

    A stage that will re-run changes its fingerprint, so everything downstream re-runs too; the
    walk goes in dependency order and feeds each stage's *would-be* fingerprint forward. A stage counts as
    done only when `stage_done` says so (manifest and outputs), the one test `pipeline run` uses too.
    """
    force = force or set()
    manifests: dict[str, dict[str, Any] | None] = {}
    states: dict[str, dict[str, Any]] = {}
    plans = []
    for stage in ALL_STAGES:
        folder = stage_dir(recipe.run_dir, stage)
        found = states[stage] = folder_state(folder, stage)
        current = found["manifest"]  # set only when the folder holds a finished result (of any settings)
        if stage not in stages:
            manifests[stage] = current
            continue
        want = expected_fingerprint(recipe, stage, manifests)
        deps = dependencies(recipe, stage)
        missing = [d for d in deps if manifests.get(d) is None and d not in stages]
        if missing:
            needs = ", ".join(unusable(d, states[d]) for d in missing)
            status, why = "blocked", f"needs {needs} (not selected and not done)"
        elif found["state"] == "refused":
            status, why = "refused", found["why"]
        elif stage in force:
            status, why = "will run", "forced"
        elif stage_done(folder, stage, want) is not None:
            status, why = "done", f"finished {current.get('finished_at', '?')}"
        else:
            status, why = _not_done(recipe, stage, folder, found, want, [
                d for d in deps if d in stages and (manifests.get(d) or {}).get("fingerprint")
                != (read_manifest(stage_dir(recipe.run_dir, d)) or {}).get("fingerprint")])
        manifests[stage] = current if status == "done" else {"fingerprint": want}
        plans.append(StagePlan(stage, status, why, list(deps), want, current, missing))
    return plans


def _not_done(recipe: Recipe, stage: str, folder: Path, found: dict[str, Any], want: str,
              rerunning: list[str]) -> tuple[str, str]:
    """(status, why) of a stage that is not done for these settings: what `prepare_folder` will pick up
    (`pickup`), and the folder's state when it is corrupt, incomplete or failed."""
    state = f"{found['state']}: {found['why']}" if found["state"] in ("corrupt", "incomplete", "failed") else ""
    found_here = pickup(folder, want)
    if found_here == "previous":
        return "will restore", f"the finished result of these settings waits in {stage}/{PREVIOUS}/"
    if found_here is not None:
        kept = folder / ATTEMPT if found_here == "attempt" else folder
        if (kept / "checkpoints" / "latest").exists():
            where = f" in {stage}/{ATTEMPT}/" if found_here == "attempt" else ""
            return "will resume", "; ".join(filter(None, [f"checkpoint of these settings found{where}", state]))
    if found["manifest"] is not None:
        return "will run", why_rerun(folder, stage, stage_config(recipe, stage), rerunning)
    return "will run", state or "not run yet"


def plan(recipe: Recipe, stages: list[str], force: set[str] | None = None) -> list[dict[str, Any]]:
    """`stage_plans` as rows: stage, status, why, depends_on, fingerprint."""
    return [p.row() for p in stage_plans(recipe, stages, force)]
