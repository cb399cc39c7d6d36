"""The planner's decisions in the situations issue 7 names: slow links, hot nodes, failures."""

from __future__ import annotations

import math

import pytest

from p2pinfer.emulation.device_profile import get_profile
from p2pinfer.emulation.link import EmulatedLink
from p2pinfer.emulation.thermal import ThermalModel
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.planner import (
    CandidateUnit,
    InvalidPlanningProblem,
    Network,
    NoFeasiblePlan,
    PlanningProblem,
    Segment,
    compute_slowdown,
    evaluate,
    plan,
    predict_exit_latencies,
    predict_latency,
    replan_from,
    scaled_block_ms,
)
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId, UnitName

DEVICE, EDGE, EDGE_2 = NodeId("device"), NodeId("edge"), NodeId("edge-2")
CPU, GPU = UnitName("cpu"), UnitName("cuda:0")
BLOCKS = 6
INPUT_BYTES = 3 * 224 * 224 * 4  # a float32 image
OUTPUT_BYTES = [800_000, 400_000, 200_000, 100_000, 50_000, 8_000]
RESULT_BYTES = 4_000


def uniform_blocks(ms: float) -> dict[int, float]:
    return {block: ms for block in range(BLOCKS)}


def problem_with(units: list[CandidateUnit], links: dict, entry: NodeId = DEVICE) -> PlanningProblem:
    return PlanningProblem(entry_node=entry, input_bytes=INPUT_BYTES, output_bytes=OUTPUT_BYTES,
                           result_bytes=RESULT_BYTES, units=units, network=Network(links=links))


def measured_network(emulated: dict[tuple[NodeId, NodeId], EmulatedLink]) -> Network:
    """What the node would know after real transfers over the emulated links."""
    model = LinkLatencyModel()
    for (source, destination), link in emulated.items():
        reply = EmulatedLink(bandwidth_mbps=link.bandwidth_mbps, rtt_ms=link.rtt_ms, seed=7)
        for step in range(200):
            nbytes = 512 if step % 2 else 256 * 1024
            seconds = link.delay_s(nbytes, now_s=step) + reply.delay_s(200, now_s=step)
            model.observe_transfer(source, destination, nbytes, seconds)
    return Network(links=model.estimates())


def device_and_edge() -> list[CandidateUnit]:
    return [CandidateUnit(DEVICE, CPU, uniform_blocks(40.0)), CandidateUnit(EDGE, CPU, uniform_blocks(4.0))]


def test_fast_link_offloads_and_slow_emulated_link_keeps_work_local() -> None:
    fast = measured_network({(DEVICE, EDGE): EmulatedLink(bandwidth_mbps=200.0, rtt_ms=2.0)})
    offloaded = plan(problem_with(device_and_edge(), dict(fast.links)))
    assert EDGE in offloaded.nodes

    slow = measured_network({(DEVICE, EDGE): EmulatedLink(bandwidth_mbps=0.5, rtt_ms=80.0, jitter_ms=5.0)})
    local = plan(problem_with(device_and_edge(), dict(slow.links)))
    assert local.segments == (Segment(DEVICE, CPU, 0, BLOCKS - 1),)
    assert local.transfer_ms == 0.0


def test_mid_speed_link_splits_where_the_tensor_is_small() -> None:
    # The activation shrinks block by block: with a middling link the device runs the
    # early blocks itself and ships the smaller tensor later (Neurosurgeon's shape).
    links = {(DEVICE, EDGE): LinkEstimate(bandwidth_mbps=20.0, rtt_ms=10.0)}
    units = [CandidateUnit(DEVICE, CPU, uniform_blocks(40.0)), CandidateUnit(EDGE, CPU, uniform_blocks(2.0))]
    result = plan(problem_with(units, links))
    assert [segment.node_id for segment in result.segments] == [DEVICE, EDGE]
    assert 0 < result.segments[1].first_block < BLOCKS
    local_only = evaluate(problem_with(units, links), [Segment(DEVICE, CPU, 0, BLOCKS - 1)])
    full_offload = evaluate(problem_with(units, links), [Segment(EDGE, CPU, 0, BLOCKS - 1)])
    assert result.total_ms < min(local_only.total_ms, full_offload.total_ms)


def test_hot_throttled_node_loses_its_work() -> None:
    links = {(DEVICE, EDGE): LinkEstimate(100.0, 5.0), (DEVICE, EDGE_2): LinkEstimate(100.0, 5.0),
             (EDGE, EDGE_2): LinkEstimate(100.0, 5.0)}
    profile_ms = uniform_blocks(3.0)
    profile = get_profile("jetson-orin-nano")

    def units_given(edge_heat: ThermalModel) -> list[CandidateUnit]:
        edge_ms = scaled_block_ms(profile_ms, compute_slowdown(1.0, edge_heat.throttle_factor))
        return [CandidateUnit(DEVICE, CPU, uniform_blocks(50.0)),
                CandidateUnit(EDGE, CPU, edge_ms),
                CandidateUnit(EDGE_2, CPU, scaled_block_ms(profile_ms, 1.2))]  # a little slower when cool

    heat = ThermalModel(profile.thermal, clock=lambda: 0.0)
    assert heat.throttle_factor == 1.0
    assert set(plan(problem_with(units_given(heat), links)).nodes) == {EDGE}

    heat.inject(profile.thermal.trip_points_c[-1] + 5.0, hold=True)
    assert heat.throttle_factor < 1.0
    moved = plan(problem_with(units_given(heat), links))
    assert EDGE not in moved.nodes and EDGE_2 in moved.nodes


def test_unhosted_block_is_a_typed_error_and_earlier_exits_stay_feasible() -> None:
    units = [CandidateUnit(DEVICE, CPU, {0: 5.0, 1: 5.0, 3: 5.0}), CandidateUnit(EDGE, CPU, {0: 1.0, 1: 1.0})]
    problem = PlanningProblem(DEVICE, 1000, [100, 100, 100, 100], 40, units,
                              Network(links={(DEVICE, EDGE): LinkEstimate(100.0, 1.0)}))
    with pytest.raises(NoFeasiblePlan, match="block 2") as caught:
        plan(problem)
    assert caught.value.block == 2
    assert predict_latency(problem) == math.inf
    latencies = predict_exit_latencies(problem)
    assert math.isfinite(latencies[0]) and math.isfinite(latencies[1])
    assert latencies[2:] == (math.inf, math.inf)


def test_missing_link_is_infeasible_not_free() -> None:
    units = [CandidateUnit(DEVICE, CPU, {0: 1.0}), CandidateUnit(EDGE, CPU, {1: 1.0})]
    problem = PlanningProblem(DEVICE, 1000, [100, 100], 40, units, Network())
    with pytest.raises(NoFeasiblePlan, match="no link path"):
        plan(problem)


def chain_problem() -> PlanningProblem:
    nodes = [DEVICE, EDGE, EDGE_2]
    links = {(a, b): LinkEstimate(1000.0, 1.0) for a in nodes for b in nodes if a < b}
    units = [CandidateUnit(DEVICE, CPU, {0: 1.0, 1: 30.0, 2: 30.0, 3: 30.0}),
             CandidateUnit(EDGE, CPU, {1: 1.0, 2: 10.0, 3: 10.0}),
             CandidateUnit(EDGE_2, CPU, {2: 1.0, 3: 1.0})]
    return PlanningProblem(DEVICE, 10_000, [1000, 1000, 1000, 1000], 40, units, Network(links=links))


def test_replan_from_the_failed_hop_avoids_excluded_nodes() -> None:
    problem = chain_problem()
    chain = plan(problem)
    assert chain.nodes == (DEVICE, EDGE, EDGE_2)

    # EDGE_2 died while EDGE held boundary 2: finish on EDGE, return to the device.
    rescued = replan_from(problem, 2, EDGE, exclude_nodes={EDGE_2})
    assert rescued.first_block == 2 and rescued.exit_block == 3
    assert EDGE_2 not in rescued.nodes
    assert rescued.segments == (Segment(EDGE, CPU, 2, 3),)

    # EDGE died before receiving boundary 1: the device continues alone or via EDGE_2.
    rescued = replan_from(problem, 1, DEVICE, exclude_nodes=[EDGE])
    assert EDGE not in rescued.nodes and rescued.first_block == 1

    # Nobody but the failed nodes hosts block 1.
    only_edge = PlanningProblem(DEVICE, 10, [10, 10], 4,
                                [CandidateUnit(DEVICE, CPU, {0: 1.0}), CandidateUnit(EDGE, CPU, {1: 1.0})],
                                Network(default=LinkEstimate(100.0, 1.0)))
    with pytest.raises(NoFeasiblePlan, match="outside"):
        replan_from(only_edge, 1, DEVICE, exclude_nodes=[EDGE])
    with pytest.raises(NoFeasiblePlan, match="entry node"):
        replan_from(problem, 1, EDGE, exclude_nodes=[DEVICE])


def test_units_of_one_node_share_a_request_through_the_near_free_link() -> None:
    # The GPU is fast on the heavy convolutional blocks, the CPU on the tiny tail blocks
    # (kernel launch overhead): a plan may hop between them on one node.
    gpu_ms = {0: 2.0, 1: 2.0, 2: 2.0, 3: 9.0, 4: 9.0, 5: 9.0}
    cpu_ms = {0: 30.0, 1: 30.0, 2: 30.0, 3: 1.0, 4: 1.0, 5: 1.0}
    units = [CandidateUnit(DEVICE, CPU, cpu_ms), CandidateUnit(DEVICE, GPU, gpu_ms)]
    result = plan(problem_with(units, {}))
    assert result.segments == (Segment(DEVICE, GPU, 0, 2), Segment(DEVICE, CPU, 3, 5))
    assert 0 < result.transfer_ms < 0.2


def test_queueing_delay_is_charged_once_per_segment() -> None:
    units = [CandidateUnit(DEVICE, CPU, uniform_blocks(10.0), queue_ms=7.0)]
    result = plan(problem_with(units, {}))
    assert result.queue_ms == 7.0 and result.compute_ms == 60.0 and result.total_ms == 67.0


def test_busy_queue_moves_work_to_an_idle_peer() -> None:
    links = {(DEVICE, EDGE): LinkEstimate(1000.0, 1.0)}
    idle = plan(problem_with([CandidateUnit(DEVICE, CPU, uniform_blocks(5.0)),
                              CandidateUnit(EDGE, CPU, uniform_blocks(5.0))], links))
    assert idle.nodes == (DEVICE,)
    busy = plan(problem_with([CandidateUnit(DEVICE, CPU, uniform_blocks(5.0), queue_ms=200.0),
                              CandidateUnit(EDGE, CPU, uniform_blocks(5.0))], links))
    assert busy.nodes == (EDGE,)


def test_slowdown_combines_load_and_throttle() -> None:
    assert compute_slowdown(2.0, 0.5) == 4.0
    assert scaled_block_ms({0: 1.5, 3: 2.0}, 2.0) == {0: 3.0, 3: 4.0}
    with pytest.raises(InvalidPlanningProblem):
        compute_slowdown(1.0, 0.0)


def test_invalid_inputs_are_typed_errors() -> None:
    with pytest.raises(InvalidPlanningProblem):
        CandidateUnit(DEVICE, CPU, {0: -1.0})
    with pytest.raises(InvalidPlanningProblem):
        CandidateUnit(DEVICE, CPU, {0: float("nan")})
    with pytest.raises(InvalidPlanningProblem):
        PlanningProblem(DEVICE, 1, [], 1, [])
    with pytest.raises(InvalidPlanningProblem, match="twice"):
        PlanningProblem(DEVICE, 1, [1], 1, [CandidateUnit(DEVICE, CPU, {0: 1.0})] * 2)
    problem = chain_problem()
    with pytest.raises(InvalidPlanningProblem, match="does not host"):
        evaluate(problem, [Segment(EDGE_2, CPU, 0, 3)])
    with pytest.raises(InvalidPlanningProblem, match="contiguous"):
        evaluate(problem, [Segment(DEVICE, CPU, 0, 1), Segment(EDGE_2, CPU, 3, 3)])
    with pytest.raises(InvalidPlanningProblem, match="outside"):
        replan_from(problem, 9, DEVICE)
    with pytest.raises(InvalidPlanningProblem, match="outside blocks"):
        evaluate(problem, [Segment(DEVICE, CPU, 0, 3), Segment(DEVICE, CPU, 4, 4)])
    with pytest.raises(InvalidPlanningProblem, match="unknown unit"):
        evaluate(problem, [Segment(NodeId("ghost"), CPU, 0, 3)])
