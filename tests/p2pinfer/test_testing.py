"""``p2pinfer.testing``: what in-process nodes of tests and benchmarks believe about this host."""

from __future__ import annotations

import msgspec
import torch

from p2pinfer import testing
from zoo.manifest import read_manifest
from zoo.profiling import cache_key, profile_variant


def test_the_host_profile_is_measured_in_this_process_not_read_from_the_disk_cache(tmp_path, monkeypatch):
    """A profile cached in another hour said 20.6 ms for blocks this host ran in 12.9, and the
    split benchmark's planner priced its own device 1.6x too slow (1.37x the best plan)."""
    monkeypatch.setenv("P2PINFER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(testing, "_PROFILES", {})
    variant = read_manifest().variant("digits-cnn-w1")
    measured = profile_variant(variant)  # writes this host's profile into the empty cache
    stale = msgspec.structs.replace(measured, block_ms=[1000.0 * (block + 1) for block in range(variant.block_count)])
    path = tmp_path / "profiles" / f"{cache_key(variant, 'cpu', torch.float32, 1, 1)}.json"
    assert path.exists()
    path.write_bytes(msgspec.json.encode(stale))
    assert profile_variant(variant).block_ms == stale.block_ms  # the cache now lies
    profile = testing.host_profile(variant)
    assert len(profile) == variant.block_count
    assert max(profile) < 1000.0  # measured here, not the cached 1-4 s
    assert testing.host_profile(variant) == profile  # once per process

