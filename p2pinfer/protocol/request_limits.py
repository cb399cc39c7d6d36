"""Limits on every field of an inference request, checked at the edge of every route.

Why one place: a request reaches the controller from a JSON body, a binary frame header or
Open Inference parameters, and each decoder builds an ``InferRequest`` its own way (building
a Struct in code skips msgspec's constraints). ``check_request`` runs on the result, so the
three routes refuse the same things with the same 4xx, and nothing the controller or the
reward sees is NaN, negative, out of range, or an unbounded client-chosen string.

``check_json_depth`` refuses deeply nested JSON before a recursive decoder sees it (msgspec
raises ``RecursionError`` near 1,000 levels); brackets inside strings are not counted, so a
string of ``]`` cannot hide a deep array. Each decoder also turns a ``RecursionError`` into
``NestedTooDeeply`` (400): the second line, for bodies no depth check saw.
"""

from __future__ import annotations

import math
import re

import numpy as np

from p2pinfer.errors import BadRequest, NestedTooDeeply
from p2pinfer.protocol.schema import InferRequest
from selector.qoe import QoEWeights

MAX_ID_LENGTH = 128
"""Longest family, variant, user or request id (bytes; the charset is ASCII)."""

ID_PUNCTUATION = "._:@/+="  # and "-", kept last in the character class below
ID_CHARACTERS = f"A-Za-z0-9{ID_PUNCTUATION}-"
"""What an id may hold, as a regular-expression character class: letters, digits and
``._:@/+=-`` (no spaces, quotes or brackets)."""
ID_PATTERN = re.compile(f"[A-Za-z0-9][{ID_CHARACTERS}]*")
"""An id: a letter or digit, then ``ID_CHARACTERS``."""

MAX_EXIT_BLOCK = 1024
MAX_PLAN_SEGMENTS = 64
MAX_JSON_DEPTH = 64
"""A valid request nests at most ~40 levels (object, inputs, then up to 32 tensor axes)."""

_BRACKET_STEPS = np.zeros(256, dtype=np.int8)
"""Per byte value, how it moves the nesting depth: +1 for ``[``/``{``, -1 for ``]``/``}``."""
_BRACKET_STEPS[[ord("["), ord("{")]] = 1
_BRACKET_STEPS[[ord("]"), ord("}")]] = -1


def check_id(value: str | None, field: str) -> None:
    """An id is 1..128 characters of ``ID_PATTERN`` (None means "not given")."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"{field} is {len(value)} characters long, over the limit of {MAX_ID_LENGTH}")
    if ID_PATTERN.fullmatch(value) is None:
        raise BadRequest(f"{field} {value[:40]!r} has characters outside [{ID_CHARACTERS}]")


def check_weights(weights: QoEWeights) -> None:
    """QoE weights are finite, non-negative and not all zero (``QoEWeights`` checks this when
    it is built; a decoder that bypassed it is caught here)."""
    values = (weights.accuracy, weights.latency, weights.energy)
    if not all(isinstance(value, int | float) and math.isfinite(value) and value >= 0 for value in values):
        raise BadRequest(f"QoE weights must be finite and >= 0, got {values}")
    if sum(values) <= 0:
        raise BadRequest("at least one QoE weight must be > 0")


_KNOWN_GOOD_IDS: set[str] = set()
"""Family, user and variant names already checked: a handful, sent on every request (request
ids are new each time and are checked each time)."""
MAX_KNOWN_GOOD_IDS = 4096


def _check_recurring_id(value: str | None, field: str) -> None:
    if value is None or value in _KNOWN_GOOD_IDS:
        return
    check_id(value, field)
    if len(_KNOWN_GOOD_IDS) < MAX_KNOWN_GOOD_IDS:  # client-chosen: bounded
        _KNOWN_GOOD_IDS.add(value)


def check_request(request: InferRequest) -> None:
    """Refuse (``BadRequest``, 400) any field of ``request`` out of its range."""
    _check_recurring_id(request.family, "family")
    _check_recurring_id(request.user, "user")
    _check_recurring_id(request.variant, "variant")
    check_id(request.request_id, "request_id")
    check_weights(request.qoe)
    if request.exit is not None and not 0 <= request.exit <= MAX_EXIT_BLOCK:
        raise BadRequest(f"exit must be a block index in [0, {MAX_EXIT_BLOCK}], got {request.exit}")
    threshold = request.confidence_threshold
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise BadRequest(f"confidence_threshold must be in [0, 1], got {threshold}")
    if request.plan is not None:
        if not 0 < len(request.plan) <= MAX_PLAN_SEGMENTS:
            raise BadRequest(f"plan must have 1..{MAX_PLAN_SEGMENTS} segments, got {len(request.plan)}")
        for segment in request.plan:
            check_id(segment.node, "plan node")
            check_id(segment.unit, "plan unit")
            if not 0 <= segment.first_block <= segment.last_block <= MAX_EXIT_BLOCK:
                raise BadRequest(f"plan segment blocks [{segment.first_block}, {segment.last_block}] are out of "
                                 f"order or range")


def _string_quotes(data: np.ndarray) -> np.ndarray:
    r"""Positions of the quotes that open or close a JSON string: every ``"`` except those
    escaped by an odd run of backslashes just before them (``\\"`` ends a string, ``\"`` does
    not). Works on the sparse positions of quotes and backslashes: linear, no per-byte Python."""
    quotes = np.flatnonzero(data == ord('"'))
    backslashes = np.flatnonzero(data == ord("\\"))
    if quotes.size == 0 or backslashes.size == 0:
        return quotes
    run_starts = np.empty(backslashes.size, dtype=bool)  # each run of consecutive backslashes
    run_starts[0] = True
    np.not_equal(np.diff(backslashes), 1, out=run_starts[1:])
    first = backslashes[run_starts]
    last = backslashes[np.append(run_starts[1:], True)]
    run = np.minimum(np.searchsorted(last, quotes - 1), last.size - 1)  # the run that may end just before
    escaped = (last[run] == quotes - 1) & ((last[run] - first[run]) % 2 == 0)  # odd length
    unescaped: np.ndarray = quotes[~escaped]
    return unescaped


def json_depth(body: bytes | bytearray | memoryview) -> int:
    """The deepest nesting of ``[``/``{`` in ``body``, brackets inside strings not counted
    (``{"user": "]]]...", "data": [[[...]]]}`` must not lower the count). Exact for valid JSON;
    for invalid JSON at least the depth a parser reaches before the first error (it reads the
    same strings up to there, and what follows an unclosed quote is a string to it too)."""
    data = np.frombuffer(body, dtype=np.uint8)
    if data.size == 0:
        return 0
    brackets = np.flatnonzero(_BRACKET_STEPS[data])
    if brackets.size == 0:
        return 0
    quotes = _string_quotes(data)
    if quotes.size:
        outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of quotes before it
        brackets = brackets[outside]
    return int(np.cumsum(_BRACKET_STEPS[data[brackets]], dtype=np.int64).max(initial=0))


def check_json_depth(body: bytes | bytearray | memoryview, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` before a parser recurses into it. A body with at
    most ``limit`` opening brackets cannot be deeper: two ``bytes.count`` calls settle the usual
    request (a v2 header has a handful) without the per-byte scan (~85 us a request for a v2
    header through ``np.isin``, of the v2 route's ~500 us per request; session 19)."""
    data = bytes(body) if isinstance(body, memoryview) else body
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    depth = json_depth(body)
    if depth > limit:
        raise NestedTooDeeply(f"JSON nested {depth} levels deep, over the limit of {limit}")


__all__ = ["ID_CHARACTERS", "ID_PATTERN", "ID_PUNCTUATION",
           "MAX_EXIT_BLOCK", "MAX_ID_LENGTH", "MAX_JSON_DEPTH", "check_id", "check_json_depth",
           "check_request", "check_weights", "json_depth"]
