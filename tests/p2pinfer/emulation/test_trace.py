"""Bandwidth trace files: parsing (any file of the format), errors, replay."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from p2pinfer.emulation.trace import load_trace, parse_trace, resolve_trace
from p2pinfer.errors import TraceFormatError, TraceNotFound

TRACES = Path(__file__).resolve().parents[3] / "benchmarks" / "traces"


def test_parses_samples_comments_blank_lines_and_rebases_time() -> None:
    text = "# my own trace\n\n10.0\t4.0\n10.5   2.0  # a note\r\n\n11.5 0\n12.5 8.5\n"
    trace = parse_trace(text, source="mine.txt")
    assert trace.times_s == (0.0, 0.5, 1.5, 2.5)
    assert trace.mbps == (4.0, 2.0, 0.0, 8.5)
    assert trace.period_s == pytest.approx(2.5 + 2.5 / 3)


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("0 1\n1 2\n2 x\n", 3, "not a number"),
    ("0 1\n1 2 3\n", 2, "expected"),
    ("0 1\n\n# c\n1\n", 4, "expected"),
    ("0 1\n1 -2\n", 2, "negative"),
    ("0 1\n1 2\n1 3\n", 3, "does not rise"),
    ("0 1\n2 2\n1 3\n", 3, "does not rise"),
    ("0 1\n1 inf\n", 2, "non-finite"),
])
def test_bad_lines_name_the_file_and_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(TraceFormatError, match=reason) as caught:
        parse_trace(text, source="bad.txt")
    assert caught.value.line == line and caught.value.source == "bad.txt"
    assert f"bad.txt:{line}" in str(caught.value)


def test_empty_or_all_zero_traces_are_refused() -> None:
    with pytest.raises(TraceFormatError, match="no samples"):
        parse_trace("# nothing\n\n", source="empty.txt")
    with pytest.raises(TraceFormatError, match="every sample is 0"):
        parse_trace("0 0\n1 0\n", source="dead.txt")


def test_load_trace_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "trace.log"
    path.write_text("0 1.5\n0.5 oops\n")
    with pytest.raises(TraceFormatError, match=f"{path}:2"):
        load_trace(path)
    with pytest.raises(TraceNotFound):
        load_trace(tmp_path / "missing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceFormatError, match="UTF-8"):
        load_trace(binary)


def test_every_bundled_hsdpa_trace_loads() -> None:
    files = sorted((TRACES / "hsdpa-3g").glob("*.txt"))
    assert len(files) == 80
    assert "Riiser" in (TRACES / "README.md").read_text()
    for path in files:
        trace = load_trace(path)
        assert len(trace.times_s) > 10 and 0 < trace.mean_mbps < 50


def test_real_trace_replays_its_samples() -> None:
    trace = load_trace(TRACES / "hsdpa-3g" / "norway_bus_1.txt")
    assert trace.bandwidth_at(0.0) == pytest.approx(4.03768755221)
    assert trace.bandwidth_at(0.6) == pytest.approx(4.79283060109)  # held from t=0.55 until 0.88
    assert trace.bandwidth_at(0.6 + trace.period_s) == pytest.approx(4.79283060109)  # looped
    assert trace.bandwidth_at(0.6, scale=10) == pytest.approx(47.9283060109)


def test_replay_holds_loops_and_scales() -> None:
    trace = parse_trace("0 1\n2 3\n4 5\n")  # period 6: [0,2)->1, [2,4)->3, [4,6)->5
    assert trace.period_s == 6.0
    assert [trace.bandwidth_at(t) for t in (0, 1.99, 2, 3.5, 4, 5.99)] == [1, 1, 3, 3, 5, 5]
    assert trace.bandwidth_at(6.5) == 1 and trace.bandwidth_at(9) == 3 and trace.bandwidth_at(-1) == 5
    assert trace.bandwidth_at(100.0, loop=False) == 5 and trace.bandwidth_at(-1, loop=False) == 1
    assert trace.bandwidth_at(3.0, scale=2.5) == 7.5
    assert trace.mean_mbps == pytest.approx(3.0)


def test_transfers_integrate_over_the_trace() -> None:
    trace = parse_trace("0 1\n2 3\n4 5\n")
    megabit = 1_000_000 // 8
    assert trace.transfer_seconds(megabit, 0.0) == pytest.approx(1.0)
    assert trace.transfer_seconds(3 * megabit, 1.0) == pytest.approx(1.0 + 2.0 / 3)  # 1 Mbit at 1, 2 at 3
    assert trace.transfer_seconds(3 * megabit, 1.0, scale=2.0) == pytest.approx(1.0 + 1.0 / 6)
    # One period carries 18 Mbit: 40 Mbit from t=0 take two periods and 4 Mbit more.
    assert trace.transfer_seconds(40 * megabit, 0.0) == pytest.approx(12.0 + 2.0 + 2.0 / 3)
    assert trace.transfer_seconds(0, 3.0) == 0.0
    assert trace.transfer_seconds(1000 * megabit, 0.0, loop=False) == pytest.approx(4.0 + (1000 - 8) / 5)


def test_an_outage_delays_but_does_not_block_a_transfer() -> None:
    trace = parse_trace("0 8\n1 0\n3 8\n")  # 1 s at 8, a 2 s outage, then 8 (period 4.5)
    assert trace.transfer_seconds(1_000_000, 0.5) == pytest.approx(0.5 + 2.0 + 0.5)
    ends_dead = parse_trace("0 8\n1 0\n")
    assert math.isinf(ends_dead.transfer_seconds(2_000_000, 0.0, loop=False))
    assert ends_dead.transfer_seconds(2_000_000, 0.0) == pytest.approx(2.0 + 1.0)


def test_resolve_trace_searches_roots(tmp_path: Path) -> None:
    assert resolve_trace("hsdpa-3g/norway_bus_1.txt", [tmp_path, TRACES]) == TRACES / "hsdpa-3g/norway_bus_1.txt"
    with pytest.raises(TraceNotFound, match="nowhere.txt"):
        resolve_trace("nowhere.txt", [TRACES])
