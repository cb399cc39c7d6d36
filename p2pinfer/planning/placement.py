"""Placement: turn what a node knows about the cluster into the planner's problem for one arm.

The planner (``p2pinfer.planner``) is pure: it prices blocks and hops it is given. This module
gathers those prices from the node's knowledge:

- compute, per node, compute unit and block: the online estimate (``ComputeLatencyModel``,
  learnt from measured hops) when there is one, else the node's gossiped profile; either
  times the node's current slowdown (load x heat). The online estimates are kept *without*
  the slowdown (the stage service divides measured times by the slowdown they ran under),
  so a node that cools down is trusted again at once instead of after many slow samples;
- queueing: the node's predicted queue wait;
- transfers: boundary bytes from the zoo manifest (one sample: requests are single samples)
  and the directory's link estimates;
- the result: the exit head's logits (``num_classes`` float32 values) back to the entry node.

Nodes that are dead, locally suspected or explicitly excluded are left out, so the same
function serves first plans and re-plans after a failed hop.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from p2pinfer.planning.latency_model import ComputeLatencyModel
from p2pinfer.planning.peer_directory import PeerDirectory, PeerView
from p2pinfer.planning.planner import (
    CandidateUnit,
    CodecOption,
    ExitPlans,
    InvalidPlanningProblem,
    Network,
    Plan,
    PlanningProblem,
    Segment,
    plan,
    plan_every_exit,
)
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.types import NodeId, UnitName
from zoo.family import class_count
from zoo.manifest import VariantInfo

LOGIT_BYTES = 4  # exit heads answer float32 logits
OPTIONS_CACHE_ENTRIES = 4096  # (variant, boundary) pairs one pricing keeps priced

DEFAULT_CODEC_MS_PER_MB: Mapping[str, float] = {"float32": 0.0, "float16": 1.2, "uint8": 0.17, "uint8-channel": 0.17}
"""Encode (and decode) ms per MB of float32 boundary, measured on this project's 2-core host
(numpy; ``benchmarks.boundary_codecs`` times them). The fallback only: a node times its own at start
(``runtime.warmup.measure_codec_costs``), scaled to the device it emulates."""


@dataclass(frozen=True)
class CodecPricing:
    """How a node prices boundary codecs for the planner.

    ``codecs``: the names offered per hop (``protocol.boundary_codec``); a lossy one is offered
    at a cut only when the manifest records its accuracy change there. ``encode_ms_per_mb`` /
    ``decode_ms_per_mb``: measured per base codec (MB of float32 boundary) by the node that
    plans, at its start, times its emulated CPU slowdown. A hop's encode runs on the sender and
    its decode on the receiver, but peers do not gossip their codec costs: both are priced at
    the planning node's own speed. That overprices the decode on a peer faster than a weak
    entry (and underprices it on a slower one); the error is small against the transfer it is
    traded with (a uint8 decode of the real family's 1.6 MB boundary: ~0.15 ms on the host,
    ~1.5 ms on an rpi4 x10, against ~160 ms of float32 at 80 Mbit/s). The accuracy cost
    becomes milliseconds as the QoE reward trades them: one unit of top-1 accuracy is worth
    ``accuracy / latency`` (the user's weights) times the deadline (``ms_per_accuracy``);
    ``max_accuracy_drop`` is a hard bound. ``image``: (media type, bytes, decode ms) of the
    client's image, a first-class way for the input to travel.
    """

    codecs: tuple[str, ...] = ("float32", "float16", "uint8", "uint8-channel")
    encode_ms_per_mb: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CODEC_MS_PER_MB))
    decode_ms_per_mb: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CODEC_MS_PER_MB))
    ms_per_accuracy: float = 200.0
    max_accuracy_drop: float = 0.01
    image: tuple[str, int, float] | None = None
    # options per (variant, boundary), computed once: the planner asks for them on every arm of
    # every request (half of building a planning problem), and they depend only on the fields
    # above and the manifest; ``dataclasses.replace`` gives the copy an empty cache of its own
    _options: dict[tuple[str, int], tuple[VariantInfo, tuple[CodecOption, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @staticmethod
    def ms_per_accuracy_of(accuracy_weight: float, latency_weight: float, deadline_ms: float) -> float:
        """The QoE reward's exchange rate (``selector.qoe``: accuracy share vs latency / deadline)."""
        return math.inf if latency_weight <= 0 else accuracy_weight / latency_weight * deadline_ms

    def options(self, variant: VariantInfo, boundary: int) -> tuple[CodecOption, ...]:
        """The ways boundary ``boundary`` of ``variant`` may travel, with their prices."""
        cached = self._options.get((variant.name, boundary))
        if cached is not None and cached[0] is variant:
            return cached[1]
        found = tuple(self._price_options(variant, boundary))
        if len(self._options) >= OPTIONS_CACHE_ENTRIES:
            self._options.clear()
        self._options[(variant.name, boundary)] = (variant, found)
        return found

    def _price_options(self, variant: VariantInfo, boundary: int) -> list[CodecOption]:
        raw = variant.boundary_bytes(boundary)
        megabytes = raw / 1e6
        found: list[CodecOption] = []
        for name in self.codecs:
            base = name.partition("+")[0]
            drop = accuracy_drop(variant, boundary, name)
            if drop is None or drop > self.max_accuracy_drop:
                continue
            if drop > 0 and math.isinf(self.ms_per_accuracy):
                continue  # a user who weighs no latency takes no accuracy loss for speed
            factor = {"float32": 1.0, "float16": 0.5}.get(base, 0.25)
            found.append(CodecOption(name, int(raw * factor), self.encode_ms_per_mb.get(base, 0.0) * megabytes,
                                     self.decode_ms_per_mb.get(base, 0.0) * megabytes,
                                     drop * self.ms_per_accuracy if drop > 0 else 0.0))
        if boundary == 0 and self.image is not None:
            found.append(CodecOption(self.image[0], self.image[1], 0.0, self.image[2]))
        return found


def accuracy_drop(variant: VariantInfo, boundary: int, codec: str) -> float | None:
    """The top-1 accuracy a lossy codec is priced to lose at ``boundary`` (None: unmeasured).

    The manifest's measured change, but never below half an image of the held-out set it was
    measured on: n images cannot resolve a change under 1/n, and "no image changed" is not
    "free" (without this floor, uint8 would win every hop by its bytes even on a link where
    float32 costs a fraction of a millisecond more). ``float32`` (and compression on top of
    any codec) loses nothing.
    """
    base = codec.partition("+")[0]
    if base == "float32":
        return 0.0
    for entry in variant.codec_accuracy:
        if entry.boundary == boundary and entry.codec == base:
            return max(-entry.accuracy_change, 0.5 / max(entry.images, 1))
    return None


ArmKey = tuple[str, int]
"""(variant name, exit block): the selector's arm without a split."""


def result_bytes(variant: VariantInfo) -> int:
    """Size of what returns to the entry node: one sample's logits."""
    return class_count(variant) * LOGIT_BYTES


def _fallback_profile(peers: Sequence[PeerView], variant: str, exit_block: int) -> list[float | None]:
    """Per block, the median of every node's profile: the guess for a host that has none."""
    fallback: list[float | None] = []
    for block in range(exit_block + 1):
        known = [view.block_ms[variant][block] for view in peers
                 if variant in view.block_ms and block < len(view.block_ms[variant])]
        fallback.append(statistics.median(known) if known else None)
    return fallback


def candidate_units(directory: PeerDirectory, compute_model: ComputeLatencyModel | None, variant: VariantInfo,
                    exit_block: int, exclude: Collection[NodeId | str] = (), *,
                    tail: bool = True) -> list[CandidateUnit]:
    """Every compute unit of a live, non-excluded node that hosts blocks of ``variant`` up to
    ``exit_block``, with its predicted per-block time (slowdown included) and queue wait.

    A block nobody has a time for (no profile, no estimate anywhere) costs 0: the plan is
    then decided by transfers, and the first measured hop corrects it.

    This node's own units are priced from its own view (the executor's model, learnt from
    every block it runs, those of requests that then came late included), not from the hop
    model: one latency model for the planner and the executor of a node. (The hop model learnt
    own blocks only from runs that answered in time, so a device slower than its profile kept
    being chosen for requests that then failed there at their last block.) Peers' units come
    from the hops measured to them. Both are tails (p90, ``latency_model.P90_SPREADS``), not
    means: an arm the mask lets through should make its deadline nine times in ten, not one
    time in two. A unit's queue includes its node's route overhead (what plans on it took
    beyond their parts, ``ComputeLatencyModel.route_overhead_ms``). ``tail=False`` prices
    blocks at their means instead (``place``'s ``likeliest``).
    """
    peers = directory.peers()
    own = directory.self_id
    excluded = {NodeId(node) for node in exclude}
    fallback = _fallback_profile(peers, variant.name, exit_block)
    units: list[CandidateUnit] = []
    for view in peers:
        if not view.alive or view.node_id in excluded:
            continue
        hosted = view.hosted.get(variant.name)
        if hosted is None or hosted[0] > exit_block:
            continue
        profile = view.block_ms.get(variant.name, ())
        if not tail and view.mean_block_ms:
            profile = view.mean_block_ms.get(variant.name, profile)
        overhead = compute_model.route_overhead_ms(view.node_id) if compute_model is not None else 0.0
        for unit in view.units:
            factor = view.unit_factors.get(unit, 1.0)
            block_ms: dict[int, float] = {}
            for block in range(hosted[0], min(hosted[1], exit_block) + 1):
                learnt = None if compute_model is None or view.node_id == own else (
                    compute_model.predict_tail if tail else compute_model.predict)(
                    view.node_id, UnitName(unit), variant.name, block)
                if learnt is not None:
                    base = learnt
                elif block < len(profile):
                    base = profile[block] * factor
                else:
                    base = (fallback[block] or 0.0) * factor
                block_ms[block] = max(base, 0.0) * view.slowdown
            units.append(CandidateUnit(view.node_id, UnitName(unit), block_ms, queue_ms=view.queue_ms + overhead))
    return units


def build_problem(directory: PeerDirectory, compute_model: ComputeLatencyModel | None, variant: VariantInfo,
                  exit_block: int, entry_node: NodeId | str | None = None,
                  exclude: Collection[NodeId | str] = (), codecs: CodecPricing | None = None, *,
                  tail: bool = True) -> PlanningProblem:
    """The planning problem of arm (``variant``, ``exit_block``) as ``directory`` sees it now.

    ``entry_node`` (default: the directory's own node) holds the input and receives the
    result; ``exclude`` removes nodes (failed hops) on top of those the directory marks dead;
    ``tail``: blocks at their p90 (default) or their means (``candidate_units``).
    """
    if not 0 <= exit_block < variant.block_count:
        raise InvalidPlanningProblem(f"exit {exit_block} is outside {variant.name}'s blocks "
                                     f"[0, {variant.block_count - 1}]")
    entry = NodeId(entry_node if entry_node is not None else directory.self_id)
    units = candidate_units(directory, compute_model, variant, exit_block, exclude, tail=tail)
    nodes = {entry, *(unit.node_id for unit in units)}
    links: dict[tuple[NodeId, NodeId], LinkEstimate] = {}
    for source in nodes:
        for destination in nodes:
            if source != destination:
                estimate = directory.link(source, destination)
                if estimate is not None:
                    links[(source, destination)] = estimate
    return PlanningProblem(
        entry_node=entry,
        input_bytes=variant.input_bytes,
        output_bytes=[variant.blocks[block].output_bytes for block in range(exit_block + 1)],
        result_bytes=result_bytes(variant),
        units=units,
        network=Network(links=links),
        codecs={} if codecs is None else {boundary: options for boundary in range(exit_block + 1)
                                          if (options := codecs.options(variant, boundary))},
    )


def place(directory: PeerDirectory, compute_model: ComputeLatencyModel | None, variant: VariantInfo,
          exit_block: int, entry_node: NodeId | str | None = None, exclude: Collection[NodeId | str] = (),
          codecs: CodecPricing | None = None) -> Plan:
    """The best plan for one arm right now (raises ``planner.NoFeasiblePlan``); ``codecs``:
    how boundaries may travel (None: float32 only)."""
    return plan(build_problem(directory, compute_model, variant, exit_block, entry_node, exclude, codecs))


def _wanted_exits(variant: VariantInfo, exits: Mapping[str, Sequence[int]] | None) -> list[int]:
    """The exits of ``variant`` asked for: ``exits[variant]`` when given, else all of them."""
    return list(exits[variant.name]) if exits is not None and variant.name in exits else list(variant.exit_blocks)


def exit_plans(directory: PeerDirectory, compute_model: ComputeLatencyModel | None,
               variants: Sequence[VariantInfo], exits: Mapping[str, Sequence[int]] | None = None,
               entry_node: NodeId | str | None = None, codecs: CodecPricing | None = None) -> dict[str, ExitPlans]:
    """Per variant, one planner pass (``planner.plan_every_exit``) up to its deepest wanted exit
    (``exits``, default: every exit of the manifest): every exit's predicted latency and plan."""
    found: dict[str, ExitPlans] = {}
    for variant in variants:
        wanted = _wanted_exits(variant, exits)
        if not wanted:
            continue
        problem = build_problem(directory, compute_model, variant, max(wanted), entry_node, codecs=codecs)
        found[variant.name] = plan_every_exit(problem)
    return found


def latencies_of(plans: Mapping[str, ExitPlans], variants: Sequence[VariantInfo],
                 exits: Mapping[str, Sequence[int]] | None = None) -> dict[ArmKey, float]:
    """``exit_plans``' predicted latency of every wanted (variant, exit), ``math.inf`` for none."""
    latencies: dict[ArmKey, float] = {}
    for variant in variants:
        found = plans.get(variant.name)
        if found is None:
            continue
        per_block = found.latencies
        for exit_block in _wanted_exits(variant, exits):
            latencies[(variant.name, exit_block)] = per_block[exit_block] if exit_block < len(per_block) else math.inf
    return latencies


def arm_latencies(directory: PeerDirectory, compute_model: ComputeLatencyModel | None,
                  variants: Sequence[VariantInfo], exits: Mapping[str, Sequence[int]] | None = None,
                  entry_node: NodeId | str | None = None, codecs: CodecPricing | None = None) -> dict[ArmKey, float]:
    """Predicted latency (ms) of the best plan of every arm, for the selector's feasibility mask.

    One planner pass per variant answers all its exits (``exit_plans``).
    ``exits`` limits the exits asked per variant (default: every exit of the manifest).
    ``math.inf`` marks an arm no plan can serve. With ``codecs`` each hop is priced in its
    cheapest codec; the figure is then the planner's objective (latency plus the codecs'
    accuracy penalty in ms), an upper bound of the predicted latency that is tight when the
    chosen codecs cost no accuracy.
    """
    plans = exit_plans(directory, compute_model, variants, exits, entry_node, codecs)
    return latencies_of(plans, variants, exits)


def plan_segments(segments: Plan | Sequence[Segment]) -> list[PlanSegment]:
    """A plan's segments in the wire form (``schema.PlanSegment``)."""
    items = segments.segments if isinstance(segments, Plan) else segments
    return [PlanSegment(node=segment.node_id, unit=segment.unit, first_block=segment.first_block,
                        last_block=segment.last_block, codec=segment.codec) for segment in items]


def planner_segments(segments: Sequence[PlanSegment]) -> tuple[Segment, ...]:
    """Wire segments back in the planner's form (to price a received plan with ``planner.evaluate``)."""
    return tuple(Segment(NodeId(segment.node), UnitName(segment.unit), segment.first_block, segment.last_block,
                         segment.codec) for segment in segments)


__all__ = ["ArmKey", "CodecPricing", "accuracy_drop", "arm_latencies", "build_problem", "candidate_units",
           "exit_plans", "latencies_of", "place", "plan_segments", "planner_segments", "result_bytes"]
