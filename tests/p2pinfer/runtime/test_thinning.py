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


class _Device:
    """What ``Node._on_run`` hands a run's times to: the estimates (counted here)."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, str, int, list[float], int]] = []

    def observe_run(self, unit: str, variant: str, first: int, device_s: list[float], batch_size: int) -> None:
        self.observed.append((unit, variant, first, device_s, batch_size))


def test_a_nodes_runs_all_reach_the_metrics_and_a_few_reach_the_estimates() -> None:
    """A burst of identical runs (a tiny model at full load): every block time goes into the
    block histograms, the estimates see the first run and then one per period."""
    from p2pinfer.runtime.metrics import NodeMetrics
    from p2pinfer.runtime.node import Node

    metrics, device, thinning = NodeMetrics(), _Device(), Thinning(period_s=60.0)
    for _ in range(50):
        Node._on_run(metrics, device, "cpu", thinning, "digits-cnn-w1", 0, [0.001, 0.002], 1)  # type: ignore[arg-type]
    Node._on_run(metrics, device, "cpu", thinning, "digits-cnn-w1", 0, [0.001, 0.002], 4)  # type: ignore[arg-type]
    assert [(batch, len(times)) for _, _, _, times, batch in device.observed] == [(1, 2), (4, 2)]
    text = metrics.render().decode()
    counts = [line for line in text.splitlines() if line.startswith("p2pinfer_block_compute_seconds_count")]
    assert len(counts) == 2 and all(line.endswith(" 51.0") for line in counts), counts
