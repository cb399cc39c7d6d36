"""An emulated device is defined against the manifest's reference profile, not against what the
shared host measured when the node started: the same device in every run."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from p2pinfer.runtime.model_host import ModelHost
from p2pinfer.runtime.node import _calibrated_s
from zoo.errors import ManifestError
from zoo.manifest import DEFAULT_ZOO_DIR, ReferenceProfile, read_manifest, write_manifest

VARIANT = "digits-cnn-w0.25"
REFERENCE = ReferenceProfile(block_ms=[3.0, 2.0, 1.0], exit_ms={0: 0.25, 1: 0.25, 2: 0.5}, cpu="reference cpu",
                             torch="2.13.0", repeats=200)


def zoo_with_reference(directory: Path, reference: ReferenceProfile) -> Path:
    """A copy of the shipped zoo's manifest (weights linked) whose ``VARIANT`` has ``reference``."""
    (directory / "weights").symlink_to(DEFAULT_ZOO_DIR / "weights")
    manifest = read_manifest(DEFAULT_ZOO_DIR)
    manifest.variants[VARIANT] = msgspec.structs.replace(manifest.variants[VARIANT], reference_cpu=reference)
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
    pi = ModelHost(zoo_dir, hosted=VARIANT, profile_repeats=2, device_slowdown=10.0)
    expected_host_ms = [3.25, 2.25, 1.5]  # each block with the exit head that runs right after it
    assert pi.block_ms[VARIANT] == pytest.approx([10 * ms for ms in expected_host_ms])
    padded_to = {(VARIANT, block): ms / 1000 for block, ms in enumerate(expected_host_ms)}
    assert _calibrated_s(pi) == pytest.approx(padded_to)  # the executor pads to slowdown x these
    pi.set_measured(VARIANT, {0: 0.05, 1: 0.04, 2: 0.03})  # a warm run on a fast host changes nothing
    assert pi.block_ms[VARIANT] == pytest.approx([10 * ms for ms in expected_host_ms])
    again = ModelHost(zoo_dir, hosted=VARIANT, profile_repeats=2, device_slowdown=10.0)
    assert again.block_ms == pi.block_ms  # the same device in every start


def test_a_host_too_slow_to_emulate_the_device_is_priced_at_what_it_really_takes(tmp_path: Path) -> None:
    zoo_dir = zoo_with_reference(tmp_path, REFERENCE)
    pi = ModelHost(zoo_dir, hosted=VARIANT, profile_repeats=2, device_slowdown=10.0)
    pi.set_measured(VARIANT, {0: 80.0})  # padding cannot remove time: this block takes 80 ms here
    assert pi.block_ms[VARIANT][0] == pytest.approx(80.0)
    assert pi.block_ms[VARIANT][1] == pytest.approx(22.5)


def test_the_host_itself_runs_at_its_own_measured_speed(tmp_path: Path) -> None:
    """A native node (no slowdown) is the host: its blocks take what they take here."""
    zoo_dir = zoo_with_reference(tmp_path, REFERENCE)
    native = ModelHost(zoo_dir, hosted=VARIANT, profile_repeats=2, device_slowdown=1.0)
    assert VARIANT not in native.referenced
    assert native.block_ms[VARIANT][0] < REFERENCE.block_ms[0]  # digits blocks take well under 3 ms


def test_a_reference_that_does_not_fit_the_variant_is_refused(tmp_path: Path) -> None:
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    zoo_with_reference(zoo_dir, REFERENCE)
    text = (zoo_dir / "manifest.json").read_text().replace('"block_ms": [\n          3.0,', '"block_ms": [', 1)
    (zoo_dir / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=f"{VARIANT}.*reference_cpu times 2 blocks"):
        read_manifest(zoo_dir)
    with pytest.raises(ValueError, match="finite and > 0"):
        ReferenceProfile(block_ms=[1.0, 0.0], exit_ms={}, cpu="", torch="", repeats=1)
