"""The ``POST /v1/stage`` messages: what one peer sends another to run a segment of a plan.

A stage frame is a ``StageHeader`` and the ``activation`` tensor; the reply is a
``StageReplyHeader`` and the exit's ``logits``. They live in the protocol layer because
both the stage service (which answers them) and the peer transport (which sends them)
speak them.
"""

from __future__ import annotations

from p2pinfer.protocol.boundary_codec import BoundaryEncoding
from p2pinfer.protocol.schema import PlanSegment, SegmentTiming
from p2pinfer.protocol.wire import FrameHeader

STAGE_PATH = "/v1/stage"
ACTIVATION = "activation"
LOGITS = "logits"


class StageHeader(FrameHeader, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Header of ``POST /v1/stage``; the frame's tensor ``activation`` is boundary
    ``segments[0].first_block`` (one sample, float32).

    ``segments`` is the rest of the plan and ``segments[0]`` is the receiver's; an empty list
    is a probe (answered at once, for RTT measurement). ``budget_ms`` is what was left when
    the sender sent it (relative: no shared clock). ``origin`` is the entry node, ``hop``
    counts forwards from it, ``attempt`` counts re-plans of this hop (idempotency ignores it).
    ``encoding`` says how ``activation`` is encoded (``protocol.boundary_codec``; None: raw
    float32, as before codecs existed); later hops use each segment's ``codec``.
    ``image_type`` ("image/jpeg" | "image/png"): ``activation`` is the client's image as it
    came (a 1-D uint8 tensor), for a receiver that runs block 0 to decode and preprocess.
    ``min_exit``: the earliest exit a degraded answer may come from (one that keeps most of the
    arm's accuracy; None: any exit). ``wait_share``: the share of its slack a segment may spend
    queued behind other work before the receiver refuses it (below 1 when the entry has a
    cheaper arm to retry with: ``Job.wait_share``).
    """

    request_id: str
    family: str
    variant: str
    exit_block: int
    segments: list[PlanSegment]
    budget_ms: float
    confidence_threshold: float | None = None
    allow_degrade: bool = True
    min_exit: int | None = None
    wait_share: float = 1.0
    origin: str
    hop: int = 0
    attempt: int = 0
    encoding: BoundaryEncoding | None = None
    image_type: str | None = None


class StageReplyHeader(FrameHeader, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Header of a stage reply; the frame's tensor ``logits`` is the exit's output.

    ``timings`` and ``executed`` list every segment actually run from the receiver on (the
    receiver's own first), ``budgets_ms`` the budget each of those segments had when it
    started (on its node's clock). A segment's ``transfer_ms`` is the hop into it as
    measured by its sender. ``handled_ms``: time the receiver spent between reading the
    request and answering, so the sender can tell link time from work. ``exit_block`` None
    only for a probe. ``jobs_after``: the receiver's jobs not yet answered as it answered
    this one, the sender's freshest word on its load (-1: not said, as in a probe), with the
    receiver's gossip ``incarnation`` and ``heartbeat`` then: a gossiped record of it up to
    that heartbeat is older than this word.
    """

    exit_block: int | None = None
    degraded: bool = False
    timings: list[SegmentTiming] = []
    executed: list[PlanSegment] = []
    budgets_ms: list[float] = []
    replans: int = 0
    handled_ms: float = 0.0
    jobs_after: int = -1
    incarnation: int = -1
    heartbeat: int = -1


__all__ = ["ACTIVATION", "LOGITS", "STAGE_PATH", "StageHeader", "StageReplyHeader"]
