"""The entry node's controller: per request, choose an arm (variant, exit), place it, run
it, answer, and learn from the outcome.

The arm and its placement come from ``ArmSelection`` (a bandit with a feasibility mask, or a
static baseline); a plan that stays on this node runs straight on the executor, a plan that
leaves it goes through the ``StageService`` (forwarding, failover, degrade). Either way the
answer becomes a QoE reward for the policy, corrected later by ``/v1/feedback``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec
import numpy as np
import torch

from p2pinfer.errors import (
    BadRequest,
    BadShape,
    DeadlineExceeded,
    Draining,
    InternalError,
    InvalidPlanningProblem,
    NoFeasiblePlan,
    NonFiniteOutput,
    Overloaded,
    P2PError,
    RefusedBeforeStart,
    RequestConflict,
    UnknownRequest,
    UnknownVariant,
)
from p2pinfer.planning.selection import ENERGY_MS_PER_UNIT, STATIC_BASELINES, ArmSelection, Decision, NodeState
from p2pinfer.planning.spreading import Outstanding
from p2pinfer.protocol import image_input
from p2pinfer.protocol.schema import (
    FeedbackRequest,
    FeedbackResult,
    InferRequest,
    InferResult,
    PlanSegment,
    SegmentTiming,
)
from p2pinfer.runtime.executor import SMALL_ANSWER_CLASSES, Executor, Job
from p2pinfer.runtime.metrics import NodeMetrics
from p2pinfer.runtime.model_host import ModelHost
from p2pinfer.runtime.request_log import RequestLog
from p2pinfer.runtime.thinning import Thinning
from selector import Arm, QoEOutcome, QoEWeights, feedback_reward, qoe_reward

ResultT = TypeVar("ResultT")


RequestDigest = tuple[str, str, float, tuple[int, ...], bytes]
"""What an idempotency key binds to: user, family, deadline, input shape and the SHA-256 of the
input's bytes. A tuple compared field by field, not one hash over all of them: hashing the
strings too cost half of the digest's time, and they are compared as they are."""


def request_digest(request: InferRequest, sample: np.ndarray) -> RequestDigest:
    """The digest of a request whose client chose its id (a resend must be the same request):
    hashed from the numpy input, whose buffer hashlib reads in place (reaching a tensor's bytes
    through ``Tensor.numpy`` cost more than the hash itself)."""
    try:
        hashed = hashlib.sha256(sample.data).digest()
    except BufferError:  # not C-contiguous
        hashed = hashlib.sha256(np.ascontiguousarray(sample).data).digest()
    return (request.user, request.family, float(request.deadline_ms), sample.shape, hashed)


def sample_bytes(sample: np.ndarray) -> int:
    """One sample's bytes as float32 (the bandit's context), from the shape alone."""
    return math.prod(sample.shape[1:]) * 4


class AnsweredRequest(msgspec.Struct, frozen=True, gc=False):
    """What feedback needs later: the arm, the answer and the user's weights."""

    arm: Arm
    user: str
    weights: QoEWeights
    label: int
    outcome: QoEOutcome


class _Run(msgspec.Struct):
    """A request id's run in progress: what it binds to, and resends of the id waiting for it."""

    digest: RequestDigest | None
    waiters: list[asyncio.Future[InferResult]] = msgspec.field(default_factory=list)


class Execution(msgspec.Struct, frozen=True, gc=False):
    logits: torch.Tensor | list[float]  # the exit's logits: a one-row tensor, or the row as floats (a local run)
    exit_block: int
    degraded: bool
    timings: list[SegmentTiming]
    executed: list[PlanSegment]
    replans: int


PINNED_STATE = NodeState()
"""The state a pinned arm is decided with: none (it has no context to build)."""
MAX_IN_PROGRESS = 1024
"""Most runs in progress at once (each admitted request starts at most one; a run survives
its client's disconnect until its deadline, so without a cap clients that hang up could
pile them up): beyond it a new request id is answered 429."""
IN_PROGRESS_RETRY_AFTER_S = 1.0
SHEDDABLE_WAIT_SHARE = 0.5
"""A request the policy chose an arm for (not pinned) may wait behind queued work for this
share of its slack before it is refused there and retried with a cheaper arm. Under
overload queues then fill only half way with full-quality work; the rest of every deadline
stays for the cheaper arms, so requests degrade instead of being refused (the ramp
benchmark's 2x level). A queue that is merely busy (wait under half the slack) changes
nothing."""


def first_try_wait_share(may_shed: bool, segments: Sequence[PlanSegment], node_id: str) -> float:
    """The share of its slack the policy's arm may wait in queues on its first try.

    Half, when a refusal leaves time to shed to a cheaper arm: only when the whole plan runs on
    this node, whose unit refuses at once. A plan through a peer pays the hop before the peer
    can refuse it (the throttled Jetson's 30 ms uplink to the edge: 45 of a 70-90 ms budget), so a
    second try after that refusal rarely had the time left: half a slack there turned queue
    waits that would have fitted into misses. Such plans may use all of their slack."""
    if not may_shed:
        return 1.0
    return SHEDDABLE_WAIT_SHARE if all(segment.node == node_id for segment in segments) else 1.0


def latency_route_key(decision: Decision) -> tuple[str, ...]:
    """What an answer's latency is thinned by (``Thinning``): its arm and every node its plan
    ran on, in order. The residuals it feeds are kept per route, so two plans that share their
    first node but not the rest must not stand in for each other."""
    return (decision.arm.key, *[segment.node for segment in decision.segments])


class Controller:
    def __init__(self, node_id: str, host: ModelHost, executors: dict[str, Executor], metrics: NodeMetrics,
                 selection: ArmSelection, stage=None, state: Callable[[], NodeState] = NodeState,
                 on_usage: Callable[[str], None] | None = None,
                 admission: Callable[[str, str, NodeState], bool] | None = None,
                 outstanding: Outstanding | None = None, max_in_progress: int = MAX_IN_PROGRESS) -> None:
        self.node_id = node_id
        self.max_in_progress = max_in_progress
        self.host = host
        self.executors = executors
        self.metrics = metrics
        self.selection = selection
        self.stage = stage
        self.state = state
        self.on_usage = on_usage
        self.admission = admission
        self.outstanding = outstanding if outstanding is not None else Outstanding()
        self.answered: RequestLog[AnsweredRequest] = RequestLog()
        self.in_progress: dict[str, _Run] = {}
        self.recent_results: RequestLog[tuple[RequestDigest | None, InferResult]] = RequestLog(capacity=4096,
                                                                                                ttl_s=120.0)
        self.arms_chosen: dict[str, int] = {}
        self.latency_thinning = Thinning()  # answers' latencies into the planner's residuals (misses: every one)
        self._checked_pins: set[tuple[str, str | None, int | None]] = set()
        # table sizes are read when /metrics is scraped, not set on every request
        metrics.state_entries.labels(table="in_progress").set_function(lambda: len(self.in_progress))
        metrics.state_entries.labels(table="request_ids").set_function(lambda: len(self.recent_results))
        metrics.state_entries.labels(table="answered").set_function(lambda: len(self.answered))  # feedback's

    @property
    def policy_name(self) -> str:
        return self.selection.policy_name

    async def infer(self, request: InferRequest, sample: np.ndarray, received_at: float,
                    image: tuple[str, bytes] | None = None) -> InferResult:
        """Answer a request once: a client that resends the same request id (after a dropped
        connection) gets the answer of the run already under way, not a second run.
        ``sample``: the input, one float32 sample with its batch axis, the caller's to give away
        (the model reads it in place). ``image``: the client's JPEG/PNG (``sample`` is its
        preprocessed form), which a plan may send instead of the tensor when block 0 runs elsewhere."""
        if request.request_id is None:  # an id of ours: nobody can resend it, nothing to bind it to
            request_id, digest = uuid.uuid4().hex, None
        else:
            request_id, digest = request.request_id, request_digest(request, sample)
        finished = self.recent_results.get(request_id)
        if finished is not None:
            return self._same_request(request_id, digest, *finished)
        running = self.in_progress.get(request_id)
        if running is not None:
            self._same_request(request_id, digest, running.digest, None)
            waiter: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
            running.waiters.append(waiter)
            return await waiter
        if len(self.in_progress) >= self.max_in_progress:
            # runs outlive their client (aiohttp does not cancel a handler whose client hung up):
            # a client that keeps disconnecting must not pile up runs without bound
            raise Overloaded(f"{len(self.in_progress)} requests already in progress on this node",
                             retry_after_s=IN_PROGRESS_RETRY_AFTER_S)
        run = _Run(digest)
        self.in_progress[request_id] = run
        # runs in this handler's own task: a task and a shield per request cost event-loop
        # turns; a resent id waits on the run's waiters instead
        try:
            result = await self._infer(request, request_id, sample, received_at, image)
        except BaseException as error:
            self._finished(request_id, run, None, error)
            raise
        self._finished(request_id, run, result, None)
        return result

    @staticmethod
    def _same_request(request_id: str, digest: RequestDigest | None, known_digest: RequestDigest | None,
                      answer: ResultT) -> ResultT:
        """The answer of an earlier request with this id, only if it was the same request."""
        if digest != known_digest:
            raise RequestConflict(f"request id {request_id!r} was already used for a different request "
                                  f"(input, user, family or deadline differ); use a fresh id")
        return answer

    def _finished(self, request_id: str, run: _Run, result: InferResult | None, error: BaseException | None) -> None:
        self.in_progress.pop(request_id, None)
        if result is not None:
            self.recent_results.put(request_id, (run.digest, result))
        for waiter in run.waiters:
            if waiter.done():
                continue
            if result is not None:
                waiter.set_result(result)
            elif isinstance(error, asyncio.CancelledError):
                waiter.set_exception(Draining(f"request {request_id}: its run was cancelled (node shutting down)"))
            else:
                waiter.set_exception(error if isinstance(error, Exception) else InternalError(repr(error)))

    def _check_pinned(self, request: InferRequest) -> None:
        """A pinned variant and exit exist and belong to the family (checked once per triple:
        the manifest does not change while the node runs)."""
        key = (request.family, request.variant, request.exit)
        if key in self._checked_pins:
            return
        self._check_pinned_against_manifest(request)
        if len(self._checked_pins) < 4096:  # client-chosen values: bounded
            self._checked_pins.add(key)

    def _check_pinned_against_manifest(self, request: InferRequest) -> None:
        if request.variant is None:
            if request.exit is not None:
                exits = sorted({block for variant in self.host.manifest.variants_of(request.family)
                                for block in variant.exit_blocks})
                if request.exit not in exits:
                    raise BadRequest(f"exit {request.exit} is not an exit of any {request.family} variant; "
                                     f"exits: {exits}")
            return
        variant = self.host.variant(request.variant)
        if variant.family != request.family:
            raise UnknownVariant(f"variant {request.variant!r} is not in family {request.family!r}")
        if request.exit is not None and request.exit not in variant.exit_blocks:
            raise BadRequest(f"exit {request.exit} is not an exit of {variant.name}; exits: {variant.exit_blocks}")

    async def _infer(self, request: InferRequest, request_id: str, sample: np.ndarray,
                     received_at: float, image: tuple[str, bytes] | None = None) -> InferResult:
        self._check_pinned(request)
        tensor = torch.from_numpy(sample)
        context_bytes = sample_bytes(sample)
        if self.on_usage is not None:  # offered demand, answered or not: max-min shares divide what users ask
            self.on_usage(request.user)
        weights = request.qoe
        # the bandit's context reads the node and its cluster; a pinned arm has no context to build
        state = self.state() if request.variant is None else PINNED_STATE
        degrade = self.admission is not None and not self.admission(request.user, request_id, state)
        decision = self.selection.decide(request, context_bytes, state, degrade=degrade, image=image)
        if degrade:
            self.metrics.requests.labels(outcome="shed_to_cheapest_arm").inc()
        self.arms_chosen[decision.arm.key] = self.arms_chosen.get(decision.arm.key, 0) + 1
        may_shed = not degrade and request.variant is None
        try:
            try:
                execution = await self._execute(request, request_id, decision, tensor, received_at, image,
                                                wait_share=first_try_wait_share(may_shed, decision.segments,
                                                                                self.node_id))
            except Overloaded as refusal:
                if not may_shed:
                    raise
                # refused for load with the policy's arm (waiting half its slack at most): a cheaper
                # arm before a refusal, else the same arm with all of its slack
                first = decision
                shed = self._shed_arm(request, decision, context_bytes, state, image)
                if shed is not None:
                    self.metrics.requests.labels(outcome="shed_after_refusal").inc()
                    decision, degrade = shed, True
                try:
                    execution = await self._execute(request, request_id, decision, tensor, received_at, image)
                except P2PError as error:  # say what the first try, with the policy's arm, ran into
                    raise error.annotated(f"second try, after {first.arm.key} on "
                                          f"{'>'.join(segment.node for segment in first.segments)} was refused: "
                                          f"{refusal.message[:160]}") from None
        except DeadlineExceeded:
            self._learn_miss(decision, weights, request.deadline_ms)
            if not decision.forced:  # predicted in time, refused late: it would have taken at least the deadline
                self.selection.observe_latency(decision, request.deadline_ms)
            raise
        answer = softmax_answer(execution.logits)
        if answer is None:
            # finite but huge inputs overflow inside the model: the input's fault, never a reward
            raise NonFiniteOutput(f"request {request_id}: the model's output is NaN or Inf for this input "
                                  f"(values too large?)")
        label, confidence, probabilities = answer
        latency_ms = (time.monotonic() - received_at) * 1000
        deadline_met = latency_ms <= request.deadline_ms
        if not execution.degraded and execution.replans == 0 and self.latency_thinning.due(
                latency_route_key(decision), received_at):  # one answer per route every few ms tells the averages all
            parts_ms = sum(timing.queue_ms + timing.compute_ms + timing.transfer_ms for timing in execution.timings)
            self.selection.observe_latency(decision, latency_ms, parts_ms if execution.timings else None)
        accuracy = self.selection.answer_accuracy(decision.arm.variant, execution.exit_block, confidence)
        outcome = QoEOutcome(accuracy=accuracy, latency_ms=latency_ms, deadline_ms=request.deadline_ms,
                             deadline_met=deadline_met, energy=self._energy(execution))
        policy = self.selection.policy
        if policy is not None and decision.context is not None:  # (a pinned arm teaches no policy)
            reward = qoe_reward(weights, outcome.accuracy, latency_ms, request.deadline_ms, deadline_met,
                                outcome.energy)
            policy.remember(request_id, decision.context, decision.arm, provisional_reward=reward, outcome=outcome)
        self.answered.put(request_id, AnsweredRequest(arm=decision.arm, user=request.user, weights=weights,
                                                      label=label, outcome=outcome))
        return InferResult(
            request_id=request_id, label=label, probabilities=probabilities,
            exit=execution.exit_block, variant=decision.arm.variant, family=request.family,
            plan=execution.executed, timings=execution.timings, latency_ms=round(latency_ms, 3),
            deadline_ms=request.deadline_ms, deadline_met=deadline_met,
            degraded=degrade or execution.degraded or execution.exit_block != decision.arm.exit, arm=decision.arm.key,
            policy=self.policy_name, replans=execution.replans, entry_node=self.node_id,
            predicted_ms=round(decision.predicted_ms, 3) if math.isfinite(decision.predicted_ms) else None)

    def _shed_arm(self, request: InferRequest, decision: Decision, context_bytes: int, state: NodeState,
                  image: tuple[str, bytes] | None) -> Decision | None:
        """The cheaper arm a request refused for load gets one try with (``degraded_arm``: the
        cheapest that keeps most of the best arm's accuracy, and ``min_accuracy``), or None: no
        cheaper arm than the one refused. Overload should cost accuracy before answers. Only
        for arms the policy chose (a pinned arm is never shed)."""
        shed = self.selection.decide(request, context_bytes, state, degrade=True, image=image)
        return None if shed.arm == decision.arm else shed

    async def _input_for(self, variant_name: str, tensor: torch.Tensor,
                         image: tuple[str, bytes] | None) -> torch.Tensor:
        """The request's input at the resolution of the chosen variant: a family may hold a
        variant at a lower input resolution (``text-orientation-r160``) beside those the route
        decoded for. The client's image is decoded again with that variant's preprocessing (as its
        manifest accuracy was measured); a tensor is resized, antialiased bilinear."""
        variant = self.selection.manifest.variant(variant_name)
        expected = tuple(variant.input_shape)
        if tuple(tensor.shape[1:]) == expected:
            return tensor
        if image is not None:
            array = await asyncio.to_thread(image_input.image_tensor, image[1], variant.preprocessing, expected,
                                            media_type=image[0], model=variant.name)
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if len(expected) != 3 or tensor.dim() != 4 or tensor.shape[1] != expected[0]:
            raise BadShape(f"input of shape {list(tensor.shape[1:])} cannot feed {variant.name}, which takes "
                           f"{list(expected)}")
        return torch.nn.functional.interpolate(tensor, size=expected[1:], mode="bilinear", align_corners=False,
                                               antialias=True)

    async def _execute(self, request: InferRequest, request_id: str, decision: Decision, tensor: torch.Tensor,
                       received_at: float, image: tuple[str, bytes] | None = None,
                       wait_share: float = 1.0) -> Execution:
        tensor = await self._input_for(decision.arm.variant, tensor, image)
        segments = decision.segments
        min_exit = self.selection.earliest_degrade_exit(decision.arm, self.selection.min_accuracy(request))
        local = len(segments) == 1 and segments[0].node == self.node_id
        refused_here = 0
        if local or self.stage is None:
            if not local or not self.host.hosts(decision.arm.variant, 0, decision.arm.exit):
                raise UnknownVariant(f"this node cannot run blocks [0, {decision.arm.exit}] of "
                                     f"{decision.arm.variant} and has no peers to place them on")
            try:
                return await self._run_locally(request, request_id, decision, tensor, received_at, min_exit,
                                               wait_share)
            except (RefusedBeforeStart, Overloaded):
                elsewhere = self._placement_elsewhere(request, decision, received_at, image)
                if elsewhere is None:
                    raise
                segments, refused_here = elsewhere, 1
        assert self.stage is not None
        budget_ms = request.deadline_ms - (time.monotonic() - received_at) * 1000
        if budget_ms <= 0:
            raise DeadlineExceeded(f"request {request_id}: no budget left before the first hop")
        remote = [segment.node for segment in segments if segment.node != self.node_id]

        def reroute() -> list[PlanSegment] | None:
            """A split plan whose first segment this node's unit refused: the same re-route."""
            elsewhere = self._placement_elsewhere(request, decision, received_at, image)
            if elsewhere is not None:
                self.metrics.replans.inc()
            return elsewhere

        with self.outstanding.track(remote):  # the next plans see this request's wait at those peers
            outcome = await self.stage.execute(
                request_id=request_id, family=request.family, variant=decision.arm.variant,
                exit_block=decision.arm.exit, segments=segments, tensor=tensor, budget_ms=budget_ms,
                confidence_threshold=request.confidence_threshold, image=image, min_exit=min_exit,
                wait_share=wait_share, reroute=None if refused_here else reroute)
        if refused_here:  # the stage service counts its own re-plans (its on_replan hook); peers count theirs
            self.metrics.replans.inc(refused_here)
        return Execution(logits=outcome.logits, exit_block=outcome.exit_block, degraded=outcome.degraded,
                         timings=list(outcome.timings), executed=list(outcome.executed),
                         replans=outcome.replans + refused_here)

    def _placement_elsewhere(self, request: InferRequest, decision: Decision, received_at: float,
                             image: tuple[str, bytes] | None) -> list[PlanSegment] | None:
        """Where the arm goes when this node's unit refused it before running any of it (its
        queue or its own run would end past the deadline): the best plan on peers alone, if
        one is predicted to make the time left; None leaves the refusal standing (and the
        policy's shedding to a cheaper arm after it). The planner had priced this node in
        time; when its executor, which sees the queue as it is now, says otherwise, the
        request still has most of its budget and peers may have room: refusing it would turn
        a local misprediction into a miss (the bandwidth-trace Pi's and the heated Jetson's
        refusals were two thirds of their misses). A plan returned is counted as a re-route."""
        if self.stage is None or request.plan is not None:  # a pinned plan is the caller's to change
            return None
        if self.selection.policy_name in STATIC_BASELINES:  # a baseline's placement is its definition
            return None
        left_ms = request.deadline_ms - (time.monotonic() - received_at) * 1000
        if left_ms <= 0:
            return None
        try:
            segments, predicted_ms = self.selection.place(decision.arm, exclude=[self.node_id],
                                                          codecs=self.selection.pricing(request, image))
        except (NoFeasiblePlan, InvalidPlanningProblem):
            return None
        if predicted_ms > left_ms:
            return None
        self.metrics.requests.labels(outcome="rerouted_after_local_refusal").inc()
        return segments

    async def _run_locally(self, request: InferRequest, request_id: str, decision: Decision, tensor: torch.Tensor,
                           received_at: float, min_exit: int, wait_share: float = 1.0) -> Execution:
        segment = decision.segments[0]
        job = Job(request_id=request_id, variant=decision.arm.variant, first_block=0, last_block=decision.arm.exit,
                  hidden=tensor, deadline=received_at + request.deadline_ms / 1000, exit_block=decision.arm.exit,
                  confidence_threshold=request.confidence_threshold, min_exit=min_exit, wait_share=wait_share)
        executor = self.executors.get(segment.unit)
        if executor is None:
            raise BadRequest(f"node {self.node_id} has no compute unit {segment.unit!r}; "
                             f"it has {sorted(self.executors)}")
        result = await executor.submit(job)
        logits = result.logit_values if result.logit_values is not None else result.logits
        if logits is None or result.exit_block is None:
            raise P2PError(f"request {request_id}: the executor returned no exit logits")
        timing = SegmentTiming(node=self.node_id, unit=segment.unit, first_block=0, last_block=result.last_block_run,
                               compute_ms=round(result.compute_ms, 3), queue_ms=round(result.queue_ms, 3))
        executed = [PlanSegment(node=self.node_id, unit=segment.unit, first_block=0,
                                last_block=result.last_block_run)]
        return Execution(logits=logits, exit_block=result.exit_block, degraded=result.degraded,
                         timings=[timing], executed=executed, replans=0)

    @staticmethod
    def _energy(execution: Execution) -> float:
        """An energy proxy in [0, ~1]: compute seconds spent on the request (10 ms ≈ 0.1)."""
        return sum(timing.compute_ms for timing in execution.timings) / ENERGY_MS_PER_UNIT

    def _learn_miss(self, decision: Decision, weights: QoEWeights, deadline_ms: float) -> None:
        policy = self.selection.policy
        if policy is not None and decision.context is not None:
            policy.update(decision.context, decision.arm,
                          qoe_reward(weights, 0.0, deadline_ms, deadline_ms, deadline_met=False))

    def policy_summary(self) -> dict:
        """The policy as ``/v1/health`` shows it: how much it learned, and a digest of its
        statistics (the sum of every arm's reward moment) that any update or feedback moves."""
        policy = self.selection.policy
        if policy is None:
            return {"name": self.policy_name, "observations": 0, "statistics_digest": 0.0,
                    "arms_chosen": dict(self.arms_chosen)}
        digest = sum(float(policy.statistics(Arm.from_key(key)).moment.sum()) for key in self.arms_chosen)
        return {"name": self.policy_name, "observations": policy.observations, "statistics_digest": digest,
                "arms_chosen": dict(self.arms_chosen)}

    def feedback(self, feedback: FeedbackRequest) -> FeedbackResult:
        record = self.answered.get(feedback.request_id)
        if record is None:
            raise UnknownRequest(f"unknown request id {feedback.request_id!r} (never answered here, or expired)")
        if (feedback.label is None) == (feedback.score is None):
            raise BadRequest("feedback needs exactly one of label or score")
        if feedback.score is not None and not 0.0 <= feedback.score <= 1.0:
            raise BadRequest(f"score must be in [0, 1], got {feedback.score}")
        if feedback.label is not None:
            reward = feedback_reward(record.weights, record.outcome, correct=feedback.label == record.label)
        else:
            reward = feedback_reward(record.weights, record.outcome, user_score=feedback.score)
        policy = self.selection.policy
        applied = policy.feedback(feedback.request_id, reward) if policy is not None else False
        self.metrics.feedback.labels(kind="label" if feedback.label is not None else "score").inc()
        return FeedbackResult(request_id=feedback.request_id, applied=applied, reward=round(reward, 6))


def softmax_answer(logits: torch.Tensor | list[float]) -> tuple[int, float, list[float]] | None:
    """One sample's answer from its exit logits (a one-row tensor, or the row as floats): the
    label, its probability, and every class's probability rounded to 6 decimals (softmax in
    float64); None when a logit is NaN or Inf. Up to ``SMALL_ANSWER_CLASSES`` classes on Python
    floats, above it on numpy (a many-class tensor goes to numpy without a list between)."""
    if isinstance(logits, list):
        if len(logits) > SMALL_ANSWER_CLASSES:
            return _numpy_answer(np.array(logits, dtype=np.float64))
        return _float_answer(logits)
    if logits.dtype is not torch.float32 or not logits.is_cpu:
        logits = logits.to("cpu", torch.float32)
    if logits.shape[-1] > SMALL_ANSWER_CLASSES:
        return _numpy_answer(logits.numpy()[0].astype(np.float64))
    return _float_answer(logits.tolist()[0])  # one torch call (numpy() then indexing took three)


def _float_answer(values: list[float]) -> tuple[int, float, list[float]] | None:
    if not math.isfinite(sum(values)):  # NaN or Inf anywhere makes the sum so (float32 logits cannot overflow it)
        return None
    top = max(values)
    exponentials = [math.exp(value - top) for value in values]
    scale = 1.0 / sum(exponentials)
    label = values.index(top)  # the first of tied labels, as argmax
    # to 6 decimals: k / 1e6 is the double nearest k millionths, what round(p, 6) returns, at
    # half its cost (3.3 against 6.4 us for 10 classes alone); p in [0, 1], no overflow
    return label, exponentials[label] * scale, [int(value * scale * 1e6 + 0.5) / 1e6 for value in exponentials]


def _numpy_answer(values: np.ndarray) -> tuple[int, float, list[float]] | None:
    if not math.isfinite(values.sum()):
        return None
    exponentials = np.exp(values - values.max())
    probabilities = exponentials / exponentials.sum()
    label = int(probabilities.argmax())
    rounded: list[float] = probabilities.round(6).tolist()
    return label, float(probabilities[label]), rounded
