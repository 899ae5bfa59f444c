"""The recipe's one dev prompt set: what every dev choice reads (docs/design.md §2.10, §4).

The best fixed blend (score), the probe switch's threshold (midpo_cli.evaluation.probe_switch) and each
expert's step (`stages.<expert>.select: dev`, midpo_cli.evaluation.expert_select) are all chosen on the same
set, so pointing a recipe at other prompt files needs one edit. The set is named by its role,
`data.dev_prompts`; a recipe written before roles names it in `stages.score.select_on`, or as the one of
`stages.generate.prompts` whose name ends in `dev-prompts`. Generate answers it (`Recipe.prompt_sets`), score
chooses on it. Preflight checks a local set before any folder is touched; a stage loads it once, here. Imports
no torch.
"""

from __future__ import annotations

from typing import Any

from midpo_cli.data.prompt_sets import PromptSet, load_prompt_set, prompt_set_name, split_label
from midpo_cli.data.readers import is_local_spec
from midpo_cli.errors import InputError
from midpo_cli.recipe import Recipe

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
HARD_SWITCH = "the hard probe switch (stages.router.switch: hard)"  # the dev choice that needs the set's both kinds


def _name(entry: str) -> str:
    """The set name `generate` will give the entry (a file not written yet goes by its stem all the same)."""
    name = prompt_set_name(entry)
    return name.rsplit("/", 1)[-1].rsplit(".", 1)[0] if name.endswith(FILE_SUFFIXES) else name


def _names(wanted: str, entry: str) -> bool:
    """`select_on` names this entry: its spec, its set name, or a tail of either."""
    return wanted in (entry, _name(entry)) or _name(entry).endswith(wanted) or wanted.endswith(_name(entry))


def dev_prompt_spec(recipe: Recipe) -> str | None:
    """The prompt set every dev choice reads — data.dev_prompts, else the entry of stages.generate.prompts that
    stages.score.select_on names or whose name ends in dev-prompts — or None when the recipe names none."""
    wanted = recipe.stages.score.select_on
    if recipe.data.dev_prompts is not None:
        if wanted is not None and not _names(wanted, recipe.data.dev_prompts):
            raise InputError(f"stages.score.select_on {wanted!r} is not data.dev_prompts "
                             f"({recipe.data.dev_prompts}): the dev set is named once; drop select_on")
        return recipe.data.dev_prompts
    prompts = recipe.prompt_sets()
    if wanted is not None:
        hit = [p for p in prompts if _names(wanted, p)]
        if len(hit) != 1:
            raise InputError(f"stages.score.select_on {wanted!r}: {'no' if not hit else 'more than one'} entry of "
                             f"stages.generate.prompts matches ({', '.join(prompts)})")
        return hit[0]
    dev = [p for p in prompts if _name(p).endswith("dev-prompts")]
    if len(dev) > 1:
        raise InputError(f"stages.generate.prompts: {len(dev)} sets end in dev-prompts ({', '.join(dev)}); "
                         "name the one to choose on in stages.score.select_on")
    return dev[0] if dev else None


def require_dev_prompts(recipe: Recipe, why: str) -> str:
    """dev_prompt_spec, or an error saying which setting needs it."""
    spec = dev_prompt_spec(recipe)
    if spec is None:
        raise InputError(f"{why} chooses on the dev prompt set, and the recipe names none: set data.dev_prompts "
                         "(a prompt file with an is_harmful column), or add a set whose name ends in dev-prompts to "
                         "stages.generate.prompts")
    return spec


VOTE = "the routers' vote (stages.router.decision: vote)"  # chooses its threshold on the dev set too


def builds_hard_switch(recipe: Recipe) -> bool:
    return recipe.builds_switch and recipe.stages.router.switch == "hard"


def threshold_chooser(recipe: Recipe) -> str:
    """Who chooses a threshold on the dev set, in the words errors use: the hard switch, else the routers' vote."""
    return HARD_SWITCH if builds_hard_switch(recipe) else VOTE


def chooses_switch_threshold(recipe: Recipe) -> bool:
    """The router stage chooses a threshold on the dev set: the hard probe switch's (when it builds the switch), or
    the learned routers' vote's (`decision: vote`)."""
    cfg = recipe.stages.router
    return builds_hard_switch(recipe) or (cfg.kind == "learned" and cfg.decision == "vote")


def is_local_set(spec: str) -> bool:
    """An embedded or local set, or one that looks like a file (a missing file is reported by the preflight that
    reads it); a hub set is left to the stage: no download in a preflight."""
    return is_local_spec(split_label(spec)[1])


def load_dev_set(recipe: Recipe, why: str) -> PromptSet:
    """The dev prompt set, read (a hub set downloaded) for the stage that chooses on it (`why`)."""
    return load_prompt_set(require_dev_prompts(recipe, why), recipe.data.columns or None)


def require_both_kinds(recipe: Recipe, spec: str, why: str) -> None:
    """A local or embedded dev set must hold harmful and benign prompts (is_harmful) when `why` judges per
    kind: the switch's threshold balances the two (it failed after the router had trained, with a ValueError,
    on a dev slice of one kind). A hub dataset is left to the stage (no download in a preflight)."""
    if not is_local_set(spec):
        return
    kinds = {p.get("is_harmful") for p in load_prompt_set(spec, recipe.data.columns or None).prompts}
    if not {True, False} <= kinds:
        have = ", ".join(sorted({"harmful" if k else "benign" if k is False else "unlabelled" for k in kinds}))
        raise InputError(f"{why} on the dev prompts {spec}, which need both harmful and benign prompts (an "
                         f"is_harmful column with both values); they have: {have or 'none'}")


def dev_prompts_of_kind(recipe: Recipe, harmful: bool, why: str) -> tuple[str, list[dict[str, Any]]]:
    """(the dev set's name, its prompts labelled harmful, or benign): what an expert's dev choice (`why`) judges
    it on; an error when there are none. Preflight calls it on a local set before any folder is touched, the
    expert stage once before training (for a hub set, the first time it is read)."""
    spec = require_dev_prompts(recipe, why)
    pset = load_prompt_set(spec, recipe.data.columns or None)
    kept = [p for p in pset.prompts if p.get("is_harmful") is not None and bool(p["is_harmful"]) is harmful]
    if not kept:
        raise InputError(f"{spec}: no {'harmful' if harmful else 'benign'} prompts with an is_harmful label; "
                         f"{why} judges the expert on them")
    return pset.name, kept


def dev_set_name(recipe: Recipe) -> str | None:
    """The name the dev set's answers carry (`prompt_set` of generate's rows), or None."""
    spec = dev_prompt_spec(recipe)
    return None if spec is None else _name(spec)
