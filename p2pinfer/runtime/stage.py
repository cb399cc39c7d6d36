"""Split execution across peers: the service behind ``POST /v1/stage`` (its messages are in
``protocol.stage_messages``).

A plan is a chain of segments ``(node, unit, first_block, last_block)``. The entry node's
controller calls ``StageService.execute``; the activation then moves along the chain, each
node running its own segment and forwarding the rest of the plan with the budget left, and
the exit logits come back up the same chain (each HTTP reply carries the downstream result).

Budgets are relative. Edge devices share no clock, so a header carries the milliseconds left
*when the sender sent it*; the receiver turns that into a deadline on its own monotonic clock
at arrival. Before forwarding, a sender charges the hop's predicted transfer time (the
activation one way, the result back: the receiver cannot see how long the bytes were in
flight) and its own elapsed time, so the budgets a chain reports strictly decrease.

Degrading. A hop whose segment ends at an exit head keeps that head's logits; if the budget
left cannot cover the predicted rest of the chain, or the rest fails with a deadline or an
unreachable peer, it answers with those logits instead (``degraded``). The executor itself
degrades within a segment (the last exit passed) when a block would overrun the deadline. A
hop with no exit in hand that cannot finish answers ``DeadlineExceeded``.

Failover. When a forward fails (refused, reset, timed out, 5xx, a peer dead in the
directory, or a peer answering that it is overloaded, draining or no longer hosts the
blocks), the sender re-plans the remaining blocks from the activation it holds
(``planner.replan_from`` with the failed peers excluded: another replica, or itself) and
tries again, a bounded number of times. A peer that could not be reached is also marked
failed in the directory so the next plans avoid it. Every accepted stage gets exactly one
answer: a result or a typed error (``PeerUnavailable``, ``DeadlineExceeded``,
``NoFeasiblePlan``), never silence.

Idempotency. A retried or duplicated stage (a resend after a lost reply, a sender that
timed out and tried the same node again) must not run twice: a receiver keeps a bounded
cache of in-flight and recent stages keyed by (request, variant, segment, exit), independent
of the attempt number, and a duplicate awaits the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np
import torch
from aiohttp import web

from p2pinfer.errors import (
    BadDeadline,
    BadDtype,
    BadRequest,
    BadShape,
    DeadlineExceeded,
    Draining,
    NotFound,
    Overloaded,
    P2PError,
    PeerUnavailable,
    RefusedBeforeStart,
    Unauthorized,
    UnknownVariant,
    UnsupportedMediaType,
)
from p2pinfer.planning.latency_model import ComputeLatencyModel, LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerDirectory, PeerView, find_peer
from p2pinfer.planning.placement import build_problem, plan_segments, planner_segments
from p2pinfer.planning.planner import InvalidPlanningProblem, NoFeasiblePlan, evaluate, replan_from
from p2pinfer.protocol.auth import (
    HEADER_NODE,
    HEADER_NONCE,
    PEER_ID,
    PeerRejected,
    Verifier,
    reply_header,
    request_header,
    sign,
)
from p2pinfer.protocol.boundary_codec import decode_boundary, encode_boundary
from p2pinfer.protocol.error_body import error_response
from p2pinfer.protocol.image_input import IMAGE_TYPES, image_tensor
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.protocol.schema import PlanSegment, SegmentTiming
from p2pinfer.protocol.stage_messages import ACTIVATION, LOGITS, STAGE_PATH, StageHeader, StageReplyHeader
from p2pinfer.protocol.wire import CONTENT_TYPE, decode_frame, encode_frame_bytes, to_torch
from p2pinfer.runtime.executor import Job, JobResult
from p2pinfer.runtime.transport import PeerTimeout, PeerTransport, PeerUnreachable
from p2pinfer.types import NodeId, UnitName
from zoo.errors import UnknownVariantError
from zoo.manifest import Manifest, VariantInfo

log = logging.getLogger(__name__)

SubmitFn = Callable[[Job], Awaitable[JobResult]]
HostsFn = Callable[[str, int, int], bool]


@dataclass(frozen=True)
class StageOutcome:
    """What ``StageService.execute`` returns to the entry node's controller."""

    logits: torch.Tensor
    exit_block: int
    degraded: bool
    timings: list[SegmentTiming]
    executed: list[PlanSegment]
    budgets_ms: list[float]
    replans: int


@dataclass(frozen=True)
class StageSettings:
    """Knobs of split execution.

    A forward's time-out is ``min(budget left + timeout_grace_ms, predicted rest of the chain
    x timeout_factor + timeout_margin_ms)``: generous against a prediction error, short
    against a dead peer whose connection hangs. ``timeout_grace_ms`` past the budget lets the
    downstream's own typed answer (degraded or deadline exceeded) arrive first.
    """

    max_replans: int = 3
    timeout_factor: float = 3.0
    timeout_margin_ms: float = 1000.0
    timeout_grace_ms: float = 100.0
    cache_capacity: int = 1024
    cache_ttl_s: float = 60.0
    max_hops: int = 32


@dataclass
class StageHooks:
    """Optional callbacks for metrics and tests (all run on the event loop, must not block).

    ``on_segment(request_id, timing)`` after each segment this node ran; ``on_replan(request_id,
    failed_node, error)`` for each re-plan; ``on_degrade(request_id, exit_block)`` when this node
    answered early to save the deadline; ``on_stage(outcome)`` once per served stage request
    (``"ok"`` or the error code). ``load_word()``: (jobs not yet answered, gossip incarnation,
    heartbeat) of this node, said in each stage reply (``StageReplyHeader.jobs_after``);
    ``on_peer_load(node_id, jobs, incarnation, heartbeat, from_entry)``: what a peer said in
    its reply (``from_entry``: to the entry's own hop, which ``spreading.Outstanding`` still
    counts).
    """

    on_segment: Callable[[str, SegmentTiming], None] | None = None
    on_replan: Callable[[str, str, P2PError], None] | None = None
    on_degrade: Callable[[str, int], None] | None = None
    on_stage: Callable[[str], None] | None = None
    load_word: Callable[[], tuple[int, int, int]] | None = None
    on_peer_load: Callable[[str, int, int, int, bool], None] | None = None


# ---------------------------------------------------------------------------------------
# Internal state of one request at this node


@dataclass
class _Chain:
    """One request as this node handles it: the received header and its local deadline."""

    header: StageHeader
    variant: VariantInfo
    deadline: float  # monotonic seconds on this node's clock
    image: tuple[str, bytes] | None = None  # the client's image (media type, bytes), at the entry node
    # at the entry: where the plan goes if this node's unit refuses its first segment before
    # running any of it (None: the refusal stands); asked at most once
    reroute: Callable[[], Sequence[PlanSegment] | None] | None = None

    @property
    def request_id(self) -> str:
        return self.header.request_id

    @property
    def exit_block(self) -> int:
        return self.header.exit_block

    def budget_left_ms(self) -> float:
        return (self.deadline - time.monotonic()) * 1000


@dataclass(frozen=True)
class _Fallback:
    """Logits of the last exit this node passed: what degrading answers with."""

    logits: torch.Tensor
    exit_block: int


@dataclass
class _Answer:
    logits: torch.Tensor
    exit_block: int
    degraded: bool
    timings: list[SegmentTiming] = field(default_factory=list)
    executed: list[PlanSegment] = field(default_factory=list)
    budgets_ms: list[float] = field(default_factory=list)
    replans: int = 0

    def prepend(self, timing: SegmentTiming, segment: PlanSegment, budget_ms: float) -> _Answer:
        self.timings.insert(0, timing)
        self.executed.insert(0, segment)
        self.budgets_ms.insert(0, budget_ms)
        return self


_StageResult = tuple[StageReplyHeader, torch.Tensor | None]


class IdempotencyCache:
    """In-flight and recent stages by key: a duplicate awaits the first one's answer.

    Bounded: finished entries leave after ``ttl_s`` or when more than ``capacity`` entries
    are held (oldest first). In-flight entries are never evicted (they are bounded by the
    executor's queue and the forwards in progress) and leave ``ttl_s`` after they finish.
    """

    def __init__(self, capacity: int = 1024, ttl_s: float = 60.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._entries: OrderedDict[tuple, tuple[float, asyncio.Future[_StageResult]]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> asyncio.Future[_StageResult] | None:
        self._evict()
        entry = self._entries.get(key)
        if entry is None:
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: tuple, future: asyncio.Future[_StageResult]) -> None:
        self._entries[key] = (time.monotonic(), future)
        self._evict()

    def _evict(self) -> None:
        horizon = time.monotonic() - self.ttl_s
        for key in list(self._entries):
            started, future = self._entries[key]
            too_many = len(self._entries) > self.capacity
            if not future.done():
                continue
            if too_many or started < horizon:
                del self._entries[key]
            else:
                break


def _consume_exception(future: asyncio.Future) -> None:
    """Mark a cached failure as seen: a duplicate may never come to await it."""
    if not future.cancelled():
        future.exception()


# ---------------------------------------------------------------------------------------
# The service


class StageService:
    """Runs this node's segments of split plans and forwards the rest (see the module docstring).

    ``executor_submit`` runs a ``Job`` (``Executor.submit``), or a mapping unit name -> such a
    function when the node has several compute units. ``hosts(variant, first, last)`` says
    whether this node holds those blocks. ``directory`` is the cluster as this node sees it
    (re-plans and predictions), ``manifest`` the zoo manifest (boundary sizes, exits).
    ``compute_model`` learns every segment time that passes through this node (divided by
    the slowdown the directory reports for the node that ran it, see ``placement``).
    ``link_model`` gives the transfer charged to a forwarded budget (default: the
    transport's, then the directory's estimate).
    """

    def __init__(self, node_id: NodeId | str, executor_submit: SubmitFn | Mapping[str, SubmitFn], hosts: HostsFn,
                 transport: PeerTransport, directory: PeerDirectory, manifest: Manifest,
                 compute_model: ComputeLatencyModel | None = None, link_model: LinkLatencyModel | None = None, *,
                 settings: StageSettings | None = None, hooks: StageHooks | None = None) -> None:
        self.node_id = NodeId(node_id)
        self._submit = executor_submit
        self.hosts = hosts
        self.transport = transport
        self.directory = directory
        self.manifest = manifest
        self.compute_model = compute_model
        self.link_model = link_model if link_model is not None else transport.link_model
        self.settings = settings or StageSettings()
        self.hooks = hooks or StageHooks()
        self.cache = IdempotencyCache(self.settings.cache_capacity, self.settings.cache_ttl_s)
        self.replans = 0
        self.degraded = 0

    # ---- entry points ------------------------------------------------------------------
    async def execute(self, *, request_id: str, family: str, variant: str, exit_block: int,
                      segments: Sequence[PlanSegment], tensor: torch.Tensor, budget_ms: float,
                      confidence_threshold: float | None = None, allow_degrade: bool = True,
                      image: tuple[str, bytes] | None = None, min_exit: int | None = None,
                      wait_share: float = 1.0,
                      reroute: Callable[[], Sequence[PlanSegment] | None] | None = None) -> StageOutcome:
        """Run a plan from the entry node: ``budget_ms`` is what the request has left now.

        The first segment may be this node's (it runs here, then forwards) or a peer's
        (the input is forwarded at once, as the client's ``image`` when the plan's first codec
        says so). ``reroute``: asked for another plan (on peers) when this node's unit refuses
        the first segment before running any of it (``RefusedBeforeStart``, ``Overloaded``).
        Raises typed errors; never returns silently.
        """
        header = StageHeader(request_id=request_id, family=family, variant=variant, exit_block=exit_block,
                             segments=list(segments), budget_ms=budget_ms, confidence_threshold=confidence_threshold,
                             allow_degrade=allow_degrade, min_exit=min_exit, wait_share=wait_share,
                             origin=self.node_id, hop=0)
        chain = self._open(header, time.monotonic(), entry=True)
        chain.image = image
        chain.reroute = reroute
        self._check_activation(chain, tensor)
        answer = await self._advance(chain, header.segments, tensor, None)
        return StageOutcome(logits=answer.logits, exit_block=answer.exit_block, degraded=answer.degraded,
                            timings=answer.timings, executed=answer.executed, budgets_ms=answer.budgets_ms,
                            replans=answer.replans)

    async def handle(self, header: StageHeader, activation: np.ndarray | torch.Tensor | None,
                     received_at: float | None = None) -> _StageResult:
        """Serve one received stage: run this node's segment, forward the rest, answer.

        ``received_at`` (monotonic) is when the request was read; the budget counts from it.
        A duplicate of a stage in flight or recently answered gets the same answer.
        """
        received_at = time.monotonic() if received_at is None else received_at
        if not header.segments:
            return StageReplyHeader(), None  # a probe
        segment = header.segments[0]
        key = (header.request_id, header.variant, segment.node, segment.unit, segment.first_block, segment.last_block,
               header.exit_block)
        running = self.cache.get(key)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._serve(header, activation, received_at))
        task.add_done_callback(_consume_exception)
        self.cache.put(key, task)
        try:
            result = await asyncio.shield(task)
        except P2PError as error:
            self._stage_outcome(error.code)
            raise
        self._stage_outcome("ok")
        return result

    def _stage_outcome(self, outcome: str) -> None:
        if self.hooks.on_stage is not None:
            self.hooks.on_stage(outcome)

    async def _serve(self, header: StageHeader, activation: np.ndarray | torch.Tensor | None,
                     received_at: float) -> _StageResult:
        chain = self._open(header, received_at, entry=False)
        if activation is None:
            raise BadRequest(f"stage frame has no tensor named {ACTIVATION!r}")
        if isinstance(activation, np.ndarray):
            activation = await self._decode_activation(chain, activation)
        tensor = to_torch(activation) if isinstance(activation, np.ndarray) else activation
        self._check_activation(chain, tensor)
        answer = await self._advance(chain, header.segments, tensor, None)
        jobs, incarnation, heartbeat = (-1, -1, -1) if self.hooks.load_word is None else self.hooks.load_word()
        reply = StageReplyHeader(exit_block=answer.exit_block, degraded=answer.degraded, timings=answer.timings,
                                 executed=answer.executed, budgets_ms=answer.budgets_ms, replans=answer.replans,
                                 jobs_after=jobs, incarnation=incarnation, heartbeat=heartbeat)
        return reply, answer.logits

    @staticmethod
    async def _decode_activation(chain: _Chain, payload: np.ndarray) -> np.ndarray:
        """The float32 boundary from what travelled: raw, a boundary codec, or the client's image."""
        header = chain.header
        if header.image_type is not None:
            if header.image_type not in IMAGE_TYPES or header.segments[0].first_block != 0:
                raise BadRequest(f"image_type {header.image_type!r} is only valid for the input (block 0) and must "
                                 f"be one of {', '.join(IMAGE_TYPES)}")
            variant = chain.variant
            return await asyncio.to_thread(image_tensor, payload.reshape(-1).data, variant.preprocessing,
                                           variant.input_shape, media_type=header.image_type, model=variant.name)
        if header.encoding is not None:
            return decode_boundary(header.encoding, payload)
        return payload

    # ---- validation ----------------------------------------------------------------------
    def _open(self, header: StageHeader, received_at: float, *, entry: bool) -> _Chain:
        try:
            variant = self.manifest.variant(header.variant)
        except UnknownVariantError as error:
            raise UnknownVariant(str(error)) from None
        if header.family and variant.family != header.family:
            raise BadRequest(f"variant {variant.name} is in family {variant.family!r}, not {header.family!r}")
        if header.exit_block not in variant.exit_blocks:
            raise BadRequest(f"exit {header.exit_block} is not an exit of {variant.name}; exits: {variant.exit_blocks}")
        if not math.isfinite(header.budget_ms):
            raise BadDeadline(f"budget_ms must be finite, got {header.budget_ms}")
        if not 0.0 < header.wait_share <= 1.0:  # NaN fails too
            raise BadRequest(f"wait_share must be in (0, 1], got {header.wait_share}")
        if not 0 <= header.hop <= self.settings.max_hops:
            raise BadRequest(f"hop {header.hop} is outside [0, {self.settings.max_hops}]: a forwarding loop?")
        segments = header.segments
        if not segments:
            raise BadRequest("a plan needs at least one segment")
        for previous, segment in zip(segments, segments[1:], strict=False):
            if segment.first_block != previous.last_block + 1:
                raise BadRequest(f"plan segments are not contiguous: {previous} then {segment}")
        if any(segment.last_block < segment.first_block for segment in segments):
            raise BadRequest("a plan segment ends before it starts")
        if entry and segments[0].first_block != 0:
            raise BadRequest(f"a plan starts at block 0, this one at {segments[0].first_block}")
        if segments[-1].last_block != header.exit_block:
            raise BadRequest(f"the plan ends at block {segments[-1].last_block}, the exit is {header.exit_block}")
        if not entry and segments[0].node != self.node_id:
            raise BadRequest(f"segment {segments[0]} is for node {segments[0].node}, this is {self.node_id}")
        if not entry and header.budget_ms <= 0:
            raise DeadlineExceeded(f"request {header.request_id} arrived with no budget left "
                                   f"({header.budget_ms:.1f} ms)")
        return _Chain(header=header, variant=variant, deadline=received_at + header.budget_ms / 1000)

    @staticmethod
    def _check_activation(chain: _Chain, tensor: torch.Tensor) -> None:
        first = chain.header.segments[0].first_block
        variant = chain.variant
        expected = list(variant.input_shape) if first == 0 else list(variant.blocks[first - 1].output_shape)
        shape = list(tensor.shape)
        if len(shape) != len(expected) + 1 or shape[1:] != expected or shape[0] < 1:
            raise BadShape(f"activation entering block {first} of {variant.name} has shape {shape}, "
                           f"expected [N, {', '.join(map(str, expected))}]")
        if tensor.dtype != torch.float32:
            raise BadDtype(f"activation dtype {tensor.dtype} is not float32")

    # ---- along the chain -------------------------------------------------------------------
    async def _advance(self, chain: _Chain, segments: Sequence[PlanSegment], hidden: torch.Tensor,
                       fallback: _Fallback | None) -> _Answer:
        """Carry ``hidden`` (boundary ``segments[0].first_block``) through the rest of the plan."""
        if segments[0].node == self.node_id:
            return await self._run_here(chain, segments, hidden, fallback)
        return await self._forward(chain, segments, hidden)

    def _submit_for(self, unit: str) -> SubmitFn:
        if not isinstance(self._submit, Mapping):
            return self._submit
        submit = self._submit.get(unit)
        if submit is None:
            raise BadRequest(f"node {self.node_id} has no compute unit {unit!r} (it has {sorted(self._submit)})")
        return submit

    async def _run_here(self, chain: _Chain, segments: Sequence[PlanSegment], hidden: torch.Tensor,
                        fallback: _Fallback | None) -> _Answer:
        segment = segments[0]
        header = chain.header
        variant = chain.variant
        if not self.hosts(variant.name, segment.first_block, segment.last_block):
            raise UnknownVariant(f"node {self.node_id} does not host blocks [{segment.first_block}, "
                                 f"{segment.last_block}] of {variant.name}")
        budget_ms = chain.budget_left_ms()
        final = segment.last_block == chain.exit_block
        wants_logits = header.allow_degrade or header.confidence_threshold is not None
        acceptable = header.min_exit is None or segment.last_block >= header.min_exit
        keeps_exit = final or (wants_logits and acceptable and segment.last_block in variant.exit_blocks)
        job = Job(request_id=chain.request_id, variant=variant.name, first_block=segment.first_block,
                  last_block=segment.last_block, hidden=hidden, deadline=chain.deadline,
                  exit_block=segment.last_block if keeps_exit else None,
                  confidence_threshold=header.confidence_threshold, allow_degrade=header.allow_degrade,
                  min_exit=header.min_exit, wait_share=header.wait_share)
        try:
            result: JobResult = await self._submit_for(segment.unit)(job)
        except (RefusedBeforeStart, Overloaded):
            elsewhere = self._rerouted(chain, segment)
            if elsewhere is None:
                raise
            answer = await self._forward(chain, elsewhere, hidden)
            answer.replans += 1
            return answer
        timing = SegmentTiming(node=self.node_id, unit=segment.unit, first_block=segment.first_block,
                               last_block=result.last_block_run, compute_ms=round(result.compute_ms, 3),
                               queue_ms=round(result.queue_ms, 3))
        ran = PlanSegment(node=self.node_id, unit=segment.unit, first_block=segment.first_block,
                          last_block=result.last_block_run)
        self._observe(variant.name, [timing])
        if self.hooks.on_segment is not None:
            self.hooks.on_segment(chain.request_id, timing)

        if result.logits is not None and result.exit_block is not None:
            early = result.last_block_run < segment.last_block
            confident = self._confident(result.logits, header.confidence_threshold)
            if final or result.degraded or early or confident:
                if result.degraded:
                    self._count_degrade(chain, result.exit_block)
                answer = _Answer(logits=result.logits, exit_block=result.exit_block, degraded=result.degraded)
                return answer.prepend(timing, ran, budget_ms)
            fallback = _Fallback(result.logits, result.exit_block)
        rest = segments[1:]
        if not rest:  # cannot happen for a validated plan: its last segment ends at the exit
            raise BadRequest(f"plan ends at block {segment.last_block} without reaching exit {chain.exit_block}")

        if header.allow_degrade and fallback is not None:
            predicted = self._predict_ms(chain, rest)
            if predicted is not None and predicted > chain.budget_left_ms():
                return self._degrade(chain, fallback).prepend(timing, ran, budget_ms)
        try:
            downstream = await self._advance(chain, rest, result.hidden, fallback)
        except (DeadlineExceeded, PeerUnavailable, NoFeasiblePlan, Overloaded) as error:
            if not (header.allow_degrade and fallback is not None):
                raise
            log.info("request %s: degrading to exit %d after %s", chain.request_id, fallback.exit_block, error)
            downstream = None
        if downstream is None:
            assert fallback is not None
            return self._degrade(chain, fallback).prepend(timing, ran, budget_ms)
        return downstream.prepend(timing, ran, budget_ms)

    @staticmethod
    def _rerouted(chain: _Chain, segment: PlanSegment) -> Sequence[PlanSegment] | None:
        """The entry's other plan after its own unit refused the first segment, or None. Only
        before anything ran (block 0 at the entry) and only once per request."""
        reroute, chain.reroute = chain.reroute, None
        if reroute is None or segment.first_block != 0 or chain.header.hop != 0:
            return None
        return reroute()

    @staticmethod
    def _confident(logits: torch.Tensor, threshold: float | None) -> bool:
        if threshold is None:
            return False
        return bool((torch.softmax(logits.float(), dim=-1).amax(dim=-1) >= threshold).all())

    def _degrade(self, chain: _Chain, fallback: _Fallback) -> _Answer:
        self._count_degrade(chain, fallback.exit_block)
        return _Answer(logits=fallback.logits, exit_block=fallback.exit_block, degraded=True)

    def _count_degrade(self, chain: _Chain, exit_block: int) -> None:
        self.degraded += 1
        if self.hooks.on_degrade is not None:
            self.hooks.on_degrade(chain.request_id, exit_block)

    async def _forward(self, chain: _Chain, segments: Sequence[PlanSegment], hidden: torch.Tensor) -> _Answer:
        """Send the activation to ``segments[0]``'s node, re-planning on failure."""
        excluded: set[NodeId] = set()
        replans = 0
        attempt = 0
        busy: list[Overloaded] = []  # peers that refused for load: giving up is then a 429, not a 503
        failures: list[str] = []  # what each re-plan was for, named in an error that ends here
        while True:
            segment = segments[0]
            if segment.node == self.node_id:  # a re-plan chose this node
                try:
                    answer = await self._run_here(chain, segments, hidden, None)
                except P2PError as error:
                    raise _after_replans(error, failures) from None
                answer.replans += replans
                return answer
            peer = find_peer(self.directory, segment.node)
            failure: P2PError
            contacted = False
            if peer is None or not peer.alive:
                state = "unknown" if peer is None else "failed or dead"
                failure = PeerUnreachable(f"{segment.node} is {state} in {self.node_id}'s directory")
            else:
                contacted = True
                try:
                    answer = await self._send(chain, segments, hidden, peer, attempt)
                    answer.replans += replans
                    return answer
                except (PeerUnavailable, NoFeasiblePlan, Overloaded, Draining, NotFound, Unauthorized,
                        RefusedBeforeStart) as error:
                    failure = error
                    if isinstance(error, Overloaded):
                        busy.append(error)
                        # its queue is full for now: the next plans price the wait it gave
                        self.directory.mark_busy(segment.node, error.retry_after_s or 0.0)
            node = NodeId(segment.node)
            excluded.add(node)
            failures.append(f"{failure.code} at {node}")
            if contacted and isinstance(failure, PeerUnreachable):
                # only a failed contact refreshes the suspicion: a node skipped because it is
                # already suspected must be able to come back when the suspicion expires
                self.directory.mark_failed(node)
            replans += 1
            attempt += 1
            self.replans += 1
            if self.hooks.on_replan is not None:
                self.hooks.on_replan(chain.request_id, node, failure)
            log.info("request %s: hop to %s failed (%s); re-planning blocks [%d, %d]", chain.request_id, node,
                     failure.message, segment.first_block, chain.exit_block)
            if replans > self.settings.max_replans:
                if busy:
                    raise _cluster_busy(chain.request_id, busy, f"after {replans} failed hops")
                raise PeerUnavailable(f"request {chain.request_id}: gave up on blocks [{segment.first_block}, "
                                      f"{chain.exit_block}] after {replans} failed hops; last: {failure.message}")
            if chain.budget_left_ms() <= 0:
                raise DeadlineExceeded(f"request {chain.request_id}: no budget left to re-plan after "
                                       f"{failure.message}")
            try:
                problem = build_problem(self.directory, self.compute_model, chain.variant, chain.exit_block,
                                        entry_node=chain.header.origin, exclude=excluded)
                replanned = replan_from(problem, segment.first_block, current_node=self.node_id,
                                        exclude_nodes=excluded)
            except (NoFeasiblePlan, InvalidPlanningProblem) as error:
                if isinstance(failure, RefusedBeforeStart):
                    raise failure from None  # nowhere else to go: the refusal says why
                if busy:
                    raise _cluster_busy(chain.request_id, busy, "and no other placement") from None
                raise NoFeasiblePlan(f"request {chain.request_id}: no other placement for blocks "
                                     f"[{segment.first_block}, {chain.exit_block}] ({error.message}) after "
                                     f"{failure.message}") from None
            if isinstance(failure, (RefusedBeforeStart, Overloaded)) and replanned.total_ms > chain.budget_left_ms():
                # refused for time or load: another placement is only worth it if it makes the time; a
                # load refusal goes back to the entry, whose controller may shed to a cheaper arm
                raise failure if isinstance(failure, RefusedBeforeStart) else _cluster_busy(
                    chain.request_id, busy, "and no other placement makes the time")
            segments = plan_segments(replanned)

    async def _send(self, chain: _Chain, segments: Sequence[PlanSegment], hidden: torch.Tensor, peer: PeerView,
                    attempt: int) -> _Answer:
        header = chain.header
        left_ms = chain.budget_left_ms()
        activation = hidden.detach().to(device="cpu", dtype=torch.float32)
        codec = segments[0].codec
        encoding = None
        image_type = None
        payload: torch.Tensor | np.ndarray = activation
        if codec in IMAGE_TYPES and chain.image is not None and segments[0].first_block == 0 \
                and chain.image[0] == codec:
            image_type = codec
            payload = np.frombuffer(chain.image[1], dtype=np.uint8)
        elif codec != "float32" and codec not in IMAGE_TYPES:
            encoding, payload = encode_boundary(activation.numpy(), codec)
            codec = encoding.name  # "+lz4" that did not shrink the payload travelled without it
        else:
            codec = "float32"
        nbytes = int(payload.nbytes) if isinstance(payload, np.ndarray) else activation.numel() * 4
        charge_ms = self._hop_charge_ms(peer.node_id, nbytes)
        send_budget = left_ms - charge_ms
        if send_budget <= 0:
            raise DeadlineExceeded(f"request {chain.request_id}: {left_ms:.1f} ms left cannot cover the hop to "
                                   f"{peer.node_id} (~{charge_ms:.1f} ms)")
        predicted = self._predict_ms(chain, segments)
        budget_bound_ms = left_ms + self.settings.timeout_grace_ms
        timeout_ms = budget_bound_ms
        if predicted is not None:
            settings = self.settings
            timeout_ms = min(budget_bound_ms, predicted * settings.timeout_factor + settings.timeout_margin_ms)
        outgoing = StageHeader(request_id=header.request_id, family=header.family, variant=header.variant,
                               exit_block=header.exit_block, segments=list(segments), budget_ms=round(send_budget, 3),
                               confidence_threshold=header.confidence_threshold, allow_degrade=header.allow_degrade,
                               min_exit=header.min_exit, wait_share=header.wait_share, origin=header.origin,
                               hop=header.hop + 1, attempt=attempt,
                               encoding=encoding, image_type=image_type)
        try:
            reply = await self.transport.post_stage(peer, outgoing, {ACTIVATION: payload},
                                                    timeout_s=timeout_ms / 1000)
        except PeerTimeout as error:
            if timeout_ms >= budget_bound_ms:
                raise DeadlineExceeded(f"request {chain.request_id}: {peer.node_id} did not answer within the "
                                       f"budget ({error.message})") from None
            raise
        body = reply.header
        logits = reply.tensors.get(LOGITS)
        if body.exit_block is None or logits is None or not body.timings:
            raise PeerUnreachable(f"{peer.node_id} answered a stage without logits or timings")
        if body.jobs_after >= 0 and self.hooks.on_peer_load is not None:  # the entry's hop: its request still counted
            self.hooks.on_peer_load(peer.node_id, body.jobs_after, body.incarnation, body.heartbeat, header.hop == 0)
        timings = list(body.timings)
        timings[0] = msgspec.structs.replace(timings[0], transfer_ms=round(reply.transfer_ms, 3), codec=codec,
                                             wire_bytes=nbytes)
        self._observe(header.variant, body.timings)
        executed = list(body.executed)
        if executed:
            executed[0] = msgspec.structs.replace(executed[0], codec=codec)
        return _Answer(logits=to_torch(logits), exit_block=body.exit_block, degraded=body.degraded,
                       timings=timings, executed=executed, budgets_ms=list(body.budgets_ms),
                       replans=body.replans)

    # ---- predictions and learning ---------------------------------------------------------
    def _link_estimate(self, peer: NodeId | str) -> LinkEstimate | None:
        measured = self.link_model.estimates().get((self.node_id, NodeId(peer))) if self.link_model else None
        return measured if measured is not None else self.directory.link(self.node_id, peer)

    def _hop_charge_ms(self, peer: NodeId | str, nbytes: int) -> float:
        """Predicted time on the link for this hop: the activation there, the result back."""
        estimate = self._link_estimate(peer)
        if estimate is None or estimate.bandwidth_mbps <= 0:
            return 0.0
        return estimate.transfer_ms(nbytes) + estimate.rtt_ms / 2

    def _predict_ms(self, chain: _Chain, segments: Sequence[PlanSegment]) -> float | None:
        """Predicted time for ``segments`` starting from this node (None: cannot be priced)."""
        try:
            problem = build_problem(self.directory, self.compute_model, chain.variant, chain.exit_block,
                                    entry_node=chain.header.origin)
            predicted = evaluate(problem, planner_segments(segments), source_node=self.node_id).total_ms
        except (InvalidPlanningProblem, NoFeasiblePlan):
            return None
        return predicted if math.isfinite(predicted) else None

    def _seed(self, view: PeerView, unit: UnitName, variant: str) -> None:
        """Start a node's estimates from its gossiped profile, so that the first measured hop
        (often a cold one) moves the estimate halfway instead of replacing it."""
        assert self.compute_model is not None
        profile = view.block_ms.get(variant)
        hosted = view.hosted.get(variant)
        if not profile or hosted is None:
            return
        if self.compute_model.predict(view.node_id, unit, variant, hosted[0]) is not None:
            return
        factor = view.unit_factors.get(unit, 1.0)
        self.compute_model.seed(view.node_id, unit, variant,
                                {block: profile[block] * factor for block in range(hosted[0], hosted[1] + 1)
                                 if block < len(profile)})

    def _observe(self, variant: str, timings: Sequence[SegmentTiming]) -> None:
        """Learn segment compute times, without the slowdown the node ran under (see placement)."""
        if self.compute_model is None:
            return
        for timing in timings:
            view = find_peer(self.directory, timing.node)
            slowdown = view.slowdown if view is not None else 1.0
            unit = UnitName(timing.unit)  # as the stage's reply named it
            if view is not None:
                self._seed(view, unit, variant)
            self.compute_model.observe_segment(NodeId(timing.node), unit, variant, timing.first_block,
                                               timing.last_block, timing.compute_ms / slowdown)


# ---------------------------------------------------------------------------------------
# HTTP


def stage_route(service: StageService, verifier: Verifier | None = None, *, reply_secret: bytes | str | None = None,
                clock: Callable[[], float] = time.time) -> list[web.RouteDef]:
    """``POST /v1/stage`` for ``service``.

    Authentication: a request the node's ``auth.peer_auth_middleware`` already verified
    (``request[PEER_ID]`` set) is accepted as is. Otherwise, with ``verifier`` given, the
    handler verifies the signature itself and answers 401 without running anything when it
    fails (so the route fails closed even without the middleware); with no verifier and no
    middleware the cluster is open (no secret). ``reply_secret`` signs replies, bound to the
    request's nonce (``PeerTransport`` with a secret requires it).
    """
    secret = reply_secret.encode() if isinstance(reply_secret, str) else reply_secret

    async def stage(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
            if verifier is not None and request.get(PEER_ID) is None:
                try:
                    verifier.verify(request.headers, request_header(request.method, request.path), body, clock())
                except PeerRejected as error:
                    return error_response(error)
            received_at = time.monotonic()
            if request.content_type != CONTENT_TYPE:
                raise UnsupportedMediaType(f"a stage is a {CONTENT_TYPE} frame, got {request.content_type!r}")
            header, tensors = decode_frame(body, StageHeader)
            reply, logits = await service.handle(header, tensors.get(ACTIVATION), received_at)
            reply = msgspec.structs.replace(reply, handled_ms=round((time.monotonic() - received_at) * 1000, 3))
            data = encode_frame_bytes(reply, {LOGITS: logits} if logits is not None else None)
        except P2PError as error:
            return error_response(error)
        except Exception as error:  # noqa: BLE001 - a peer always gets a typed answer
            log.exception("stage failed")
            return error_response(P2PError(f"stage failed on {service.node_id}: {type(error).__name__}: {error}"))
        headers: dict[str, str] = {}
        nonce = request.headers.get(HEADER_NONCE)
        if secret and nonce:
            headers.update(sign(secret, service.node_id, reply_header(nonce), data, clock(),
                                to=request.headers.get(HEADER_NODE, "")))
        return web.Response(body=data, content_type=CONTENT_TYPE, headers=headers)

    return [web.post(STAGE_PATH, stage)]


def _after_replans(error: P2PError, failures: Sequence[str]) -> P2PError:
    """``error`` with the re-plans that led to it named, so that a client, and a benchmark's
    miss breakdown, can tell a node's refusal of a request it planned itself from one it took
    over after a peer failed."""
    return error.annotated(f"re-planned here after {', '.join(failures)}") if failures else error


def _cluster_busy(request_id: str, refusals: Sequence[Overloaded], why: str) -> Overloaded:
    """Every peer that could take the blocks is busy or gone, and some said busy: the client
    should back off and come back (429 + the soonest Retry-After a peer gave), which a 503
    ``peer_unavailable`` does not tell it."""
    waits = [refusal.retry_after_s for refusal in refusals if refusal.retry_after_s is not None]
    return Overloaded(f"request {request_id}: {len(refusals)} peer(s) refused for load {why}; "
                      f"last: {refusals[-1].message}", retry_after_s=min(waits) if waits else 0.1)


__all__ = ["ACTIVATION", "LOGITS", "STAGE_PATH", "IdempotencyCache", "StageHeader", "StageHooks", "StageOutcome",
           "StageReplyHeader", "StageService", "StageSettings", "error_response", "stage_route"]

