"""Typed errors shared by the node, its peers and the SDK.

Every error has a stable ``code`` (the string carried on the wire) and an HTTP ``status``.
The server answers ``{"error": message, "code": code}``; the client maps ``code`` back to
the same class, so ``except DeadlineExceeded`` works on both sides of the wire.
Classes also inherit the matching builtin (``ValueError``, ``TimeoutError`` ...) in the
style of aiohttp's ``ServerTimeoutError(ServerConnectionError, asyncio.TimeoutError)``.
"""

from __future__ import annotations

from typing import ClassVar


class P2PError(Exception):
    """Base of every p2pinfer error."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.retry_after_s = retry_after_s


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


class BadDeadline(BadRequest):
    code = "bad_deadline"


class BadHeader(BadRequest):
    code = "bad_header"


class UnsupportedVersion(BadHeader):
    code = "unsupported_version"


class TruncatedBody(BadRequest):
    code = "truncated_body"


class UnsupportedMediaType(BadRequest):
    code = "unsupported_media_type"
    status = 415


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    status = 413


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


class PeerUnavailable(P2PError, ConnectionError):
    """A hop to a peer failed (refused, reset, timed out or 5xx) and no re-plan could save it."""

    code = "peer_unavailable"
    status = 502


class ConnectionFailed(P2PError, ConnectionError):
    """Client side: no entry node could be reached."""

    code = "connection_failed"
    status = 503


ERROR_CLASSES: dict[str, type[P2PError]] = {}


def _register(cls: type[P2PError]) -> None:
    ERROR_CLASSES[cls.code] = cls
    for child in cls.__subclasses__():
        _register(child)


_register(P2PError)


def error_from_code(code: str, message: str, retry_after_s: float | None = None) -> P2PError:
    """Rebuild the typed error a server sent (unknown codes become ``P2PError``)."""
    cls = ERROR_CLASSES.get(code, P2PError)
    return cls(message, retry_after_s=retry_after_s)
