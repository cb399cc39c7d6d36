"""The request log: bounded by count and by age, oldest first, an id put again is the newest."""

from __future__ import annotations

import pytest

from p2pinfer.runtime import request_log
from p2pinfer.runtime.request_log import RequestLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(request_log.time, "monotonic", clock)
    return clock


def test_capacity_drops_the_oldest_and_a_repeated_id_becomes_the_newest(clock: Clock) -> None:
    log: RequestLog[int] = RequestLog(capacity=3, ttl_s=60)
    for index, name in enumerate("abc"):
        log.put(name, index)
    log.put("a", 10)  # a again: now the newest, b the oldest
    log.put("d", 3)
    assert "b" not in log and len(log) == 3
    assert log.get("a") == 10 and log.get("c") == 2 and log.get("d") == 3


def test_records_expire_after_the_ttl_and_are_dropped_on_later_puts(clock: Clock) -> None:
    log: RequestLog[str] = RequestLog(capacity=100, ttl_s=10)
    log.put("old", "x")
    clock.now += 6
    log.put("young", "y")
    clock.now += 5  # old is 11 s old, young 5 s
    assert log.get("old") is None and log.get("young") == "y"
    assert len(log) == 2  # nothing put since: expired records wait for the next put
    log.put("new", "z")
    assert len(log) == 2 and "old" not in log
    clock.now += 20
    log.put("last", "w")  # every earlier record expired: all dropped, the log keeps only this one
    assert len(log) == 1 and log.get("last") == "w"
    clock.now += 1
    log.put("after", "v")  # the expiry moved on with the new oldest record: nothing dropped early
    assert len(log) == 2


def test_expired_records_are_dropped_at_most_once_a_period_and_never_answered(clock: Clock) -> None:
    """A put looks for expired records once per ``EVICTION_PERIOD_S`` (not on every request);
    in between, an expired record may still be held but ``get`` never returns it."""
    log: RequestLog[str] = RequestLog(capacity=100, ttl_s=30)
    log.put("old", "x")  # looks now: the next look is a period later
    clock.now += 30.5  # old has expired
    log.put("a", "y")  # looks (a period passed): old goes
    assert "old" not in log and len(log) == 1
    clock.now += 0.25
    log.put("b", "z")
    clock.now += 29.9  # a has expired (30.15 s old), b has not
    log.put("c", "w")  # a period since the last look: a goes, b stays
    assert len(log) == 2 and log.get("b") == "z"
    clock.now += 0.3  # b expired (30.2 s old), but the last look was 0.3 s ago
    log.put("d", "v")
    assert len(log) == 3 and log.get("b") is None  # held until the next look, never answered
    clock.now += request_log.EVICTION_PERIOD_S
    log.put("e", "u")
    assert "b" not in log and len(log) == 3
