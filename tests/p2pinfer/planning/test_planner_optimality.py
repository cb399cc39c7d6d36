"""The planner against exhaustive search on random small clusters.

The cost model is re-implemented here independently of the planner's DP (every assignment
of a hosting unit to every block is priced from scratch), so a DP that prunes a path it
should not, mis-charges a queue or a transfer, or returns a plan inconsistent with its own
cost, fails here.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinfer.planning.planner import (
    CandidateUnit,
    Network,
    NoFeasiblePlan,
    Plan,
    PlanningProblem,
    evaluate,
    plan,
    plan_every_exit,
    predict_exit_latencies,
    predict_latency,
    replan_from,
)
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId, UnitName

TIMES = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)
BYTES = st.integers(min_value=0, max_value=2_000_000)
LINKS = st.builds(LinkEstimate,
                  bandwidth_mbps=st.one_of(st.just(0.0), st.floats(min_value=0.1, max_value=1000.0)),
                  rtt_ms=st.floats(min_value=0.0, max_value=50.0))


@st.composite
def problems(draw: st.DrawFn) -> PlanningProblem:
    node_count = draw(st.integers(1, 4))
    block_count = draw(st.integers(1, 5))
    nodes = [NodeId(f"n{index}") for index in range(node_count)]
    entry = nodes[draw(st.integers(0, node_count - 1))]
    entry_hosts_all = draw(st.booleans())
    units = []
    for node in nodes:
        for unit_name in ("cpu", "cuda:0")[:draw(st.integers(1, 2))]:
            if entry_hosts_all and node == entry and unit_name == "cpu":
                hosted = set(range(block_count))
            else:
                hosted = draw(st.sets(st.integers(0, block_count - 1)))
            block_ms = {block: draw(TIMES) for block in sorted(hosted)}
            head_ms = {block: draw(st.floats(0.0, 5.0)) for block in sorted(hosted) if draw(st.booleans())}
            units.append(CandidateUnit(node, UnitName(unit_name), block_ms, queue_ms=draw(st.floats(0.0, 20.0)),
                                       head_ms=head_ms))
    links = {}
    for source, destination in itertools.permutations(nodes, 2):
        link = draw(st.one_of(st.none(), LINKS))
        if link is not None:
            links[(source, destination)] = link
    network = Network(links=links, default=draw(st.one_of(st.none(), LINKS)),
                      intra_node=LinkEstimate(draw(st.floats(1000.0, 100_000.0)), draw(st.floats(0.0, 0.1))))
    return PlanningProblem(entry_node=entry, input_bytes=draw(BYTES),
                           output_bytes=[draw(BYTES) for _ in range(block_count)],
                           result_bytes=draw(st.integers(0, 40_000)), units=draw(st.permutations(units)),
                           network=network)


# --- an independent price of one assignment (unit per block) -----------------------------------

def link_between(problem: PlanningProblem, source: str, destination: str) -> LinkEstimate | None:
    network = problem.network
    if source == destination:
        return network.intra_node
    for pair in ((source, destination), (destination, source)):
        if pair in network.links:
            return network.links[pair]
    return network.default


def one_way_ms(link: LinkEstimate | None, nbytes: int) -> float:
    if link is None or link.bandwidth_mbps == 0:
        return math.inf
    return nbytes * 8 / (link.bandwidth_mbps * 1e6) * 1e3 + link.rtt_ms / 2


def assignment_cost(problem: PlanningProblem, assignment: tuple[CandidateUnit, ...], start_block: int,
                    source: str) -> float:
    """Cost of running block ``start_block + i`` on ``assignment[i]``, input at ``source``."""
    total = 0.0
    for offset, unit in enumerate(assignment):
        block = start_block + offset
        nbytes = problem.input_bytes if block == 0 else problem.output_bytes[block - 1]
        if offset == 0:
            if unit.node_id != source:
                total += one_way_ms(link_between(problem, source, unit.node_id), nbytes)
            total += unit.queue_ms
        elif assignment[offset - 1] is not unit:
            total += one_way_ms(link_between(problem, assignment[offset - 1].node_id, unit.node_id), nbytes)
            total += unit.queue_ms
        total += unit.block_ms[block]
    last = assignment[-1]
    total += last.head_ms.get(start_block + len(assignment) - 1, 0.0)
    if last.node_id != problem.entry_node:
        total += one_way_ms(link_between(problem, last.node_id, problem.entry_node), problem.result_bytes)
    return total


def exhaustive_optimum(problem: PlanningProblem, start_block: int = 0, source: str | None = None,
                       excluded: frozenset[str] = frozenset()) -> float:
    source = problem.entry_node if source is None else source
    usable = [unit for unit in problem.units if unit.node_id not in excluded]
    hosts = [[unit for unit in usable if block in unit.block_ms]
             for block in range(start_block, len(problem.output_bytes))]
    return min((assignment_cost(problem, assignment, start_block, source)
                for assignment in itertools.product(*hosts)), default=math.inf)


def assignment_of(problem: PlanningProblem, result: Plan) -> tuple[CandidateUnit, ...]:
    """The unit of every block a plan covers, checking that the plan is well formed."""
    by_key = {(unit.node_id, unit.unit): unit for unit in problem.units}
    assignment = []
    expected = result.segments[0].first_block
    for segment in result.segments:
        assert segment.first_block == expected and segment.last_block >= segment.first_block
        unit = by_key[(segment.node_id, segment.unit)]
        for block in range(segment.first_block, segment.last_block + 1):
            assert block in unit.block_ms, f"{segment} runs block {block} its unit does not host"
            assignment.append(unit)
        expected = segment.last_block + 1
    assert expected == len(problem.output_bytes), "the plan must end at the exit"
    for before, after in itertools.pairwise(result.segments):
        assert (before.node_id, before.unit) != (after.node_id, after.unit), "segments should be maximal"
    return tuple(assignment)


def same_cost(left: float, right: float) -> bool:
    return math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-9)


PROPERTY_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(problems())
def test_plan_is_the_exhaustive_optimum(problem: PlanningProblem) -> None:
    optimum = exhaustive_optimum(problem)
    if math.isinf(optimum):
        with pytest.raises(NoFeasiblePlan):
            plan(problem)
        assert predict_latency(problem) == math.inf
        return
    result = plan(problem)
    assert result.first_block == 0 and result.exit_block == problem.exit_block
    assert same_cost(result.total_ms, optimum), (result, optimum)
    assert same_cost(assignment_cost(problem, assignment_of(problem, result), 0, problem.entry_node), optimum)
    assert same_cost(predict_latency(problem), optimum)
    assert same_cost(evaluate(problem, result.segments).total_ms, result.total_ms)


@PROPERTY_SETTINGS
@given(problems())
def test_every_exit_latency_is_the_optimum_of_the_shorter_problem(problem: PlanningProblem) -> None:
    latencies = predict_exit_latencies(problem)
    assert len(latencies) == len(problem.output_bytes)
    for exit_block, latency in enumerate(latencies):
        shorter = PlanningProblem(problem.entry_node, problem.input_bytes, problem.output_bytes[:exit_block + 1],
                                  problem.result_bytes, problem.units, problem.network)
        optimum = exhaustive_optimum(shorter)
        assert latency == optimum if math.isinf(optimum) else same_cost(latency, optimum)


@PROPERTY_SETTINGS
@given(problems())
def test_every_exit_plan_of_one_pass_is_the_plan_of_the_shorter_problem(problem: PlanningProblem) -> None:
    """The selector places the arm it picked from the pass that priced every exit
    (``plan_every_exit``): each exit's plan must be the optimum of the problem cut there,
    priced as ``evaluate`` prices it."""
    every = plan_every_exit(problem)
    assert every.latencies == predict_exit_latencies(problem)
    for exit_block, latency in enumerate(every.latencies):
        shorter = PlanningProblem(problem.entry_node, problem.input_bytes, problem.output_bytes[:exit_block + 1],
                                  problem.result_bytes, problem.units, problem.network)
        if math.isinf(latency):
            with pytest.raises(NoFeasiblePlan):
                every.plan(exit_block)
            continue
        found = every.plan(exit_block)
        assert found.exit_block == exit_block
        assert same_cost(found.total_ms, latency)
        assert same_cost(found.total_ms, exhaustive_optimum(shorter))
        assert same_cost(evaluate(shorter, found.segments).total_ms, found.total_ms)


@PROPERTY_SETTINGS
@given(problems(), st.data())
def test_replan_is_the_exhaustive_optimum_without_the_failed_nodes(problem: PlanningProblem,
                                                                     data: st.DataObject) -> None:
    nodes = sorted({unit.node_id for unit in problem.units})
    start_block = data.draw(st.integers(0, problem.exit_block))
    current = data.draw(st.sampled_from(nodes))
    excluded = frozenset(data.draw(st.sets(st.sampled_from(nodes)))) - {current, problem.entry_node}
    optimum = exhaustive_optimum(problem, start_block, current, excluded)
    if math.isinf(optimum):
        with pytest.raises(NoFeasiblePlan):
            replan_from(problem, start_block, current, excluded)
        return
    result = replan_from(problem, start_block, current, excluded)
    assert result.first_block == start_block
    assert not excluded & set(result.nodes)
    assignment = assignment_of(problem, result)
    assert same_cost(result.total_ms, optimum)
    assert same_cost(assignment_cost(problem, assignment, start_block, current), optimum)
