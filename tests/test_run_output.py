"""What a whole `pipeline run` prints when stderr is not a terminal (a log file, CI): a plain progress line from
every long step, nothing of the libraries' own bars and notices, a clean --json on stdout, and the end of the run —
the stage table within 80 columns, the verdict in three lines, the next steps (conftest's `small_run`)."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

# every long step, by the start of its progress line (midpo_cli.console.progress; training: engine/metrics.py)
STEPS = {
    "training": "sft: step 2/2 ",
    "score-model audit": "reward_model: audit: ",
    "SPE-DPO margins": "safety_expert: margins (train pairs): ",
    "reference log-probs": "safety_expert: reference log-probs: ",
    "an expert's select: dev": "safety_expert: select: dev: dev answers: ",
    "rank": "rank: reward model: ",
    "the switch's threshold": "router: switch threshold: dev answers: ",
    "generate": "generate: ",
    "score": "scoring with the cost model: ",
}


@pytest.mark.parametrize("step", list(STEPS))
def test_each_long_step_reports_progress_in_plain_lines(small_run, step) -> None:
    lines = [ln for ln in small_run.stderr.splitlines() if ln.startswith(STEPS[step])]
    assert lines, f"no progress line of {step} ({STEPS[step]!r})"
    if step != "training":  # the step's end: done/total units, its time and rate, on one unwrapped line
        assert any(re.search(r": \d+/\d+ \w+ in \d\d:\d\d \(", ln) for ln in lines), lines


def test_library_bars_and_notices_stay_out_and_stdout_is_only_the_json(small_run) -> None:
    for leak in ("Loading weights", "Writing model shards", "FutureWarning", "DeprecationWarning",
                 "built successfully", "it/s]", "\r"):
        assert leak not in small_run.stderr, leak
    out = json.loads(small_run.stdout)  # DeepSpeed printed on stdout before: this parse failed
    assert [s["what"] for s in out["next_steps"]][:3] == ["chat with it", "export it", "serve it"]
    assert out["verdict"][0]["lines"] == out["verdict"][0]["lines"][:3] and len(out["verdict"][0]["lines"]) == 3


def test_the_run_ends_with_the_table_the_verdict_and_the_next_steps(small_run) -> None:
    err = small_run.stderr
    table = err[err.index("┏"):err.index("┘") + 1].splitlines()
    assert all(len(line) <= 80 for line in table), max(table, key=len)
    score_row = err[err.rindex("│ score"):].splitlines()[0]
    assert "eval-prompts: " in score_row  # the verdict's label, not the first metric keys
    assert "router " in err[err.rindex("│ score"):err.index("┘")]
    tail = err[err.index("┘"):]
    verdict = tail[tail.index("verdict · toy-safety-eval-prompts: "):tail.index("next steps:")].splitlines()
    assert verdict[1].startswith("  ") and verdict[-1].startswith("    midpo ")  # three lines, then the command
    steps = tail[tail.index("next steps:"):].splitlines()
    assert re.match(r"  chat with it: +midpo chat ", steps[1]) and steps[-1].startswith("  read the report: ")
    assert steps[-1].endswith("score/report.html")
