"""The entry node's controller: per request, choose an arm (variant, exit), place it, run
it, answer, and learn from the outcome.

This first version places every request on this node; the planner and the selector plug
in here (``choose_arm`` and ``place``), so the node's HTTP layer never changes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import torch

from p2pinfer.errors import BadRequest, UnknownVariant
from p2pinfer.executor import Executor, Job, JobResult
from p2pinfer.metrics import NodeMetrics
from p2pinfer.model_host import ModelHost
from p2pinfer.request_log import RequestLog
from p2pinfer.schema import FeedbackRequest, FeedbackResult, InferRequest, InferResult, PlanSegment, SegmentTiming


@dataclass(frozen=True)
class ArmChoice:
    variant: str
    exit: int

    @property
    def key(self) -> str:
        return f"{self.variant}@{self.exit}"


@dataclass
class AnsweredRequest:
    """What feedback needs later: the arm, the answer and how it went."""

    arm: ArmChoice
    user: str
    label: int
    confidence: float
    latency_ms: float
    deadline_ms: float
    deadline_met: bool


class Controller:
    def __init__(self, node_id: str, host: ModelHost, executor: Executor, metrics: NodeMetrics,
                 fixed_arm: ArmChoice | None = None) -> None:
        self.node_id = node_id
        self.host = host
        self.executor = executor
        self.metrics = metrics
        self.fixed_arm = fixed_arm
        self.answered: RequestLog[AnsweredRequest] = RequestLog()
        self.policy_name = "fixed"

    # ---- decisions ---------------------------------------------------------------------
    def choose_arm(self, request: InferRequest) -> ArmChoice:
        family_default = self.host.require_family(request.family)
        if request.variant is not None:
            variant = self.host.variant(request.variant)
            if variant.family != request.family:
                raise UnknownVariant(f"variant {request.variant!r} is not in family {request.family!r}")
            exit_block = request.exit if request.exit is not None else variant.exit_blocks[-1]
        elif self.fixed_arm is not None and self.host.variant(self.fixed_arm.variant).family == request.family:
            variant = self.host.variant(self.fixed_arm.variant)
            exit_block = request.exit if request.exit is not None else self.fixed_arm.exit
        else:
            variant = max(self.host.hosted_variants(request.family), key=lambda v: v.exits[-1].accuracy,
                          default=family_default)
            exit_block = request.exit if request.exit is not None else variant.exit_blocks[-1]
        if exit_block not in variant.exit_blocks:
            raise BadRequest(f"exit {exit_block} is not an exit of {variant.name}; exits: {variant.exit_blocks}")
        return ArmChoice(variant.name, exit_block)

    def place(self, arm: ArmChoice) -> list[PlanSegment]:
        if not self.host.hosts(arm.variant, 0, arm.exit):
            raise UnknownVariant(f"this node does not host blocks [0, {arm.exit}] of {arm.variant}")
        return [PlanSegment(node=self.node_id, unit=self.executor.name, first_block=0, last_block=arm.exit)]

    # ---- the request -------------------------------------------------------------------
    async def infer(self, request: InferRequest, tensor: torch.Tensor, received_at: float) -> InferResult:
        request_id = request.request_id or uuid.uuid4().hex
        deadline = received_at + request.deadline_ms / 1000
        arm = self.choose_arm(request)
        plan = self.place(arm)
        segment = plan[0]
        job = Job(request_id=request_id, variant=arm.variant, first_block=segment.first_block,
                  last_block=segment.last_block, hidden=tensor, deadline=deadline, exit_block=arm.exit,
                  confidence_threshold=request.confidence_threshold)
        outcome: JobResult = await self.executor.submit(job)
        latency_ms = (time.monotonic() - received_at) * 1000
        assert outcome.logits is not None and outcome.exit_block is not None
        probabilities = torch.softmax(outcome.logits.float(), dim=-1)[0]
        label = int(probabilities.argmax())
        deadline_met = latency_ms <= request.deadline_ms
        timings = [SegmentTiming(node=self.node_id, unit=segment.unit, first_block=segment.first_block,
                                 last_block=outcome.last_block_run, compute_ms=round(outcome.compute_ms, 3),
                                 queue_ms=round(outcome.queue_ms, 3))]
        if outcome.last_block_run != segment.last_block:
            plan = [PlanSegment(node=segment.node, unit=segment.unit, first_block=segment.first_block,
                                last_block=outcome.last_block_run)]
        self.answered.put(request_id, AnsweredRequest(
            arm=arm, user=request.user, label=label, confidence=float(probabilities.max()),
            latency_ms=latency_ms, deadline_ms=request.deadline_ms, deadline_met=deadline_met))
        return InferResult(
            request_id=request_id, label=label, probabilities=[round(float(p), 6) for p in probabilities],
            exit=outcome.exit_block, variant=arm.variant, family=request.family, plan=plan, timings=timings,
            latency_ms=round(latency_ms, 3), deadline_ms=request.deadline_ms, deadline_met=deadline_met,
            degraded=outcome.degraded or outcome.exit_block != arm.exit, arm=arm.key, policy=self.policy_name,
            entry_node=self.node_id)

    def feedback(self, feedback: FeedbackRequest) -> FeedbackResult:
        from p2pinfer.errors import UnknownRequest

        record = self.answered.get(feedback.request_id)
        if record is None:
            raise UnknownRequest(f"unknown request id {feedback.request_id!r} (never answered here, or expired)")
        if feedback.label is None and feedback.score is None:
            raise BadRequest("feedback needs a label or a score")
        reward = float(feedback.score if feedback.score is not None else feedback.label == record.label)
        self.metrics.feedback.labels(kind="label" if feedback.label is not None else "score").inc()
        return FeedbackResult(request_id=feedback.request_id, applied=True, reward=reward)
