"""Spreading on real node processes: the entry sends work to the replica that finishes
soonest. Nodes are slow emulated devices (padding sleeps), so a node is busy for ~0.3 s per
request while the host is not; the assertions are orderings (the idle replica gets most of
the work, a saturated node is bypassed), which hold however fast or loaded the host is.
"""

from __future__ import annotations

from collections import Counter

import pytest

from p2pinfer import Client
from p2pinfer.testing import wait_until
from tests.p2pinfer.pinned_load import RESNET, SLOW, PinnedLoad, gossiped_jobs, resnet_image, start_nodes

FIXED = ["--policy", "fixed", "--arm", f"{RESNET}@3"]
ROUNDS = 10


def computed_on(result) -> tuple[str, ...]:
    return tuple(segment.node for segment in result.plan)


def test_spreading_sends_work_to_the_idle_replica(node_factory):
    # entry "a" hosts another variant of the family only: every pinned-arm request goes to "b" or "c"
    a, b, c = start_nodes(node_factory, [
        ("a", ["--variants", "digits-resnet-w0.5", *FIXED]),
        ("b", ["--variants", RESNET, "--device-profile", SLOW]),
        ("c", ["--variants", RESNET, "--device-profile", SLOW]),
    ])
    with PinnedLoad(b, workers=4):
        wait_until(lambda: gossiped_jobs(a, "b") >= 2, timeout_s=20, message="a to hear that b is busy")
        placed: Counter[tuple[str, ...]] = Counter()
        with Client(a.url) as client:
            for index in range(ROUNDS):
                result = client.infer(resnet_image(index), deadline_ms=10_000, family="digits-resnet",
                                      user="spread")
                placed[computed_on(result)] += 1
    assert placed[("c",)] > ROUNDS // 2, f"the idle replica c should get most requests: {dict(placed)}"
    assert placed[("c",)] > placed[("b",)]


# Slow: its idle precondition (the entry runs the whole variant itself) hinges on block profiles
# that each node re-measures warm during a concurrent start-up (x40 emulation turns their noise
# into a tie-break between "a" alone and the chain b->c); it failed once in a CI rehearsal on an
# idle host. Runs with `make test-slow` until the warm profile is made robust (issue 15's note).
@pytest.mark.slow
def test_a_chain_is_chosen_when_the_single_full_replica_is_saturated(node_factory):
    # "a" hosts the whole variant; "b" and "c" together host it as a chain [0-1] -> [2-3]
    a, b, c = start_nodes(node_factory, [
        ("a", ["--variants", RESNET, "--device-profile", SLOW, *FIXED]),
        ("b", ["--variants", f"{RESNET}:0-1", "--device-profile", SLOW]),
        ("c", ["--variants", f"{RESNET}:2-3", "--device-profile", SLOW]),
    ])
    with Client(a.url) as client:
        idle = client.infer(resnet_image(0), deadline_ms=10_000, family="digits-resnet", user="chain")
    assert computed_on(idle) == ("a",), f"an idle entry runs the whole variant itself: {idle.plan}"
    placed: Counter[tuple[str, ...]] = Counter()
    with PinnedLoad(a, workers=4):
        wait_until(lambda: gossiped_jobs(a, "a") >= 3, timeout_s=20, message="a's queue to fill")
        with Client(a.url) as client:
            for index in range(ROUNDS):
                result = client.infer(resnet_image(index + 1), deadline_ms=10_000, family="digits-resnet",
                                      user="chain")
                placed[computed_on(result)] += 1
    assert placed[("b", "c")] > ROUNDS // 2, f"a saturated entry should hand most requests to the chain: {dict(placed)}"
