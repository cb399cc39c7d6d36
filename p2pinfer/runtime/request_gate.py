"""The gate every client request passes, on the native and the Open Inference routes alike.

Why one gate: drain accounting (a draining node answers 503 and waits for the requests it
accepted), body and deadline limits, and the outcome metrics must be the same whichever
protocol a client speaks; two copies drift apart.
"""

from __future__ import annotations

import asyncio
import math

from aiohttp import web

from p2pinfer.errors import BadDeadline, BodyTimeout, DeadlineExceeded, Draining, P2PError, PayloadTooLarge
from p2pinfer.runtime.metrics import NodeMetrics

DRAIN_RETRY_AFTER_S = 1.0
BODY_READ_TIMEOUT_S = 30.0
"""Longest a client may take to send its body (a stalled upload is answered 408)."""


class Admission:
    """The context of one admitted request: in flight from ``__enter__`` to ``__exit__``. A
    plain object, not a ``contextlib.contextmanager`` generator: it is entered on every request,
    and a generator's setup costs five times its two counter updates."""

    __slots__ = ("_gate",)

    def __init__(self, gate: RequestGate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        self._gate._enter()

    def __exit__(self, *exc_info: object) -> None:
        self._gate._leave()


class RequestGate:
    """Drain state, in-flight count, body and deadline limits, and request outcome metrics."""

    def __init__(self, metrics: NodeMetrics, max_body_bytes: int, max_deadline_ms: float,
                 body_timeout_s: float = BODY_READ_TIMEOUT_S) -> None:
        self.metrics = metrics
        self._answered = metrics.requests.labels(outcome="ok")  # per request: the labelled child once
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_deadline_ms = max_deadline_ms
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.in_flight.set_function(lambda: self.in_flight)  # read when scraped, not set per request
        self._admission = Admission(self)

    def admitted(self) -> Admission:
        """Count one client request in flight (``with gate.admitted(): ...``); refuse it (503)
        while draining."""
        if self.draining:
            raise Draining("node is draining: retry on another node", retry_after_s=DRAIN_RETRY_AFTER_S)
        return self._admission

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait up to ``timeout_s`` for the accepted ones; True when idle."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise PayloadTooLarge(f"body of {request.content_length} bytes is over the node's limit of "
                                  f"{self.max_body_bytes} bytes")
        if request.content.is_eof():  # the whole body came with the headers: no timer, no extra task
            return await request.read()
        try:
            return await asyncio.wait_for(request.read(), timeout=self.body_timeout_s)
        except asyncio.TimeoutError:
            raise BodyTimeout(f"the body did not arrive within {self.body_timeout_s:g} s") from None

    def check_deadline(self, deadline_ms: float) -> None:
        if not math.isfinite(deadline_ms) or deadline_ms <= 0:
            raise BadDeadline(f"deadline_ms must be a positive finite number of milliseconds, got {deadline_ms}")
        if deadline_ms > self.max_deadline_ms:
            raise BadDeadline(f"deadline_ms {deadline_ms} is over the node's maximum of "
                              f"{self.max_deadline_ms} ms")

    def answered(self, latency_ms: float, deadline_met: bool, count: int = 1) -> None:
        """Count answered requests (``count`` rows of one batch share the latency)."""
        self._answered.inc(count)
        for _ in range(count):
            self.metrics.latency.observe(latency_ms / 1000)
        if not deadline_met:
            self.metrics.deadline_misses.inc(count)

    def failed(self, error: P2PError) -> None:
        """Count a request the controller could not answer (deadline, overload, no plan ...)."""
        self.metrics.requests.labels(outcome=error.code).inc()
        if isinstance(error, DeadlineExceeded):
            self.metrics.deadline_misses.inc()


__all__ = ["RequestGate"]
