"""The planner: where each block of a request runs.

Given a variant's blocks ``[0, exit]``, the compute units that host them, and the links
between nodes, the planner finds the placement with the lowest predicted latency. It is a
shortest path through a layered graph whose layer ``k`` holds every unit hosting block ``k``:

- running block ``k`` on unit ``u`` costs its predicted compute time (the node's profile
  already multiplied by its load and thermal slowdown, see ``compute_slowdown``);
- moving boundary ``k`` (the tensor between blocks ``k-1`` and ``k``) from unit ``u`` to
  unit ``v`` costs nothing when ``u == v``; otherwise it costs the one-way transfer time
  ``bytes * 8 / bandwidth + rtt / 2`` over the link between their nodes (the intra-node
  link for two units of one node), plus ``v``'s queueing delay, charged once because a new
  segment waits once in ``v``'s queue;
- the input starts in the entry node's memory and the result (the exit head's output) must
  end there. Units of one node share its memory, so the input reaching a unit of the entry
  node, and a result leaving one, cost nothing beyond the block's own measured time.

Why one-way ``rtt / 2``: a hop forwards the activation and the next node starts computing
as soon as the bytes have arrived; the acknowledgement travels back in parallel with that
computation, so only half a round trip sits on the request's critical path.

Codecs. A boundary may travel encoded (``protocol.boundary_codec``: float16, affine uint8,
compressed; the client's JPEG for the input). ``PlanningProblem.codecs[k]`` lists the ways
boundary ``k`` can travel, each with its bytes, its encode and decode time and an accuracy
penalty already converted to milliseconds (the user's QoE weights, see ``placement``). A hop
then costs ``min over codecs of encode + bytes / bandwidth + rtt / 2 + decode + penalty``: the
codec is an edge label per (hop, codec), chosen independently per hop, so the program below
stays exact. A plan's ``total_ms`` is its predicted latency; the penalty is kept apart
(``penalty_ms``) and only steers the choice (``objective_ms``).

Every edge cost depends only on two consecutive blocks, so a dynamic program over the
layers (Bellman over a DAG, ``O(blocks * units^2)``) is exactly optimal: there is no need for
a priority queue. The same pass gives the best latency for every earlier exit at once.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from p2pinfer.errors import InvalidPlanningProblem, NoFeasiblePlan, PlanningError
from p2pinfer.protocol.link_estimate import MS_PER_BYTE_AT_ONE_MBPS, LinkEstimate
from p2pinfer.types import NodeId, UnitName

# Two compute units of one node hand over tensors in shared memory (or over PCIe):
# tens of Gbit/s and a few microseconds, near free next to a network hop but not zero,
# so that a plan does not bounce between units of a node for nothing.
INTRA_NODE_LINK = LinkEstimate(bandwidth_mbps=50_000.0, rtt_ms=0.02)


@dataclass(frozen=True)
class Network:
    """Links between nodes as the planner sees them.

    ``links`` is keyed by ordered pair; a missing pair falls back to the reverse pair, then
    to ``default`` (``None``: no link, the pair cannot exchange tensors).
    """

    links: Mapping[tuple[NodeId, NodeId], LinkEstimate] = field(default_factory=dict)
    default: LinkEstimate | None = None
    intra_node: LinkEstimate = INTRA_NODE_LINK
    # (ms per byte, fixed ms) per ordered pair, filled on first use: one Network is a
    # snapshot shared by every arm the selector asks about, so each pair is priced once.
    _costs: dict[tuple[NodeId, NodeId], tuple[float, float] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def transfer_cost(self, src: NodeId, dst: NodeId) -> tuple[float, float] | None:
        """``(ms per byte, fixed ms)`` of a one-way transfer, or None when there is no usable link."""
        key = (src, dst)
        try:
            return self._costs[key]
        except KeyError:
            pass
        estimate = self.between(src, dst)
        if estimate is None or estimate.bandwidth_mbps <= 0:
            cost = None
        else:
            cost = (MS_PER_BYTE_AT_ONE_MBPS / estimate.bandwidth_mbps, estimate.rtt_ms / 2.0)
        self._costs[key] = cost
        return cost

    def between(self, src: NodeId, dst: NodeId) -> LinkEstimate | None:
        """The link from ``src`` to ``dst`` (the intra-node link when they are the same node)."""
        if src == dst:
            return self.intra_node
        found = self.links.get((src, dst))
        if found is None:
            found = self.links.get((dst, src))
        return self.default if found is None else found


@dataclass(frozen=True)
class CandidateUnit:
    """A compute unit that hosts some blocks of the variant being planned.

    ``block_ms`` maps each hosted block to its predicted compute time on this unit, slowdown
    included; blocks it does not host are absent. ``queue_ms`` is the predicted wait before
    a new segment starts here. ``head_ms`` maps a block to the cost of the exit head after
    it, paid when the plan ends at that block on this unit (absent: free).
    """

    node_id: NodeId
    unit: UnitName
    block_ms: Mapping[int, float]
    queue_ms: float = 0.0
    head_ms: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, table in (("block_ms", self.block_ms), ("head_ms", self.head_ms)):
            for block, ms in table.items():
                if not ms >= 0:
                    raise InvalidPlanningProblem(f"{self.node_id}/{self.unit}: {name}[{block}] = {ms}, "
                                                 "expected a time >= 0")
        if not self.queue_ms >= 0:
            raise InvalidPlanningProblem(f"{self.node_id}/{self.unit}: queue_ms = {self.queue_ms}, expected >= 0")


RAW_CODEC = "float32"
"""The codec of a boundary that travels as is (the only one when a problem lists no codecs)."""


@dataclass(frozen=True)
class CodecOption:
    """One way to move a boundary: ``nbytes`` on the link, ``encode_ms`` on the sender,
    ``decode_ms`` on the receiver, ``penalty_ms`` the accuracy it costs, priced in ms."""

    name: str
    nbytes: int
    encode_ms: float = 0.0
    decode_ms: float = 0.0
    penalty_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (self.nbytes >= 0 and self.encode_ms >= 0 and self.decode_ms >= 0 and self.penalty_ms >= 0):
            raise InvalidPlanningProblem(f"codec option {self} needs non-negative bytes and times")

    def hop_ms(self, per_byte: float, fixed: float) -> float:
        """Cost of a hop with this codec over a link of ``per_byte`` ms/byte and ``fixed`` ms."""
        return self.encode_ms + self.nbytes * per_byte + fixed + self.decode_ms + self.penalty_ms


@dataclass(frozen=True)
class PlanningProblem:
    """Everything the planner needs for one (variant, exit) arm.

    ``output_bytes[k]`` is the size of what block ``k`` emits (boundary ``k + 1``); its length
    is the number of blocks, so the exit is block ``len(output_bytes) - 1``. ``input_bytes``
    is boundary 0, ``result_bytes`` what returns to ``entry_node`` (the exit head's output).
    ``codecs[k]``: the ways boundary ``k`` may travel (absent: raw, ``boundary_bytes(k)``).
    """

    entry_node: NodeId
    input_bytes: int
    output_bytes: Sequence[int]
    result_bytes: int
    units: Sequence[CandidateUnit]
    network: Network = field(default_factory=Network)
    codecs: Mapping[int, Sequence[CodecOption]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for boundary, options in self.codecs.items():
            if not options:
                raise InvalidPlanningProblem(f"boundary {boundary} lists no codec")
        if not self.output_bytes:
            raise InvalidPlanningProblem("a problem needs at least one block")
        if not (self.input_bytes >= 0 and self.result_bytes >= 0 and all(b >= 0 for b in self.output_bytes)):
            raise InvalidPlanningProblem("byte counts must be >= 0")
        seen: set[tuple[NodeId, UnitName]] = set()
        for unit in self.units:
            key = (unit.node_id, unit.unit)
            if key in seen:
                raise InvalidPlanningProblem(f"unit {unit.node_id}/{unit.unit} appears twice")
            seen.add(key)

    @property
    def exit_block(self) -> int:
        return len(self.output_bytes) - 1

    def boundary_bytes(self, block: int) -> int:
        """Size of boundary ``block``: the input of ``block``."""
        return self.input_bytes if block == 0 else self.output_bytes[block - 1]

    def codec_options(self, block: int) -> Sequence[CodecOption]:
        """How boundary ``block`` may travel (raw only, unless ``codecs`` says otherwise)."""
        options = self.codecs.get(block)
        return options if options else (CodecOption(RAW_CODEC, self.boundary_bytes(block)),)

    def best_codec(self, block: int, per_byte: float, fixed: float) -> tuple[float, str]:
        """Cheapest hop for boundary ``block`` over a link: (cost ms, codec name)."""
        best, name = math.inf, RAW_CODEC
        for option in self.codec_options(block):
            cost = option.hop_ms(per_byte, fixed)
            if cost < best:
                best, name = cost, option.name
        return best, name


@dataclass(frozen=True, slots=True)
class Segment:
    """Blocks ``first_block..last_block`` (inclusive) run on one compute unit of one node;
    ``codec``: how the boundary entering it travels when it comes from elsewhere."""

    node_id: NodeId
    unit: UnitName
    first_block: int
    last_block: int
    codec: str = RAW_CODEC


@dataclass(frozen=True)
class Plan:
    """A placement and its predicted latency, split into compute, transfer (encode and decode
    included) and queueing; ``penalty_ms``: the codecs' accuracy cost in ms (not latency)."""

    segments: tuple[Segment, ...]
    compute_ms: float
    transfer_ms: float
    queue_ms: float
    penalty_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.compute_ms + self.transfer_ms + self.queue_ms

    @property
    def objective_ms(self) -> float:
        """What the planner minimises: latency plus the codecs' accuracy penalty."""
        return self.total_ms + self.penalty_ms

    @property
    def codecs(self) -> tuple[str, ...]:
        """The codec of each hop between segments (and into the first, when it is remote)."""
        return tuple(segment.codec for segment in self.segments)

    @property
    def first_block(self) -> int:
        return self.segments[0].first_block

    @property
    def exit_block(self) -> int:
        return self.segments[-1].last_block

    @property
    def nodes(self) -> tuple[NodeId, ...]:
        """Nodes in the order the activation visits them (repeats kept)."""
        return tuple(segment.node_id for segment in self.segments)


def compute_slowdown(load_factor: float = 1.0, throttle_factor: float = 1.0) -> float:
    """How many times longer a block takes than its profile says.

    ``load_factor`` (>= 1) is how much concurrent work stretches a block (e.g. the number of
    requests sharing the unit's cores); ``throttle_factor`` in (0, 1] is the fraction of full
    speed thermal throttling leaves (``p2pinfer.thermal``), so it divides.
    """
    if not (load_factor > 0 and 0 < throttle_factor <= 1):
        raise InvalidPlanningProblem(f"need load_factor > 0 and throttle_factor in (0, 1], "
                                     f"got {load_factor}, {throttle_factor}")
    return load_factor / throttle_factor


def scaled_block_ms(profile_ms: Mapping[int, float], slowdown: float) -> dict[int, float]:
    """A unit's per-block profile with a slowdown applied (see ``compute_slowdown``)."""
    return {block: ms * slowdown for block, ms in profile_ms.items()}


# ---------------------------------------------------------------------------------------
# The dynamic program


@dataclass
class _Search:
    """The layered-graph DP over blocks ``[start, exit]``; kept for backtracking."""

    units: list[CandidateUnit]
    layers: list[list[int]]  # per block: indices into ``units`` that host it
    costs: list[list[float]]  # per block: best cost to have finished the block on that unit
    back: list[list[int]]  # per block: position in the previous layer it came from (-1: the source)
    codecs: list[list[str]]  # per block: the codec of the hop into that unit (RAW_CODEC when none)
    return_ms: list[float]  # per unit: cost to bring the result to the entry node
    end_costs: list[float]  # per block: best latency if the plan ended after it (inf: none or not asked)
    end_positions: list[int]  # per block: position of the best last unit in that layer


def _search(problem: PlanningProblem, start_block: int, source_node: NodeId,
            excluded: Collection[NodeId], *, every_exit: bool = False) -> _Search:
    """Run the DP over blocks ``[start_block, exit]``.

    An unhosted block raises ``NoFeasiblePlan``; with ``every_exit`` it ends the search
    instead, and the cost of ending after each block is computed (not only after the exit).
    """
    last = len(problem.output_bytes) - 1
    if not 0 <= start_block <= last:
        raise InvalidPlanningProblem(f"start block {start_block} is outside [0, {last}]")
    units = [unit for unit in problem.units if unit.node_id not in excluded] if excluded else list(problem.units)
    link = problem.network.transfer_cost
    entry = problem.entry_node

    count = len(units)
    nodes = [unit.node_id for unit in units]
    queues = [unit.queue_ms for unit in units]
    # Per unit pair: ms per byte and fixed ms of moving a boundary from i to j, j's queue
    # included; both 0 on the diagonal (staying on a unit is free), fixed inf when unreachable.
    per_byte = [[0.0] * count for _ in range(count)]
    fixed = [[0.0] * count for _ in range(count)]
    for i in range(count):
        row_per_byte, row_fixed, node_i = per_byte[i], fixed[i], nodes[i]
        for j in range(count):
            if i != j:
                cost = link(node_i, nodes[j])
                if cost is None:
                    row_fixed[j] = math.inf
                else:
                    row_per_byte[j], row_fixed[j] = cost[0], cost[1] + queues[j]

    def host_ms(from_node: NodeId, to_node: NodeId, nbytes: int) -> float:
        """Between a node's memory and a unit: free on the same node, a network hop otherwise."""
        if from_node == to_node:
            return 0.0
        cost = link(from_node, to_node)
        return math.inf if cost is None else nbytes * cost[0] + cost[1]

    def host_codec_ms(from_node: NodeId, to_node: NodeId, block: int) -> tuple[float, str]:
        """``host_ms`` of boundary ``block`` in its cheapest codec."""
        if from_node == to_node:
            return 0.0, RAW_CODEC
        cost = link(from_node, to_node)
        return (math.inf, RAW_CODEC) if cost is None else problem.best_codec(block, cost[0], cost[1])

    codec_blocks = problem.codecs

    # Transposed: the costs into unit j, read in the DP's inner loop.
    per_byte_into = [list(column) for column in zip(*per_byte, strict=True)]
    fixed_into = [list(column) for column in zip(*fixed, strict=True)]
    result_bytes = problem.result_bytes
    return_ms = [host_ms(node, entry, result_bytes) for node in nodes]
    output_bytes = problem.output_bytes
    inf = math.inf
    layers: list[list[int]] = []
    costs: list[list[float]] = []
    back: list[list[int]] = []
    codecs: list[list[str]] = []
    end_costs: list[float] = []
    end_positions: list[int] = []
    previous: list[int] = []
    previous_costs: list[float] = []
    for block in range(start_block, last + 1):
        layer: list[int] = []
        layer_costs: list[float] = []
        layer_back: list[int] = []
        layer_codecs: list[str] = []
        if block == start_block:
            for j in range(count):
                compute = units[j].block_ms.get(block)
                if compute is None:
                    continue
                hop, codec = host_codec_ms(source_node, nodes[j], block)
                layer.append(j)
                layer_costs.append(hop + queues[j] + compute)
                layer_back.append(-1)
                layer_codecs.append(codec)
        elif block in codec_blocks:
            # per (hop, codec) edges: the cheapest codec of each unit pair, then the same DP
            for j in range(count):
                compute = units[j].block_ms.get(block)
                if compute is None:
                    continue
                into_per_byte, into_fixed = per_byte_into[j], fixed_into[j]
                best, best_position, best_codec = inf, -1, RAW_CODEC
                for position, i in enumerate(previous):
                    if i == j:
                        if previous_costs[position] <= best:
                            best, best_position, best_codec = previous_costs[position], position, RAW_CODEC
                        continue
                    if math.isinf(into_fixed[i]):
                        continue
                    hop, codec = problem.best_codec(block, into_per_byte[i], into_fixed[i])
                    if previous_costs[position] + hop < best:
                        best, best_position, best_codec = previous_costs[position] + hop, position, codec
                layer.append(j)
                layer_costs.append(best + compute)
                layer_back.append(best_position)
                layer_codecs.append(best_codec)
        else:
            nbytes = output_bytes[block - 1]
            for j in range(count):
                compute = units[j].block_ms.get(block)
                if compute is None:
                    continue
                into_per_byte, into_fixed = per_byte_into[j], fixed_into[j]
                best, best_position = inf, -1
                # A counted plain loop: on CPython 3.10-3.12 faster than enumerate, zip or
                # min() over a comprehension for the handful of units a layer holds.
                position = 0
                for i in previous:
                    if i == j:
                        # Ties go to staying put: fewer hops for the same predicted time.
                        if previous_costs[position] <= best:
                            best, best_position = previous_costs[position], position
                    else:
                        candidate = previous_costs[position] + nbytes * into_per_byte[i] + into_fixed[i]
                        if candidate < best:
                            best, best_position = candidate, position
                    position += 1  # noqa: SIM113
                layer.append(j)
                layer_costs.append(best + compute)
                layer_back.append(best_position)
                layer_codecs.append(RAW_CODEC)
        if not layer:
            if every_exit:
                break
            where = f" outside {sorted(excluded)}" if excluded else ""
            raise NoFeasiblePlan(f"no compute unit{where} hosts block {block}", block=block)
        best_end, best_end_position = inf, -1
        if every_exit or block == last:
            for position, j in enumerate(layer):
                end = layer_costs[position] + units[j].head_ms.get(block, 0.0) + return_ms[j]
                if end < best_end:
                    best_end, best_end_position = end, position
        layers.append(layer)
        costs.append(layer_costs)
        back.append(layer_back)
        codecs.append(layer_codecs)
        end_costs.append(best_end)
        end_positions.append(best_end_position)
        previous, previous_costs = layer, layer_costs
    return _Search(units, layers, costs, back, codecs, return_ms, end_costs, end_positions)


def _segments_of(search: _Search, start_block: int, end_block: int) -> tuple[Segment, ...]:
    """Backtrack the DP from the best unit after ``end_block`` into maximal same-unit runs."""
    layer_index = end_block - start_block
    position = search.end_positions[layer_index]
    chosen: list[int] = []
    hop_codecs: list[str] = []
    while layer_index >= 0:
        chosen.append(search.layers[layer_index][position])
        hop_codecs.append(search.codecs[layer_index][position])
        position = search.back[layer_index][position]
        layer_index -= 1
    chosen.reverse()
    hop_codecs.reverse()
    segments: list[Segment] = []
    first = start_block
    for offset in range(1, len(chosen) + 1):
        if offset == len(chosen) or chosen[offset] != chosen[offset - 1]:
            unit = search.units[chosen[offset - 1]]
            segments.append(Segment(unit.node_id, unit.unit, first, start_block + offset - 1,
                                    hop_codecs[first - start_block]))
            first = start_block + offset
    return tuple(segments)


def _solve(problem: PlanningProblem, start_block: int, source_node: NodeId,
           excluded: Collection[NodeId]) -> Plan:
    search = _search(problem, start_block, source_node, excluded)
    last = problem.exit_block
    if math.isinf(search.end_costs[-1]):
        raise NoFeasiblePlan(f"no link path from {source_node} through hosts of blocks "
                             f"[{start_block}, {last}] and back to {problem.entry_node}")
    segments = _segments_of(search, start_block, last)
    return evaluate(problem, segments, source_node=source_node)


def plan(problem: PlanningProblem) -> Plan:
    """The placement of blocks ``[0, exit]`` with the lowest predicted latency.

    Raises ``NoFeasiblePlan`` when no unit hosts some block or no link path exists.
    """
    return _solve(problem, 0, problem.entry_node, ())


def predict_latency(problem: PlanningProblem) -> float:
    """Predicted latency (ms) of the best plan; ``math.inf`` when there is none.

    For the selector's feasibility mask: no plan is built, only the DP runs.
    """
    try:
        return _search(problem, 0, problem.entry_node, ()).end_costs[-1]
    except NoFeasiblePlan:
        return math.inf


@dataclass(frozen=True)
class ExitPlans:
    """The best plan ending after each block ``0..exit`` of one problem, from one DP pass.

    Why: the selector's feasibility mask needs every exit's predicted latency, and the arm it
    then picks needs its plan. Backtracking the same pass gives that plan, the one ``plan``
    would find on the problem cut at that exit, without a second problem and search.
    """

    problem: PlanningProblem
    _search: _Search
    latencies: tuple[float, ...]  # per block: predicted latency of the best plan ending there (inf: none)

    def plan(self, exit_block: int) -> Plan:
        """The best plan of blocks ``[0, exit_block]`` (raises ``NoFeasiblePlan``)."""
        if not 0 <= exit_block <= self.problem.exit_block:
            raise InvalidPlanningProblem(f"exit {exit_block} is outside [0, {self.problem.exit_block}]")
        if math.isinf(self.latencies[exit_block]):
            raise NoFeasiblePlan(f"no plan of blocks [0, {exit_block}] from {self.problem.entry_node}",
                                 block=exit_block)
        segments = _segments_of(self._search, 0, exit_block)
        cut = self.problem if exit_block == self.problem.exit_block else replace(
            self.problem, output_bytes=self.problem.output_bytes[:exit_block + 1])
        return evaluate(cut, segments)


def plan_every_exit(problem: PlanningProblem) -> ExitPlans:
    """Every exit's best plan and predicted latency (``ExitPlans``), in one DP pass."""
    search = _search(problem, 0, problem.entry_node, (), every_exit=True)
    latencies = tuple(search.end_costs) + (math.inf,) * (problem.exit_block + 1 - len(search.end_costs))
    return ExitPlans(problem, search, latencies)


def predict_exit_latencies(problem: PlanningProblem) -> tuple[float, ...]:
    """Predicted latency of the best plan ending after each block ``0..exit`` (one DP pass).

    Entry ``e`` assumes the request stops at exit ``e`` (its head cost from ``head_ms``, the
    result of ``result_bytes`` returned). ``math.inf`` where no plan exists: every exit at
    or after an unhosted block.
    """
    return plan_every_exit(problem).latencies


def replan_from(problem: PlanningProblem, start_block: int, current_node: NodeId,
                exclude_nodes: Iterable[NodeId] = ()) -> Plan:
    """Re-plan blocks ``[start_block, exit]`` after a failed hop.

    The activation (boundary ``start_block``) sits in ``current_node``'s memory; units on
    ``exclude_nodes`` (failed or suspected peers) are not used; the result still returns to
    the problem's entry node.
    """
    excluded = frozenset(exclude_nodes)
    if problem.entry_node in excluded:
        raise NoFeasiblePlan(f"entry node {problem.entry_node} is excluded: nowhere to return the result")
    if current_node in excluded:
        raise InvalidPlanningProblem(f"current node {current_node} holds the activation but is excluded")
    return _solve(problem, start_block, current_node, excluded)


def evaluate(problem: PlanningProblem, segments: Sequence[Segment], *,
             source_node: NodeId | None = None) -> Plan:
    """Predicted latency of a given placement (baselines, static splits, hindsight).

    The segments must be contiguous, end at the problem's exit, and each must sit on a
    candidate unit that hosts its blocks; ``source_node`` holds boundary
    ``segments[0].first_block`` (default: the entry node).
    """
    if not segments:
        raise InvalidPlanningProblem("a plan needs at least one segment")
    source = problem.entry_node if source_node is None else source_node
    by_key = {(unit.node_id, unit.unit): unit for unit in problem.units}
    network = problem.network
    compute = transfer = queue = penalty = 0.0
    expected_first = segments[0].first_block
    where_node: NodeId = source
    where_unit: CandidateUnit | None = None
    for segment in segments:
        unit = by_key.get((segment.node_id, segment.unit))
        if unit is None:
            raise InvalidPlanningProblem(f"segment on unknown unit {segment.node_id}/{segment.unit}")
        if segment.first_block != expected_first or segment.last_block < segment.first_block:
            raise InvalidPlanningProblem(f"segments are not contiguous at {segment}")
        if not 0 <= segment.first_block <= segment.last_block <= problem.exit_block:
            raise InvalidPlanningProblem(f"{segment} is outside blocks [0, {problem.exit_block}]")
        if unit is not where_unit:
            # From a node's memory to one of its own units is free; anything else is a hop.
            if where_unit is not None or where_node != unit.node_id:
                estimate = network.between(where_node, unit.node_id)
                option = _codec_option(problem, segment)
                if estimate is None:
                    transfer += math.inf
                else:
                    transfer += option.encode_ms + estimate.transfer_ms(option.nbytes) + option.decode_ms
                    penalty += option.penalty_ms
            queue += unit.queue_ms
        for block in range(segment.first_block, segment.last_block + 1):
            ms = unit.block_ms.get(block)
            if ms is None:
                raise InvalidPlanningProblem(f"{segment.node_id}/{segment.unit} does not host block {block}")
            compute += ms
        where_node, where_unit = unit.node_id, unit
        expected_first = segment.last_block + 1
    if expected_first != problem.exit_block + 1:
        raise InvalidPlanningProblem(f"segments end at block {expected_first - 1}, the exit is {problem.exit_block}")
    last_unit = where_unit
    assert last_unit is not None
    compute += last_unit.head_ms.get(problem.exit_block, 0.0)
    if last_unit.node_id != problem.entry_node:
        estimate = network.between(last_unit.node_id, problem.entry_node)
        transfer += math.inf if estimate is None else estimate.transfer_ms(problem.result_bytes)
    return Plan(segments=tuple(segments), compute_ms=compute, transfer_ms=transfer, queue_ms=queue,
                penalty_ms=penalty)


def _codec_option(problem: PlanningProblem, segment: Segment) -> CodecOption:
    for option in problem.codec_options(segment.first_block):
        if option.name == segment.codec:
            return option
    if segment.codec == RAW_CODEC:
        return CodecOption(RAW_CODEC, problem.boundary_bytes(segment.first_block))
    raise InvalidPlanningProblem(f"codec {segment.codec!r} is not offered for boundary {segment.first_block}")


__all__ = [
    "INTRA_NODE_LINK", "RAW_CODEC", "CandidateUnit", "CodecOption", "ExitPlans",
    "InvalidPlanningProblem", "LinkEstimate", "Network", "NoFeasiblePlan",
    "NodeId", "Plan", "PlanningError", "PlanningProblem", "Segment", "UnitName", "compute_slowdown", "evaluate",
    "plan", "plan_every_exit", "predict_exit_latencies", "predict_latency", "replan_from", "scaled_block_ms",
]
