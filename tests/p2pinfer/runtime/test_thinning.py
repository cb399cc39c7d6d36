"""Thinning: one observation per key and period, the first of each key always kept."""

from p2pinfer.runtime.thinning import MAX_KEYS, Thinning


def test_one_observation_per_key_and_period() -> None:
    thinning = Thinning(period_s=0.005)
    assert thinning.due("a", 10.000)
    assert not thinning.due("a", 10.004)  # within the period: skipped
    assert thinning.due("b", 10.004)  # another key has its own period
    assert thinning.due("a", 10.005)  # a period after the last kept one
    assert not thinning.due("a", 10.009)
    assert thinning.due("a", 10.0101)


def test_a_slow_stream_keeps_every_observation() -> None:
    """Below one observation per period (tests, emulated devices, real models beyond a few ms)
    nothing is thinned."""
    thinning = Thinning(period_s=0.005)
    assert all(thinning.due("run", 0.006 * index) for index in range(100))


def test_a_fast_stream_keeps_one_per_period() -> None:
    thinning = Thinning(period_s=0.005)
    kept = sum(thinning.due("run", 0.0001 * index) for index in range(1000))  # 10,000 a second for 0.1 s
    assert 19 <= kept <= 21


def test_keys_are_bounded() -> None:
    thinning = Thinning(period_s=1.0)
    for index in range(MAX_KEYS + 10):
        assert thinning.due(index, 0.0)
    assert len(thinning._last) <= MAX_KEYS
