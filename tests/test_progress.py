"""The one progress helper (midpo_cli.console.progress): plain lines where stderr is a file, one shared rich display
on a terminal (bars inside bars, and the training bar with them), nothing under --quiet; and the library notices
that midpo keeps out of its output."""

from __future__ import annotations

import io
import warnings

import pytest
from rich.console import Console

from midpo_cli import console


@pytest.fixture
def err(monkeypatch):
    """console.err writing into a buffer, as a file (not a terminal) unless the test says otherwise."""
    def make(terminal: bool = False) -> io.StringIO:
        buf = io.StringIO()
        monkeypatch.setattr(console, "err", Console(file=buf, force_terminal=terminal, width=100))
        return buf
    monkeypatch.setattr(console, "_state", {"quiet": False, "debug": False, "json": False})
    return make


def test_plain_lines_name_the_step_and_end_with_its_count_time_and_rate(err, monkeypatch) -> None:
    buf = err()
    with console.progress("rank: reward model", 4, unit="answers") as bar:
        bar.advance(2)
        bar.advance(2)
    assert buf.getvalue().splitlines() == [buf.getvalue().splitlines()[0]]  # nothing before PLAIN_EVERY seconds
    assert buf.getvalue().startswith("rank: reward model: 4/4 answers in 00:00 (")
    assert buf.getvalue().rstrip().endswith(" answers/s)")
    buf = err()
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)  # every move is due: the running line, with its share and ETA
    with console.progress("generate", 10, unit="answers") as bar:
        bar.update(description="generate midpo · eval")
        bar.advance(5, info="12 tok/s")
    first, last = buf.getvalue().splitlines()
    assert first.startswith("generate midpo · eval: 5/10 answers (50%) ") and " ETA " in first
    assert first.endswith(" · 12 tok/s") and last.startswith("generate midpo · eval: 5/10 answers in ")


def test_a_step_inside_another_is_named_by_both_and_a_counted_outer_step_owns_the_end_line(err, monkeypatch) -> None:
    buf = err()
    with console.progress("safety_expert: select: dev"):  # names the steps inside it, counts nothing itself
        with console.progress("scoring with the cost model", 3, unit="answers") as bar:
            bar.advance(3)
    assert buf.getvalue().startswith("safety_expert: select: dev · scoring with the cost model: 3/3 answers in ")
    buf = err()
    with console.progress("dev answers", 2, unit="answers") as outer:
        with console.progress("scoring", 5, unit="answers") as inner:
            inner.advance(5)
        outer.advance(2)
    assert [line.split(":")[0] for line in buf.getvalue().splitlines()] == ["dev answers"]
    buf = err()
    with console.progress("nothing to do", 0, unit="pairs"):  # every reference log-prob cached
        pass
    assert buf.getvalue() == "" and console._bars == []


def test_quiet_prints_nothing_and_a_failed_step_still_closes_its_bar(err) -> None:
    buf = err(terminal=True)
    console.configure(quiet=True)
    with console.progress("x", 3, unit="a") as bar:
        bar.advance(3)
    assert buf.getvalue() == "" and console._live["display"] is None
    console.configure(quiet=False)
    with pytest.raises(RuntimeError), console.progress("x", 3, unit="a"):
        raise RuntimeError
    assert console._bars == [] and console._live["display"] is None


def test_on_a_terminal_every_bar_shares_one_display_the_training_bar_too(err) -> None:
    """rich allows one live display: a second one (the dev answers inside a stage, a bar during training) raised
    LiveError before they shared it. A bar inside a counted one is removed when it ends; the outer one stays."""
    from midpo_cli.engine.metrics import Progress

    buf = err(terminal=True)
    training = Progress(enabled=True, total=2, start=0, stage_name="sft")
    display = console._live["display"]
    assert display is not None
    with console.progress("dev answers", 4, unit="answers") as bar:
        assert console._live["display"] is display and len(display.tasks) == 2
        assert display.tasks[1].description == "sft · dev answers"
        bar.advance(4)
    assert len(display.tasks) == 1  # the inner bar went; the training bar stays
    training.update(2, {"loss": 0.5, "lr": 1e-3, "samples_per_s": 3.0, "tokens_per_s": 40.0, "epoch": 1})
    training.message("sft: eval at step 2")
    training.close()
    assert console._live["display"] is None
    out = buf.getvalue()
    assert "sft: eval at step 2" in out and "loss 0.5" in out and "2/2" in out


def test_library_deprecation_notices_are_hidden_and_midpos_own_warnings_are_not() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        console.hide_library_warnings()
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "modeling_utils.py", 3312,
                               module="transformers.modeling_utils")
        warnings.warn_explicit("old", DeprecationWarning, "peft_model.py", 1, module="peft.peft_model")
        warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="midpo_cli.recipe")
        warnings.warn_explicit("a real problem", UserWarning, "y.py", 1, module="transformers.generation")
    assert [str(w.message) for w in seen] == ["ours", "a real problem"]
