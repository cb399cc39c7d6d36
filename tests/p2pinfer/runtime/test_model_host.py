"""The node's own latency model: block means and their spread, learnt from every block run."""

from __future__ import annotations

import random

import pytest

from p2pinfer.runtime.model_host import BATCH_EFFICIENCY, ModelHost

VARIANT = "digits-cnn-w1"


@pytest.fixture(scope="module")
def host() -> ModelHost:
    return ModelHost(None, hosted=VARIANT, profile_repeats=2)


def test_a_noisy_block_is_priced_at_its_tail_and_a_steady_one_at_its_mean(host: ModelHost) -> None:
    """The planner's mask and the executor's admission read ``tail_block_ms``: a block whose
    runs swing is priced above its mean (nearly its p90), a block that always takes the same
    time at its mean; means stay what the queue estimate sums."""
    rng = random.Random(5)
    noisy = [max(0.0, rng.gauss(10.0, 3.0)) for _ in range(400)]
    for ms in noisy:
        host.observe(VARIANT, 0, ms / 1000, batch_size=1)
        host.observe(VARIANT, 1, 0.004, batch_size=1)
    mean, tail = host.block_ms[VARIANT], host.tail_block_ms(VARIANT)
    assert mean[0] == pytest.approx(10.0, abs=2.0)
    assert tail[0] > mean[0] + 2.5
    assert sum(ms <= tail[0] for ms in noisy[-200:]) >= 160  # most runs fit the tail, few fit the mean
    assert tail[1] == pytest.approx(mean[1], abs=0.01) and mean[1] == pytest.approx(4.0, abs=0.01)
    assert host.predict_seconds(VARIANT, 0, 1, tail=True) == pytest.approx((tail[0] + tail[1]) / 1000)
    assert host.predict_seconds(VARIANT, 0, 1) == pytest.approx((mean[0] + mean[1]) / 1000)
    for batch in (1, 4):  # the executor's per-block prices add up to the range's
        blocks = host.predict_block_seconds(VARIANT, 0, 2, batch)
        assert len(blocks) == 3 and sum(blocks) == pytest.approx(host.predict_seconds(VARIANT, 0, 2, batch))
        assert blocks[1] == pytest.approx(host.predict_seconds(VARIANT, 1, 1, batch))


def test_a_sample_that_is_not_a_time_is_ignored(host: ModelHost) -> None:
    before = list(host.block_ms[VARIANT]), host.tail_block_ms(VARIANT)
    host.observe(VARIANT, 0, float("nan"), batch_size=1)
    host.observe(VARIANT, 0, -1.0, batch_size=1)
    assert (host.block_ms[VARIANT], host.tail_block_ms(VARIANT)) == before


def test_a_measured_batch_efficiency_prices_batches_and_folds_them_back_on_a_real_unit_only() -> None:
    """A real unit that runs 8 samples in 1.7 singles (0.1 per extra sample) predicts a batch of 8
    at 1.7x a single, and a batch's measured time, folded into the single estimate, leaves it
    where it was (at the old 0.6 it would have dropped 3x). An emulated device keeps 0.6: its
    batches are padded to it."""
    real = ModelHost(None, hosted=VARIANT, profile_repeats=2)
    single = real.predict_seconds(VARIANT, 0, 2, 1)
    assert real.set_batch_efficiency(VARIANT, 8, single * 1000, 1.7 * single * 1000) == pytest.approx(0.1)
    assert real.predict_seconds(VARIANT, 0, 2, 8) == pytest.approx(1.7 * single)
    for block in range(3):
        block_single = real.predict_seconds(VARIANT, block, block, 1)
        for _ in range(50):
            real.observe(VARIANT, block, 1.7 * block_single, batch_size=8)
    assert real.predict_seconds(VARIANT, 0, 2, 1) == pytest.approx(single, rel=0.01)
    emulated = ModelHost(None, hosted=VARIANT, profile_repeats=2, device_slowdown=10.0)
    assert emulated.set_batch_efficiency(VARIANT, 8, 1.0, 1.7) is None
    assert emulated.efficiency(VARIANT) == BATCH_EFFICIENCY
