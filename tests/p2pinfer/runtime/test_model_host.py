"""The node's own latency model: block means and their spread, learnt from every block run; and an
emulated device priced against the manifest's reference profile, not against what the shared host
measured when the node started (the same device in every run)."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from p2pinfer.runtime.model_host import BATCH_EFFICIENCY, ModelHost
from p2pinfer.runtime.node import _calibrated_s
from zoo.errors import ManifestError
from zoo.manifest import DEFAULT_ZOO_DIR, ReferenceProfile, read_manifest, write_manifest

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


REFERENCED_VARIANT = "digits-cnn-w0.25"
REFERENCE = ReferenceProfile(block_ms=[3.0, 2.0, 1.0], exit_ms={0: 0.25, 1: 0.25, 2: 0.5}, cpu="reference cpu",
                             torch="2.13.0", repeats=200)


def zoo_with_reference(directory: Path, reference: ReferenceProfile) -> Path:
    """A copy of the shipped zoo's manifest (weights linked) whose ``REFERENCED_VARIANT`` has ``reference``."""
    (directory / "weights").symlink_to(DEFAULT_ZOO_DIR / "weights")
    manifest = read_manifest(DEFAULT_ZOO_DIR)
    variant = manifest.variants[REFERENCED_VARIANT]
    manifest.variants[REFERENCED_VARIANT] = msgspec.structs.replace(variant, reference_cpu=reference)
    write_manifest(manifest, directory)
    return directory


def test_every_shipped_variant_has_a_reference_profile() -> None:
    """Without one, an emulated device falls back to the host's start-up profile, the figures
    that made the same emulated Pi 44 ms in one run and 60 ms in the next."""
    for zoo_dir in (DEFAULT_ZOO_DIR, DEFAULT_ZOO_DIR / "pretrained"):
        for variant in read_manifest(zoo_dir).variants.values():
            reference = variant.reference_cpu
            assert reference is not None, variant.name
            assert len(reference.block_ms) == variant.block_count
            assert set(reference.exit_ms) == set(variant.exit_blocks)


def test_an_emulated_device_is_priced_and_padded_at_the_reference(tmp_path: Path) -> None:
    zoo_dir = zoo_with_reference(tmp_path, REFERENCE)
    pi = ModelHost(zoo_dir, hosted=REFERENCED_VARIANT, profile_repeats=2, device_slowdown=10.0)
    expected_host_ms = [3.25, 2.25, 1.5]  # each block with the exit head that runs right after it
    assert pi.block_ms[REFERENCED_VARIANT] == pytest.approx([10 * ms for ms in expected_host_ms])
    padded_to = {(REFERENCED_VARIANT, block): ms / 1000 for block, ms in enumerate(expected_host_ms)}
    assert _calibrated_s(pi) == pytest.approx(padded_to)  # the executor pads to slowdown x these
    pi.set_measured(REFERENCED_VARIANT, {0: 0.05, 1: 0.04, 2: 0.03})  # a warm run on a fast host changes nothing
    assert pi.block_ms[REFERENCED_VARIANT] == pytest.approx([10 * ms for ms in expected_host_ms])
    again = ModelHost(zoo_dir, hosted=REFERENCED_VARIANT, profile_repeats=2, device_slowdown=10.0)
    assert again.block_ms == pi.block_ms  # the same device in every start


def test_a_host_too_slow_to_emulate_the_device_is_priced_at_what_it_really_takes(tmp_path: Path) -> None:
    zoo_dir = zoo_with_reference(tmp_path, REFERENCE)
    pi = ModelHost(zoo_dir, hosted=REFERENCED_VARIANT, profile_repeats=2, device_slowdown=10.0)
    pi.set_measured(REFERENCED_VARIANT, {0: 80.0})  # padding cannot remove time: this block takes 80 ms here
    assert pi.block_ms[REFERENCED_VARIANT][0] == pytest.approx(80.0)
    assert pi.block_ms[REFERENCED_VARIANT][1] == pytest.approx(22.5)


def test_the_host_itself_runs_at_its_own_measured_speed(tmp_path: Path) -> None:
    """A native node (no slowdown) is the host: its blocks take what they take here."""
    zoo_dir = zoo_with_reference(tmp_path, REFERENCE)
    native = ModelHost(zoo_dir, hosted=REFERENCED_VARIANT, profile_repeats=2, device_slowdown=1.0)
    assert REFERENCED_VARIANT not in native.referenced
    assert native.block_ms[REFERENCED_VARIANT][0] < REFERENCE.block_ms[0]  # digits blocks take well under 3 ms


def test_a_reference_that_does_not_fit_the_variant_is_refused(tmp_path: Path) -> None:
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    zoo_with_reference(zoo_dir, REFERENCE)
    text = (zoo_dir / "manifest.json").read_text().replace('"block_ms": [\n          3.0,', '"block_ms": [', 1)
    (zoo_dir / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=f"{REFERENCED_VARIANT}.*reference_cpu times 2 blocks"):
        read_manifest(zoo_dir)
    with pytest.raises(ValueError, match="finite and > 0"):
        ReferenceProfile(block_ms=[1.0, 0.0], exit_ms={}, cpu="", torch="", repeats=1)
