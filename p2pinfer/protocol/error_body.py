"""Error bodies on the wire: one encoder and one decoder for every route and every client.

A node, a stage or gossip peer, the Open Inference routes and the SDK all speak the same
error body, ``{"error": message, "code": code}`` (``reason`` added for refused peer
messages), with the error's HTTP status and ``Retry-After`` when the error has one. The
reader turns such an answer back into the class that was raised (``errors.error_from_code``),
or, for bodies without a ``code`` (a proxy, another server), into the class of its status.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

import msgspec
from aiohttp import web

from p2pinfer.errors import (
    BadRequest,
    Conflict,
    DeadlineExceeded,
    Draining,
    HeaderTooLarge,
    NonFiniteOutput,
    NotFound,
    Overloaded,
    P2PError,
    PayloadTooLarge,
    PeerUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    error_from_code,
)

JSON = "application/json"
RETRY_AFTER = "Retry-After"
MAX_RETRY_AFTER_MS = 3_600_000.0  # a body's wait beyond an hour is not believed (the header then counts)


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a failed request answers. Lenient on decode: proxies omit ``code``.

    ``retry_after_ms``: the error's wait to the millisecond. ``Retry-After`` carries whole
    seconds (at least 1, as HTTP defines it); an executor's refusal says 25 ms of queue, and a
    peer that read "1 s" from the header would avoid a node for forty times too long."""

    error: str = ""
    code: str | None = None
    reason: str | None = None
    retry_after_ms: float | None = None


ERRORS_BY_STATUS: Mapping[int, type[P2PError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: NonFiniteOutput,
    431: HeaderTooLarge,
    429: Overloaded,
    502: PeerUnavailable,
    503: Draining,
    504: DeadlineExceeded,
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ErrorBody)


def encode_error(error: P2PError) -> bytes:
    reason = getattr(error, "reason", None)
    wait = error.retry_after_s
    return _encoder.encode(ErrorBody(
        error=error.message, code=error.code, reason=None if reason is None else str(getattr(reason, "value", reason)),
        retry_after_ms=round(wait * 1000, 1) if wait is not None and math.isfinite(wait) and wait >= 0 else None))


def error_headers(error: P2PError) -> dict[str, str]:
    """``Retry-After`` in whole seconds (at least 1) when the error says when to retry."""
    if error.retry_after_s is None:
        return {}
    return {RETRY_AFTER: str(max(1, math.ceil(error.retry_after_s)))}


def error_response(error: P2PError) -> web.Response:
    return web.Response(status=error.status, body=encode_error(error), content_type=JSON,
                        headers=error_headers(error))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_of(answer: ErrorBody, header: str | None) -> float | None:
    """An error answer's wait in seconds: the body's ``retry_after_ms`` when there is a sane
    one, else the ``Retry-After`` header."""
    precise = answer.retry_after_ms
    if precise is not None and math.isfinite(precise) and 0 <= precise <= MAX_RETRY_AFTER_MS:
        return precise / 1000
    return parse_retry_after(header)


def decode_error_body(body: bytes) -> ErrorBody | None:
    """The error body of an answer, or None when it is not one (HTML, plain text, garbage)."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def error_from_answer(status: int, body: bytes, retry_after: str | None = None) -> P2PError:
    """The typed error for a non-2xx answer: by its ``code``, else by its HTTP status."""
    answer = decode_error_body(body)
    if answer is None:
        answer = ErrorBody(error=body[:200].decode("utf-8", "replace").strip())
    retry_after_s = retry_after_of(answer, retry_after)
    message = answer.error or f"HTTP {status}"
    if answer.code:
        return error_from_code(answer.code, message, retry_after_s)
    return ERRORS_BY_STATUS.get(status, P2PError).from_wire(message, retry_after_s)


__all__ = ["ERRORS_BY_STATUS", "ErrorBody", "decode_error_body", "encode_error", "error_from_answer",
           "error_headers", "error_response", "parse_retry_after", "retry_after_of"]
