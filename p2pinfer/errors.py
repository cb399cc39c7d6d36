"""Typed errors shared by the node, its peers and the SDK.

Every error has a stable ``code`` (the string carried on the wire) and an HTTP ``status``.
The server answers ``{"error": message, "code": code}``; the client maps ``code`` back to
the same class, so ``except DeadlineExceeded`` works on both sides of the wire.
Classes also inherit the matching builtin (``ValueError``, ``TimeoutError`` ...) in the
style of aiohttp's ``ServerTimeoutError(ServerConnectionError, asyncio.TimeoutError)``.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

ErrorT = TypeVar("ErrorT", bound="P2PError")

ERROR_CLASSES: dict[str, type[P2PError]] = {}
"""Every error code on the wire and the one class it stands for, filled as classes are defined."""


class P2PError(Exception):
    """Base of every p2pinfer error.

    A subclass that sets its own ``code`` is registered when it is defined
    (``__init_subclass__``), so ``error_from_code`` knows it as soon as its module is
    imported; the classes that cross the wire are all defined here, so a client that
    imports only this module decodes every one of them. Two classes may not share a code.
    """

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.retry_after_s = retry_after_s

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            _register(cls)

    @classmethod
    def from_wire(cls: type[ErrorT], message: str, retry_after_s: float | None = None) -> ErrorT:
        """Rebuild this error from its wire form: subclasses with richer constructors
        (``NoFeasiblePlan(block=...)``, ``PeerRejected(reason)``) get their defaults."""
        error = cls.__new__(cls)
        P2PError.__init__(error, message, retry_after_s=retry_after_s)
        return error

    def annotated(self: ErrorT, note: str) -> ErrorT:
        """This error (same class, code, Retry-After and attributes) with what led to it appended
        to its message: a refusal after a failed first try is not the same story as one alone."""
        renamed = type(self).from_wire(f"{self.message} ({note})", self.retry_after_s)
        renamed.__dict__.update({key: value for key, value in self.__dict__.items() if key != "message"})
        return renamed


def _register(cls: type[P2PError]) -> None:
    holder = ERROR_CLASSES.get(cls.code)
    if holder is not None and holder is not cls:
        raise TypeError(f"error code {cls.code!r} is taken by {holder.__qualname__}; {cls.__qualname__} needs its own")
    ERROR_CLASSES[cls.code] = cls


_register(P2PError)


class BadRequest(P2PError, ValueError):
    """The request is malformed: the message names the field that is wrong."""

    code = "bad_request"
    status = 400


class BadShape(BadRequest):
    code = "bad_shape"


class BadDtype(BadRequest):
    code = "bad_dtype"


class NonFiniteInput(BadRequest):
    code = "non_finite_input"


class BadImage(BadRequest):
    """An image input that cannot be decoded (not JPEG/PNG, truncated, too large, no preprocessing)."""

    code = "bad_image"


class BadCodec(BadRequest):
    """A boundary encoding that is unknown, malformed or does not match its payload."""

    code = "bad_codec"


class BadDeadline(BadRequest):
    code = "bad_deadline"


class BadMinAccuracy(BadRequest):
    """``min_accuracy`` is not a finite number in [0, 1]."""

    code = "bad_min_accuracy"


class BadHeader(BadRequest):
    code = "bad_header"


class UnsupportedVersion(BadHeader):
    code = "unsupported_version"


class NestedTooDeeply(BadRequest):
    """A JSON or msgpack document nested deeper than the node reads: a parser recursing through
    it would raise ``RecursionError`` (a valid request nests about 40 levels)."""

    code = "nested_too_deeply"


class TruncatedBody(BadRequest):
    code = "truncated_body"


class BodyTimeout(BadRequest):
    """The client stopped sending its body: a stalled upload must not hold the node."""

    code = "body_timeout"
    status = 408


class UnsupportedMediaType(BadRequest):
    code = "unsupported_media_type"
    status = 415


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    status = 413


class HeaderTooLarge(BadRequest):
    """A request header line (or the request line) over the server's limit (aiohttp's 8 KB)."""

    code = "header_too_large"
    status = 431


class NonFiniteOutput(BadRequest):
    """The model's output for this input is NaN or Inf (finite but huge inputs overflow):
    answered as the input's fault, and never turned into a reward."""

    code = "non_finite_output"
    status = 422


class Conflict(P2PError):
    """The request clashes with what the node already holds under the same key."""

    code = "conflict"
    status = 409


class RequestConflict(Conflict):
    """A request id reused with a different request (input, user, family or deadline)."""

    code = "request_conflict"


class NodeIdTaken(Conflict):
    """A node tried to join under an id a live member at another address already holds."""

    code = "node_id_taken"


class NotFound(P2PError, LookupError):
    code = "not_found"
    status = 404


class UnknownFamily(NotFound):
    code = "unknown_family"


class UnknownVariant(NotFound):
    code = "unknown_variant"


class UnknownRequest(NotFound):
    code = "unknown_request"


class Unauthorized(P2PError, PermissionError):
    """A peer message without a valid signature, outside the time window, or replayed."""

    code = "unauthorized"
    status = 401


class Overloaded(P2PError):
    """The bounded queue is full: retry after ``retry_after_s``."""

    code = "overloaded"
    status = 429


class Draining(P2PError):
    """The node is shutting down and accepts no new work."""

    code = "draining"
    status = 503


class DeadlineExceeded(P2PError, TimeoutError):
    """The request could not finish within its budget; it was answered, not dropped."""

    code = "deadline_exceeded"
    status = 504


class RefusedBeforeStart(DeadlineExceeded):
    """A unit refused the work before running any of it: its own run (or its queue) would end
    past the deadline. Nothing was computed, so another node may still make it in time: the
    entry re-plans the request without that unit while the budget allows."""

    code = "refused_before_start"


class PeerUnavailable(P2PError, ConnectionError):
    """A hop to a peer failed (refused, reset, timed out or 5xx) and no re-plan could save it."""

    code = "peer_unavailable"
    status = 502


class ConnectionFailed(P2PError, ConnectionError):
    """Client side: no entry node could be reached."""

    code = "connection_failed"
    status = 503


class NodeStartError(P2PError):
    """A node process exited or stayed silent before announcing readiness."""

    code = "node_start_failed"


class UnknownProfile(P2PError, LookupError):
    """No device profile (or compute unit of a profile) has that name."""

    code = "unknown_profile"
    status = 400


class LinkConfigError(P2PError, ValueError):
    """A link description (scenario table) is malformed: the message names the key."""

    code = "bad_link_config"
    status = 400


class TraceError(P2PError):
    """A bandwidth trace could not be used."""

    code = "bad_trace"
    status = 400


class TraceFormatError(TraceError, ValueError):
    """A trace file has a line that is not ``time throughput`` (or breaks another rule)."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


class TraceNotFound(TraceError, FileNotFoundError):
    """A trace named by a scenario does not exist in any of the searched folders."""

    code = "trace_not_found"


class NetnsUnavailable(P2PError):
    """Network namespaces or shaping cannot be set up here (not Linux, not root, no iproute2,
    or the kernel refused)."""

    code = "netns_unavailable"
    status = 503


class PeerAddressError(BadRequest):
    """A seed or peers-file entry is not ``host:port``."""

    code = "bad_peer_address"


class PlanningError(P2PError):
    """The planner could not answer."""

    code = "planning_error"
    status = 500


class InvalidPlanningProblem(PlanningError, ValueError):
    """The planner's inputs are inconsistent (negative bytes, duplicate unit, bad block ...)."""

    code = "invalid_planning_problem"


class NoFeasiblePlan(PlanningError):
    """No placement exists: a block no usable unit hosts, or no link reaches the hosts."""

    code = "no_feasible_plan"
    status = 503

    def __init__(self, message: str, *, block: int | None = None) -> None:
        super().__init__(message)
        self.block = block


class InternalError(P2PError):
    """The last resort: an exception no code anticipated, answered as a typed 500 (logged
    with the request id and counted), never as a bare traceback."""

    code = "internal_error"
    status = 500


class AccuracyUnavailable(NoFeasiblePlan):
    """No arm the cluster can run now reaches the request's ``min_accuracy`` (422: the request is
    well formed, this cluster cannot honour it; the message names the best accuracy on offer).
    A ``NoFeasiblePlan``, so ``except NoFeasiblePlan`` catches it too."""

    code = "accuracy_unavailable"
    status = 422


def error_from_code(code: str, message: str, retry_after_s: float | None = None) -> P2PError:
    """Rebuild the typed error a server sent (unknown codes become ``P2PError``)."""
    return ERROR_CLASSES.get(code, P2PError).from_wire(message, retry_after_s)
