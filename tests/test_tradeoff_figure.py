"""The headline trade-off figure on a crowded hand-made summary: no two text boxes overlap, every element is in the
legend, every label sits inside its panel (midpo_cli.evaluation.tradeoff_figure / figure_labels)."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("matplotlib")

from matplotlib.text import Text  # noqa: E402

from midpo_cli.evaluation.tradeoff_figure import tradeoff_figure  # noqa: E402

GATES = [(a, b) for a in (0, 0.25, 0.5, 0.75, 1) for b in (0, 0.25, 0.5, 0.75, 1)]
BASELINES = ("dpo_expert", "baseline_modpo", "baseline_safedpo")


def _q(x: float, n: int = 40) -> float:
    """A rate over n prompts: the judge's rates repeat, so blends pile up on the same points."""
    return round(min(max(x, 0.0), 1.0) * n) / n


def _point(model: str, hs: float, bh: float, cost: float, reward: float, **extra) -> dict:
    return {"model": model, "n": 40, "score": (hs + bh) / 2, "harmful_safe": hs, "benign_helpful": bh,
            "cost": cost, "reward": reward, **extra}


def crowded_entry(judged: bool) -> dict:
    """25 blends (several on one point), 7 dial settings around the router, the oracle, corners and 3 baselines
    within a few hundredths of each other: the worst case for labels."""
    grid = []
    for gs, gh in GATES:
        hs, bh = _q(0.3 + 0.5 * gs - 0.1 * gh), _q(0.2 + 0.6 * gh - 0.25 * gs)
        grid.append(_point(f"midpo@gates={gs:g},{gh:g}", hs, bh, -gs + 0.4 * gh, 2 * gh - 0.5 * gs, gates=[gs, gh]))
    router = _point("midpo", 0.6, 0.55, -0.35, 0.9)
    dial = [_point(f"midpo@dial={b:+g}", _q(0.6 + 0.02 * b), _q(0.55 - 0.015 * b), -0.35 - 0.03 * b, 0.9 - 0.04 * b,
                   bias=float(b)) for b in (-4, -2, -1, 1, 2, 4)]
    dial = sorted(dial + [{**router, "bias": 0.0}], key=lambda d: d["bias"])
    models = [_point("base", grid[0]["harmful_safe"], grid[0]["benign_helpful"], 0.0, 0.0),
              _point("safety_expert", grid[20]["harmful_safe"], grid[20]["benign_helpful"], -1.0, -0.5),
              _point("helpfulness_expert", grid[4]["harmful_safe"], grid[4]["benign_helpful"], 0.4, 2.0)]
    models += [_point(b, 0.58 + 0.01 * i, 0.56 - 0.01 * i, -0.34 - 0.01 * i, 0.88 + 0.01 * i)
               for i, b in enumerate(BASELINES)]
    return {"router": router, "metric": "toy_score" if judged else None, "grid": grid, "dial": dial, "models": models,
            "best_fixed": {**grid[12], "chosen_on": "toy/dev-prompts", "in_sample": False},
            "best_in_sample": {"model": grid[13]["model"], "gates": grid[13]["gates"], "score": grid[13]["score"]},
            "oracle": _point("oracle", 0.62, 0.57, -0.36, 0.92)}


def crowded_summary() -> dict:
    return {"routing": {"toy/eval-prompts": crowded_entry(True), "real/eval": crowded_entry(False)},
            "groups": [], "prompt_sets": ["toy/eval-prompts", "real/eval"]}


def _texts(fig) -> list[Text]:
    """Every visible text of the figure, less the tick labels matplotlib keeps outside the view (never drawn)."""
    hidden = set()
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def test_no_two_text_boxes_overlap_on_a_crowded_summary() -> None:
    fig = tradeoff_figure(crowded_summary())
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in _texts(fig)]  # the text alone
    assert len(boxes) > 40  # the labels were drawn, not all dropped
    clashes = [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    assert not clashes, clashes[:5]
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for child in ax.texts:  # every point label inside its panel
            box = Text.get_window_extent(child, renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def _clashes(fig) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in _texts(fig)]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_without_a_router_the_models_figure_labels_every_model_without_overlap() -> None:
    def stat(mean: float) -> dict:
        return {"mean": mean, "lo": mean - 0.05, "hi": mean + 0.05, "n": 10}

    groups = [{"model": f"model_{i}", "prompt_set": s, "n": 10,
               "metrics": {"cost": stat(-0.5 + 0.01 * i + d), "reward": stat(1.0 + 0.01 * i - d)}}
              for i in range(10) for s, d in (("a/eval", 0.0), ("a/traps", 0.02))]
    fig = tradeoff_figure({"groups": groups, "routing": {}})
    assert not _clashes(fig) and len(fig.axes[0].texts) >= 5  # labels drawn, none overlapping
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert all(f"model_{i}" in legend for i in range(10)) and "prompt set a/traps" in legend


def test_every_element_is_in_the_legend() -> None:
    fig = tradeoff_figure(crowded_summary())
    for ax in fig.axes:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        wanted = ["fixed blends", "fixed-blend frontier", "safety dial", "learned router (midpo)",
                  "best fixed blend, chosen on dev", "in hindsight", "oracle router", "base policy", "safety expert",
                  "helpfulness expert", *BASELINES]
        for name in wanted:
            assert any(name in text for text in legend), (name, legend)
        drawn = [a.get_label() for a in [*ax.collections, *ax.lines, *ax.containers]
                 if not a.get_label().startswith("_")]
        assert set(drawn) <= set(legend)  # nothing drawn under a name that the legend leaves out


def test_the_router_and_oracle_are_labelled_on_the_plot() -> None:
    fig = tradeoff_figure(crowded_summary())
    for ax in fig.axes:
        texts = {t.get_text() for t in ax.texts}
        assert {"router", "oracle"} <= texts, texts


def render(path: str) -> None:
    """For a look by eye: `python -c 'import tests.test_tradeoff_figure as t; t.render("/tmp/x.png")'`."""
    fig = tradeoff_figure(crowded_summary())
    fig.savefig(path)


def test_a_flat_dial_gets_one_label_naming_every_setting_on_that_point() -> None:
    """Issue 28's run: every dial setting from −4 to +2 answered alike; the figure must say so, not hide it."""
    s = crowded_summary()
    e = s["routing"]["toy/eval-prompts"]
    for d in e["dial"]:
        if d["bias"] <= 2:
            d["harmful_safe"], d["benign_helpful"] = e["router"]["harmful_safe"], e["router"]["benign_helpful"]
    fig = tradeoff_figure(s)
    dial = sorted(t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("B="))
    assert dial == ["B=+4", "B=-4/-2/-1/+0/+1/+2"] and not _clashes(fig)
