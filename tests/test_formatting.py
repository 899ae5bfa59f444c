"""The one home of every number format (midpo_cli.evaluation.formatting), each string worked out by hand, and the
JSON reader for records a caller can do without (io.try_read_json)."""

from __future__ import annotations

from midpo_cli.evaluation.formatting import (
    compact_interval,
    gate_pair,
    gate_value,
    logged_value,
    mean_and_interval,
    number,
    percent,
    signed_bounds,
    signed_interval,
    status_value,
)
from midpo_cli.io import try_read_json


def test_plain_numbers_shares_and_gates() -> None:
    assert (number(0.4249), number(None), number(12.0, 1), number(0.12345, 3)) == ("0.42", "—", "12.0", "0.123")
    assert (percent(0.456), percent(None)) == ("46%", "—")
    assert (gate_value(0.25), gate_value(1.0), gate_value(0.0)) == (".25", "1", "0")
    assert (gate_pair((0.25, 1.0)), gate_pair([0.5, 0], ", ")) == ("0.25,1", "0.5, 0")
    assert (logged_value(0.4), logged_value(7), logged_value("x"), logged_value(None)) == ("0.400", "7", "x", "—")
    assert (status_value(0.123456), status_value(12345.0), status_value(3)) == ("0.123", "1.23e+04", "3")


def test_means_with_their_intervals() -> None:
    stat = {"mean": 0.42, "lo": 0.31, "hi": 0.55}
    assert mean_and_interval(stat, "reward") == "0.42 [0.31, 0.55]"
    assert mean_and_interval(stat, "reward", compact=True) == "0.42 ±0.12"
    assert mean_and_interval(stat, "reward", ci=False) == "0.42"
    assert mean_and_interval({"rate": 1.0, "lo": 1.0, "hi": 1.0}, "win") == "100%"  # a point interval is noise
    assert mean_and_interval({"mean": 0.5, "lo": 0.25, "hi": 0.75}, "harmless_rate") == "50% [25%, 75%]"
    assert mean_and_interval({"mean": 250.0}, "answer_tokens") == "250"
    assert mean_and_interval(None, "cost") == mean_and_interval({"mean": None}, "cost") == "—"
    assert compact_interval(stat) == "0.42±.12" and compact_interval(stat, pct=True) == "42%±12"
    assert compact_interval({"mean": 0.07, "lo": 0.01, "hi": 0.12}, signed=True) == "+0.07 [+0.01,+0.12]"
    assert compact_interval({"mean": 0.5, "lo": 0.5, "hi": 0.5}) == "0.50" and compact_interval(None) == "—"


def test_signed_differences() -> None:
    assert signed_interval({"mean": 0.14, "lo": 0.06, "hi": 0.21}) == "+0.14 [+0.06, +0.21]"
    assert signed_interval({"mean": -0.1234, "lo": None, "hi": None}, digits=3) == "-0.123"
    assert signed_bounds(-0.03, 0.333, digits=3, brackets="{}") == "{-0.030, +0.333}"


def test_try_read_json_gives_none_for_what_it_cannot_read(tmp_path) -> None:
    (tmp_path / "ok.json").write_text('{"a": 1}')
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe")
    assert try_read_json(tmp_path / "ok.json") == {"a": 1}
    assert [try_read_json(tmp_path / n) for n in ("bad.json", "bytes.json", "missing.json")] == [None] * 3
    assert try_read_json(tmp_path) is None  # a folder
