"""Emulated links: delay math, jitter, loss, traces, padding, and the scenario link matrix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from p2pinfer.emulation.link import EmulatedLink, LinkMatrix, apply, pad_to
from p2pinfer.emulation.trace import parse_trace
from p2pinfer.errors import LinkConfigError, TraceNotFound

TRACES = Path(__file__).resolve().parents[3] / "benchmarks" / "traces"


def test_delay_is_half_rtt_plus_serialization() -> None:
    link = EmulatedLink(bandwidth_mbps=10.0, rtt_ms=40.0)
    assert link.delay_s(0, 0.0) == pytest.approx(0.020)
    assert link.delay_s(1_250_000, 0.0) == pytest.approx(0.020 + 1.0)  # 10 Mbit at 10 Mbit/s
    assert link.serialization_s(125_000, 0.0) == pytest.approx(0.1)
    assert EmulatedLink().delay_s(10**9, 0.0) == 0.0  # unlimited loopback


def test_jitter_is_bounded_never_negative_and_reproducible() -> None:
    link = EmulatedLink(rtt_ms=10.0, jitter_ms=8.0, seed=42)
    samples = [link.delay_s(0, 0.0) for _ in range(2000)]
    assert min(samples) >= 0.0 and max(samples) <= (5.0 + 8.0) / 1000
    assert min(samples) == 0.0  # 5 ms - up to 8 ms of jitter is clamped at zero
    assert len(set(samples)) > 100
    again = EmulatedLink(rtt_ms=10.0, jitter_ms=8.0, seed=42)
    assert [again.delay_s(0, 0.0) for _ in range(2000)] == samples


def test_loss_rate_matches_the_probability() -> None:
    lossy = EmulatedLink(loss=0.1, seed=3)
    drops = sum(lossy.drops() for _ in range(20_000))
    assert 0.085 < drops / 20_000 < 0.115
    assert not any(EmulatedLink(loss=0.0).drops() for _ in range(1000))
    assert all(EmulatedLink(loss=1.0).drops() for _ in range(1000))


def test_trace_link_uses_the_bandwidth_at_send_time() -> None:
    trace = parse_trace("0 1\n2 3\n4 5\n")
    link = EmulatedLink(trace=trace, trace_scale=10.0, rtt_ms=0.0)
    assert link.bandwidth_at(2.5) == 30.0
    assert link.delay_s(3_750_000, 2.0) == pytest.approx(1.0)  # 30 Mbit at 30 Mbit/s
    shifted = EmulatedLink(trace=trace, trace_offset_s=2.0)
    assert shifted.bandwidth_at(0.0) == 3.0


def test_pad_to_waits_only_for_what_the_real_transfer_did_not_take() -> None:
    link = EmulatedLink(bandwidth_mbps=8.0, rtt_ms=100.0)  # 1 MB/s, 50 ms one way
    assert pad_to(link, 100_000, elapsed_s=0.01, now_s=0.0) == pytest.approx(0.05 + 0.1 - 0.01)
    assert pad_to(link, 100_000, elapsed_s=1.0, now_s=0.0) == 0.0


async def test_apply_sleeps_the_padding() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    link = EmulatedLink(bandwidth_mbps=8.0, rtt_ms=20.0)
    waited = await apply(link, 10_000, elapsed_s=0.002, now_s=0.0, sleep=fake_sleep)
    assert waited == pytest.approx(0.010 + 0.010 - 0.002) and slept == [waited]
    assert await apply(EmulatedLink(), 10_000, sleep=fake_sleep) == 0.0 and len(slept) == 1

    started = time.monotonic()
    await apply(EmulatedLink(rtt_ms=30.0), 0)  # the real asyncio.sleep
    assert time.monotonic() - started >= 0.014


def test_invalid_links_are_typed_errors() -> None:
    for arguments in ({"bandwidth_mbps": 0.0}, {"rtt_ms": -1.0}, {"loss": 1.5}, {"trace_scale": 0.0}):
        with pytest.raises(LinkConfigError):
            EmulatedLink(**arguments)


def test_link_matrix_from_scenario_tables() -> None:
    matrix = LinkMatrix.from_dict({
        "a->b": {"bandwidth_mbps": 10.0, "rtt_ms": 40.0, "jitter_ms": 2.0},
        "b->a": {"bandwidth_mbps": 2.0, "rtt_ms": 40.0},
        "a->c": {"rtt_ms": 80.0, "trace": "hsdpa-3g/norway_bus_1.txt", "trace_scale": 10},
        "b<->c": {"bandwidth_mbps": 100.0, "rtt_ms": 1.0, "loss": 0.01},
    }, default={"bandwidth_mbps": 1000.0, "rtt_ms": 0.5}, trace_roots=[TRACES], seed=9)
    assert matrix.link("a", "b").bandwidth_mbps == 10.0 and matrix.link("b", "a").bandwidth_mbps == 2.0
    forward, backward = matrix.link("a", "c"), matrix.link("c", "a")
    assert forward is not backward  # mirrored parameters, independent random generators
    assert backward.trace is not None and backward.rtt_ms == 80.0
    assert forward.bandwidth_at(0.0) == pytest.approx(40.3768755221)
    assert matrix.link("c", "b").loss == 0.01 and matrix.link("b", "c").loss == 0.01
    unnamed = matrix.link("a", "d")
    assert unnamed.bandwidth_mbps == 1000.0 and unnamed is matrix.link("a", "d")
    assert unnamed is not matrix.link("d", "a")
    assert matrix.link("a", "a").delay_s(10**9, 0.0) == 0.0
    # The same scenario and seed give the same jitter.
    again = LinkMatrix.from_dict({"a->b": {"bandwidth_mbps": 10.0, "rtt_ms": 40.0, "jitter_ms": 2.0}}, seed=9)
    assert again.link("a", "b").delay_s(0, 0.0) == matrix.link("a", "b").delay_s(0, 0.0)


@pytest.mark.parametrize(("links", "message"), [
    ({"a-b": {}}, "expected 'src->dst'"),
    ({"a->a": {}}, "itself"),
    ({"a->b": {"bandwidth": 3}}, "unknown keys"),
    ({"a->b": {"loss": 2}}, "loss"),
    ({"a<->b": {}, "b->a": {}}, "already set"),
    ({"a->b": 5}, "expected a table"),
])
def test_link_matrix_rejects_bad_tables(links: dict, message: str) -> None:
    with pytest.raises(LinkConfigError, match=message):
        LinkMatrix.from_dict(links)


def test_link_matrix_names_a_missing_trace() -> None:
    with pytest.raises(TraceNotFound, match="no-such-trace"):
        LinkMatrix.from_dict({"a->b": {"trace": "no-such-trace.txt"}}, trace_roots=[TRACES])
