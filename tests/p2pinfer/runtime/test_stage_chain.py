"""A plan split over three real aiohttp service nodes returns the logits of one node's full
forward, for every split point; budgets decrease hop by hop; timings cover every block."""

from __future__ import annotations

import itertools

import pytest
import torch

from p2pinfer.emulation.link import EmulatedLink, LinkMatrix
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import ServiceNodeSpec, start_cluster
from p2pinfer.types import NodeId
from tests.p2pinfer.collaboration_support import CNN, reference_logits, resnet_name, sample

NODES = ("a", "b", "c")
SECRET = b"collaboration-test-secret"


def chains(block_count: int) -> list[list[PlanSegment]]:
    """Every way to cut blocks [0, n) into up to three runs, placed on a, b, c in order."""
    plans = []
    for cut_count in range(0, 3):
        for cuts in itertools.combinations(range(1, block_count), cut_count):
            bounds = [0, *cuts, block_count]
            plans.append([PlanSegment(node=NODES[index], unit="cpu", first_block=bounds[index],
                                      last_block=bounds[index + 1] - 1) for index in range(len(bounds) - 1)])
    return plans


@pytest.mark.parametrize("which", ["cnn", "resnet"])
async def test_every_split_point_matches_the_full_forward(manifest, which):
    variant = manifest.variant(CNN if which == "cnn" else resnet_name(manifest))
    last = variant.block_count - 1
    specs = [ServiceNodeSpec(node, {variant.name: (0, last)}) for node in NODES]
    cluster = await start_cluster(specs, manifest=manifest, secret=SECRET)
    try:
        for index, plan in enumerate(chains(variant.block_count)):
            tensor = sample(variant, index)
            expected = reference_logits(variant, tensor)
            outcome = await cluster["a"].service.execute(
                request_id=f"chain-{index}", family=variant.family, variant=variant.name, exit_block=last,
                segments=plan, tensor=tensor, budget_ms=20_000.0, allow_degrade=False)
            assert outcome.exit_block == last and not outcome.degraded and outcome.replans == 0
            assert outcome.executed == plan
            assert [(t.node, t.first_block, t.last_block) for t in outcome.timings] == [
                (s.node, s.first_block, s.last_block) for s in plan]
            torch.testing.assert_close(outcome.logits, expected, rtol=0, atol=1e-5)
            assert all(later < earlier for earlier, later in
                       zip(outcome.budgets_ms, outcome.budgets_ms[1:], strict=False))
    finally:
        await cluster.close()
    assert len(chains(variant.block_count)) >= 4


async def test_budget_shrinks_by_each_hop_time_and_its_link(manifest):
    """Over emulated 20 ms links, each hop's budget is the previous one minus that node's own
    time and the hop's predicted link time (the activation there, the result back)."""
    variant = manifest.variant(CNN)
    matrix = LinkMatrix(default=EmulatedLink(bandwidth_mbps=50.0, rtt_ms=20.0))
    specs = [ServiceNodeSpec(node, {variant.name: (0, 2)}) for node in NODES]
    cluster = await start_cluster(specs, manifest=manifest, link_matrix=matrix)
    try:
        for source, destination in (("a", "b"), ("b", "c")):  # RTTs, as gossip probes would learn them
            view = cluster[source].directory.peer(NodeId(destination))
            assert view is not None
            for _ in range(3):
                await cluster[source].transport.probe(view)
        plan = [PlanSegment(node=node, unit="cpu", first_block=block, last_block=block)
                for block, node in enumerate(NODES)]
        outcome = await cluster["a"].service.execute(
            request_id="budget", family=variant.family, variant=variant.name, exit_block=2, segments=plan,
            tensor=sample(variant), budget_ms=5_000.0)
    finally:
        await cluster.close()
    budgets = outcome.budgets_ms
    assert len(budgets) == 3 and budgets[0] <= 5_000.0
    assert all(earlier - later >= 18.0 for earlier, later in zip(budgets, budgets[1:], strict=False)), budgets
    # The hop times the senders measured: both directions of the 20 ms link.
    assert outcome.timings[0].transfer_ms == 0.0
    assert all(timing.transfer_ms >= 19.0 for timing in outcome.timings[1:]), outcome.timings
