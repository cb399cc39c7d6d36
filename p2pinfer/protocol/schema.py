"""Typed messages of the public API (msgspec Structs): what a client sends and gets back.

The same Structs travel as JSON (``application/json``) or inside the binary frame's msgpack
header (``application/x-p2pinfer``, see ``p2pinfer.wire``). ``WIRE_VERSION`` is checked on
every decode: a header from another major version is refused with 400, never guessed at.
"""

from __future__ import annotations

from typing import Any

import msgspec

from selector.qoe import QoEWeights

WIRE_VERSION = 1



class TensorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One raw tensor in a binary frame: ``nbytes`` bytes, C order, little endian."""

    name: str
    dtype: str  # "float32" | "float16" | "bfloat16" | "int64" | "uint8" ...
    shape: list[int]
    nbytes: int


class PlanSegment(msgspec.Struct, frozen=True):
    """Blocks ``[first_block, last_block]`` on one unit of one node. ``codec`` is how the
    boundary entering the segment travels when it comes from another node
    (``protocol.boundary_codec``: "float32", "uint8+lz4", ...; "image/jpeg" for the client's
    image sent as is); unused when it is already there."""

    node: str
    unit: str
    first_block: int
    last_block: int
    codec: str = "float32"


class InferRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/infer``. In JSON the input rides in ``data`` (nested lists); in a binary
    frame it is the frame's tensor named ``input`` and ``data`` stays empty."""

    deadline_ms: float
    family: str = "digits-cnn"
    user: str = "anonymous"
    qoe: QoEWeights = QoEWeights()
    variant: str | None = None  # pin a variant (otherwise the selector picks)
    exit: int | None = None  # pin an exit block (otherwise the selector picks)
    confidence_threshold: float | None = None  # allow confidence-based early exit
    min_accuracy: float | None = None  # hard floor in [0, 1] on the chosen arm's held-out accuracy
    request_id: str | None = None
    plan: list[PlanSegment] | None = None  # pin the placement (with variant and exit): tests, debugging
    data: list[Any] | None = None  # nested lists of numbers: a JSON-sent input
    version: int = WIRE_VERSION


class SegmentTiming(msgspec.Struct, frozen=True):
    """What one segment of the plan did, measured where it ran."""

    node: str
    unit: str
    first_block: int
    last_block: int
    compute_ms: float
    queue_ms: float = 0.0
    transfer_ms: float = 0.0
    codec: str = "float32"  # how the boundary entering this segment travelled ("float32": raw or no hop)
    wire_bytes: int = 0  # bytes of that boundary on the wire (0: no hop)


class InferResult(msgspec.Struct, frozen=True):
    request_id: str
    label: int
    probabilities: list[float]
    exit: int
    variant: str
    family: str
    plan: list[PlanSegment]
    timings: list[SegmentTiming]
    latency_ms: float
    deadline_ms: float
    deadline_met: bool
    degraded: bool = False  # an earlier exit than chosen, to save the deadline
    arm: str = ""
    policy: str = ""
    replans: int = 0
    entry_node: str = ""
    predicted_ms: float | None = None  # what the planner predicted for the plan it chose (None: a pinned plan)


class FeedbackRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/feedback``: a correct label or a QoE score in [0, 1] for an answered request."""

    request_id: str
    label: int | None = None
    score: float | None = None


class FeedbackResult(msgspec.Struct, frozen=True):
    request_id: str
    applied: bool
    reward: float


class ErrorBody(msgspec.Struct, frozen=True):
    error: str
    code: str
