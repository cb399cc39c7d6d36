"""Placement: the planner's problem built from the directory, and the decisions it leads to
with measured links and heat: work moves off a slow link and away from a hot node."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinfer.emulation.link import EmulatedLink, LinkMatrix
from p2pinfer.errors import NoFeasiblePlan
from p2pinfer.planning.latency_model import ComputeLatencyModel, LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView, StaticDirectory
from p2pinfer.planning.placement import arm_latencies, build_problem, place, plan_segments
from p2pinfer.planning.planner import plan, predict_latency
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.testing import LOOPBACK_LINK, ServiceNodeSpec, segments_of, start_cluster
from p2pinfer.types import NodeId, UnitName
from tests.p2pinfer.collaboration_support import heavy_resnet_name, sample
from zoo.manifest import read_manifest

DEVICE, EDGE, EDGE_2 = NodeId("device"), NodeId("edge"), NodeId("edge-2")
MANIFEST = read_manifest()


async def learnt_plan(manifest, edge_link: EmulatedLink) -> tuple[NodeId, ...]:
    """Offload a few requests over ``edge_link`` (the device learns it), then plan."""
    variant = manifest.variant(heavy_resnet_name(manifest))
    matrix = LinkMatrix(links={(DEVICE, EDGE): edge_link})
    specs = [ServiceNodeSpec(DEVICE, {variant.name: (0, 3)}, device_slowdown=6.0),
             ServiceNodeSpec(EDGE, {variant.name: (0, 3)})]
    cluster = await start_cluster(specs, manifest=manifest, link_matrix=matrix)
    device = cluster[DEVICE]
    device.directory.default_link = LinkEstimate(bandwidth_mbps=50.0, rtt_ms=5.0)  # the prior before measuring
    try:
        before = place(device.directory, device.compute_model, variant, 3)
        assert EDGE in before.nodes  # with the prior, offloading looks best
        edge_view = device.directory.peer(EDGE)
        for index in range(3):
            await device.transport.probe(edge_view)
            await device.service.execute(request_id=f"learn-{index}", family=variant.family, variant=variant.name,
                                         exit_block=3, segments=segments_of((EDGE, 0, 3)),
                                         tensor=sample(variant, index), budget_ms=10_000.0)
        return place(device.directory, device.compute_model, variant, 3).nodes
    finally:
        await cluster.close()


async def test_work_moves_off_an_emulated_slow_link_and_stays_on_a_fast_one(manifest):
    assert await learnt_plan(manifest, EmulatedLink(bandwidth_mbps=100.0, rtt_ms=2.0)) == (EDGE,)
    assert await learnt_plan(manifest, EmulatedLink(bandwidth_mbps=0.5, rtt_ms=150.0)) == (DEVICE,)


def cluster_views(variant, edge_slowdown: float) -> list[PeerView]:
    profile = [10.0] * variant.block_count
    hosted = {variant.name: (0, variant.block_count - 1)}
    return [PeerView(DEVICE, "", hosted=hosted, block_ms={variant.name: [ms * 4 for ms in profile]}),
            PeerView(EDGE, "", hosted=hosted, block_ms={variant.name: profile}, slowdown=edge_slowdown),
            PeerView(EDGE_2, "", hosted=hosted, block_ms={variant.name: [ms * 2 for ms in profile]})]


def test_a_hot_node_reported_by_gossip_loses_its_work(manifest):
    variant = manifest.variant(heavy_resnet_name(manifest))
    fast = LinkEstimate(bandwidth_mbps=100.0, rtt_ms=2.0)
    cool = StaticDirectory(DEVICE, cluster_views(variant, 1.0), default_link=fast)
    hot = StaticDirectory(DEVICE, cluster_views(variant, 5.0), default_link=fast)
    assert place(cool, None, variant, 3).nodes == (EDGE,)
    assert place(hot, None, variant, 3).nodes == (EDGE_2,)


async def test_a_node_measured_hot_loses_its_work_before_gossip_says_so(manifest):
    """The edge runs 5x slow but its gossiped view still says full speed: measured hops teach it."""
    variant = manifest.variant(heavy_resnet_name(manifest))
    specs = [ServiceNodeSpec(DEVICE, {variant.name: (0, 3)}, device_slowdown=3.0),
             ServiceNodeSpec(EDGE, {variant.name: (0, 3)}, heat=5.0), ServiceNodeSpec(EDGE_2, {variant.name: (0, 3)},
                                                                      device_slowdown=2.0)]
    cluster = await start_cluster(specs, manifest=manifest)
    device = cluster[DEVICE]
    device.directory.update(replace(device.directory.peer(EDGE), slowdown=1.0))  # gossip has not heard yet
    try:
        assert place(device.directory, device.compute_model, variant, 3).nodes == (EDGE,)
        for index in range(3):
            await device.service.execute(request_id=f"hot-{index}", family=variant.family, variant=variant.name,
                                         exit_block=3, segments=segments_of((EDGE, 0, 3)),
                                         tensor=sample(variant, index), budget_ms=10_000.0)
        moved = place(device.directory, device.compute_model, variant, 3)
    finally:
        await cluster.close()
    assert EDGE not in moved.nodes


def test_arm_latencies_are_the_planner_latency_of_each_arm():
    directory = StaticDirectory(DEVICE, cluster_views(MANIFEST.variant("digits-cnn-w1"), 2.0),
                                default_link=LinkEstimate(bandwidth_mbps=20.0, rtt_ms=4.0))
    variants = [MANIFEST.variant("digits-cnn-w1"), MANIFEST.variant("digits-cnn-w0.5")]
    latencies = arm_latencies(directory, None, variants)
    assert set(latencies) == {("digits-cnn-w1", 0), ("digits-cnn-w1", 1), ("digits-cnn-w1", 2)} | {
        ("digits-cnn-w0.5", exit_block) for exit_block in MANIFEST.variant("digits-cnn-w0.5").exit_blocks}
    for variant in variants:
        for exit_block in variant.exit_blocks:
            expected = predict_latency(build_problem(directory, None, variant, exit_block))
            assert math.isclose(latencies[(variant.name, exit_block)], expected, rel_tol=1e-9)
    assert math.isinf(latencies[("digits-cnn-w0.5", 0)])  # nobody hosts it


VARIANT = MANIFEST.variant("digits-cnn-w1")
NODE_IDS = [NodeId(f"n{index}") for index in range(4)]


@st.composite
def directories(draw):
    views = []
    for node_id in NODE_IDS:
        first = draw(st.integers(0, 2))
        last = draw(st.integers(first, 2))
        hosted = {VARIANT.name: (first, last)} if draw(st.booleans()) else {}
        profile = draw(st.lists(st.floats(0.0, 50.0), min_size=3, max_size=3))
        views.append(PeerView(node_id, "", alive=draw(st.booleans()) or node_id == NODE_IDS[0], hosted=hosted,
                              block_ms={VARIANT.name: profile}, units=tuple(draw(st.sampled_from(
                                  [("cpu",), ("cpu", "cuda:0")]))),
                              queue_ms=draw(st.floats(0.0, 20.0)), slowdown=draw(st.floats(0.5, 8.0)),
                              unit_factors={"cuda:0": 0.5}))
    exclude = draw(st.sets(st.sampled_from(NODE_IDS[1:])))
    return views, exclude


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(directories(), st.integers(0, 2))
def test_build_problem_keeps_exactly_the_usable_hosts_with_their_scaled_times(drawn, exit_block):
    views, exclude = drawn
    directory = StaticDirectory(NODE_IDS[0], views, default_link=LinkEstimate(bandwidth_mbps=50.0, rtt_ms=2.0))
    problem = build_problem(directory, ComputeLatencyModel(), VARIANT, exit_block, exclude=exclude)
    assert problem.entry_node == NODE_IDS[0] and problem.exit_block == exit_block
    assert problem.input_bytes == VARIANT.input_bytes
    assert list(problem.output_bytes) == [VARIANT.blocks[block].output_bytes for block in range(exit_block + 1)]
    usable = {view.node_id: view for view in views if view.alive and view.node_id not in exclude
              and VARIANT.name in view.hosted and view.hosted[VARIANT.name][0] <= exit_block}
    assert {unit.node_id for unit in problem.units} == set(usable)
    for unit in problem.units:
        view = usable[unit.node_id]
        first, last = view.hosted[VARIANT.name]
        assert set(unit.block_ms) == set(range(first, min(last, exit_block) + 1))
        factor = view.unit_factors.get(unit.unit, 1.0)
        for block, ms in unit.block_ms.items():
            assert math.isclose(ms, view.block_ms[VARIANT.name][block] * factor * view.slowdown, rel_tol=1e-9,
                                abs_tol=1e-12)
        assert unit.queue_ms == view.queue_ms
    try:
        chosen = plan(problem)
    except NoFeasiblePlan:
        return
    for segment in chosen.segments:
        assert usable[segment.node_id].hosts(VARIANT.name, segment.first_block, segment.last_block)


async def test_after_a_step_drop_at_most_two_requests_cross_the_dropped_link(manifest):
    """A link falls from 100 to 0.1 Mbit/s mid-stream (the input then needs over a second on it,
    the slow device a few hundred ms): the device plans every request on what it measured
    last; at most two requests are still sent over the dropped link."""
    variant = manifest.variant(heavy_resnet_name(manifest))
    link = EmulatedLink(bandwidth_mbps=100.0, rtt_ms=2.0)
    specs = [ServiceNodeSpec(DEVICE, {variant.name: (0, 3)}, device_slowdown=6.0),
             ServiceNodeSpec(EDGE, {variant.name: (0, 3)})]
    cluster = await start_cluster(specs, manifest=manifest, link_matrix=LinkMatrix(links={(DEVICE, EDGE): link}))
    device = cluster[DEVICE]

    async def one_request(index: int) -> tuple[NodeId, ...]:
        best = place(device.directory, device.compute_model, variant, 3)
        await device.service.execute(request_id=f"step-{index}", family=variant.family, variant=variant.name,
                                     exit_block=3, segments=plan_segments(best), tensor=sample(variant, index),
                                     budget_ms=60_000.0)
        return best.nodes

    try:
        edge_view = device.directory.peer(EDGE)
        await device.transport.probe(edge_view)
        before = [await one_request(index) for index in range(4)]
        assert before[-1] == (EDGE,)  # a fast link: the weak device offloads
        link.bandwidth_mbps = 0.1  # the step drop
        after = [await one_request(index) for index in range(4, 10)]
        assert sum(EDGE in nodes for nodes in after) <= 2, after
        assert after[-1] == (DEVICE,)
    finally:
        await cluster.close()


def test_this_nodes_own_blocks_are_priced_by_its_executor_model_not_the_hop_model():
    """One latency model per node: the hop model still holds this node's optimistic start-up
    profile (1 ms a block: it learns own blocks only from runs that answered in time), while
    the node's own view, the executor's model, has learnt 40 ms a block. The planner believes
    the executor and offloads; a peer's blocks still come from the hop model."""
    variant = MANIFEST.variant("digits-cnn-w1")
    blocks = range(variant.block_count)
    hosted = {variant.name: (0, variant.block_count - 1)}
    views = [PeerView(DEVICE, "", hosted=hosted, block_ms={variant.name: [40.0 for _ in blocks]}),
             PeerView(EDGE, "", hosted=hosted, block_ms={variant.name: [1.0 for _ in blocks]})]
    directory = StaticDirectory(DEVICE, views, default_link=LinkEstimate(bandwidth_mbps=100.0, rtt_ms=2.0))
    model = ComputeLatencyModel()
    model.seed(DEVICE, UnitName("cpu"), variant.name, {block: 1.0 for block in blocks})
    assert place(directory, model, variant, 2).nodes == (EDGE,)
    model.seed(EDGE, UnitName("cpu"), variant.name, {block: 100.0 for block in blocks})  # hops taught: slow
    assert place(directory, model, variant, 2).nodes == (DEVICE,)


def test_a_static_directory_prices_the_way_back_with_its_own_measurement():
    """The split sweep's planner (an in-process node on a ``StaticDirectory``) priced a result's
    return from the edge at the loopback default (0.1 ms) while its own link to the edge measured
    20 ms: on a fast host it offloaded the Orin's requests at 34 ms against 19 locally (1.8x the
    best plan). A node's own directory prices the way back with its measurement, and so must this."""
    device, edge = NodeId("device"), NodeId("edge")
    model = LinkLatencyModel()
    for _ in range(3):
        model.observe_rtt(device, edge, 0.020)
    directory = StaticDirectory(device, [PeerView(node_id=device, url="http://127.0.0.1:9"),
                                         PeerView(node_id=edge, url="http://127.0.0.1:10")],
                                default_link=LOOPBACK_LINK, link_model=model)
    assert directory.link(device, edge).rtt_ms == 20.0
    assert directory.link(edge, device).rtt_ms == 20.0  # not the loopback default
    assert directory.link(edge, NodeId("other")) == LOOPBACK_LINK  # pairs without this node: as configured
