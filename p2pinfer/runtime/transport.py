"""Signed peer HTTP for split execution, with the emulated link applied and every round trip
measured.

``PeerTransport.post_stage`` sends one ``POST /v1/stage`` frame and returns the reply frame.
Around the real HTTP exchange it does three things:

- **Signing.** With a cluster secret, the request carries ``p2pinfer.auth``'s HMAC headers
  and the reply must carry a signature bound to the request's nonce (``auth.reply_header``),
  so a forged or replayed reply cannot inject a result. Error replies (4xx/5xx) are not
  signed by the server; they can only make the sender fail over, never give it a result.
- **Link emulation** (``link.LinkMatrix``, optional). The bytes really move over loopback;
  the clock is stretched to what the emulated link would need. The request direction is
  waited out *before* the real send (the activation is "on the wire": the receiver must not
  start before it would have arrived, or its budget accounting would be wrong); the reply
  direction after the real exchange, minus the real loopback time both ways (so loopback is
  not counted twice). An emulated loss drops the message: the sender notices after a
  retransmission timeout and sends again (a fresh signature; a lost *reply* means the peer
  did the work, and its idempotency cache answers the resend without running it again).
  After ``max_transmissions`` losses the hop fails as a timeout (``PeerTimeout``).
- **Measurement.** The round trip minus the time the peer reports it spent handling the
  request (``handled_ms``: compute, queueing and everything downstream) is the time the
  bytes spent on the link; it feeds ``LinkLatencyModel.observe_transfer`` with the request's
  size, so the planner's link estimates follow the real (or emulated) link.

Failures are typed: a peer that refuses or resets the connection, does not answer in time,
answers 5xx without a typed error, or sends a malformed reply raises ``PeerUnreachable``
(``PeerTimeout`` for time-outs), which the stage service treats as "suspect this peer". A
typed error reply (``{"error", "code"}``) is raised as that error class
(``errors.error_from_code``; planner errors such as ``no_feasible_plan`` included).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import aiohttp
import msgspec
import numpy as np

from p2pinfer.emulation.link import EmulatedLink, LinkMatrix
from p2pinfer.errors import (
    P2PError,
    PeerUnavailable,
    Unauthorized,
    error_from_code,
)
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView
from p2pinfer.protocol.auth import HEADER_NONCE, PeerRejected, Verifier, reply_header, sign_request
from p2pinfer.protocol.error_body import decode_error_body, retry_after_of
from p2pinfer.protocol.stage_messages import ACTIVATION, STAGE_PATH, StageHeader, StageReplyHeader
from p2pinfer.protocol.wire import CONTENT_TYPE, decode_frame, encode_frame_bytes
from p2pinfer.types import NodeId

ReplyT = TypeVar("ReplyT", bound=msgspec.Struct)


class PeerUnreachable(PeerUnavailable):
    """This peer itself failed the hop: refused or reset the connection, answered 5xx without a
    typed error, or sent a malformed or unsigned reply. The sender suspects it."""


class PeerTimeout(PeerUnreachable, TimeoutError):
    """No reply from the peer within the hop's time-out (emulated losses included)."""


def peer_error(code: str, message: str, retry_after_s: float | None = None) -> P2PError:
    """The typed error a peer answered with (every wire code is registered in ``errors``)."""
    return error_from_code(code, message, retry_after_s)


@dataclass(frozen=True)
class PeerReply(Generic[ReplyT]):
    """A peer's reply frame and what the exchange cost.

    ``round_trip_ms``: from the first byte sent (emulated link included) to the reply in
    hand. ``transfer_ms``: the part of it the peer did not account for as handling time,
    i.e. both directions of the link. ``transmissions``: 1 unless emulated losses forced
    resends.
    """

    header: ReplyT
    tensors: dict[str, np.ndarray]
    round_trip_ms: float
    transfer_ms: float
    request_bytes: int
    reply_bytes: int
    transmissions: int = 1


class _Lost(Exception):
    """One emulated message loss (internal: the exchange is retried)."""


@dataclass
class _ExchangeTrace:
    """Set by aiohttp's tracing while one request is sent: whether it opened a new connection.

    Why: an exchange that connects pays the TCP handshake (one more round trip on a real link)
    and, the first time, both ends' first use of their code paths: on loopback the first probe
    of a new peer took 172 ms and the next 11, for a 1 ms link, and the link model took it for
    the RTT. Such an exchange is not a sample of the link."""

    new_connection: bool = False


async def _on_connection_created(session: aiohttp.ClientSession, context: SimpleNamespace,
                                 params: aiohttp.TraceConnectionCreateEndParams) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, _ExchangeTrace):
        trace.new_connection = True


class PeerTransport:
    """Signed ``POST /v1/stage`` to peers, over the emulated link when one is configured.

    ``secret`` None sends unsigned messages and accepts unsigned replies (an open cluster,
    tests); otherwise requests are signed and replies must be. ``link_matrix`` None means the
    real network as it is. ``link_model`` (default: a fresh one) learns from every exchange.
    ``session`` is created on first use (inside the running loop) unless given; ``close``
    closes only a session the transport created.
    """

    def __init__(self, node_id: NodeId | str, secret: bytes | str | None = None,
                 link_matrix: LinkMatrix | None = None, link_model: LinkLatencyModel | None = None,
                 session: aiohttp.ClientSession | None = None, *, clock: Callable[[], float] = time.time,
                 max_transmissions: int = 2, min_retransmission_s: float = 0.2, window_s: float = 30.0,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if max_transmissions < 1:
            raise ValueError("max_transmissions must be >= 1")
        self.node_id = NodeId(node_id)
        self._secret = secret.encode() if isinstance(secret, str) else secret
        if self._secret is not None and not self._secret:
            raise ValueError("an empty secret: pass None for an unsigned cluster")
        self.link_matrix = link_matrix
        self.link_model = link_model if link_model is not None else LinkLatencyModel()
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._sleep = sleep
        self.max_transmissions = max_transmissions
        self.min_retransmission_s = min_retransmission_s
        self._reply_verifier = (Verifier(self._secret, window_s=window_s, recipients={self.node_id})
                                if self._secret else None)
        self.exchanges = 0
        self.losses = 0

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            tracing = aiohttp.TraceConfig()
            tracing.on_connection_create_end.append(_on_connection_created)
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), trace_configs=[tracing])
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    # ---- the stage protocol -----------------------------------------------------------
    async def post_stage(self, peer: PeerView, header: StageHeader, tensors: Mapping[str, Any] | None = None, *,
                         timeout_s: float = 30.0) -> PeerReply[StageReplyHeader]:
        """Send one stage frame to ``peer`` and return its reply (see the module docstring)."""

        return await self.post_frame(peer, STAGE_PATH, header, tensors, StageReplyHeader, timeout_s=timeout_s)

    async def probe(self, peer: PeerView, *, timeout_s: float = 5.0, payload_bytes: int = 0) -> float:
        """Round-trip time (ms) of an empty stage (a probe: the peer answers at once).

        Feeds the link model's RTT, which bandwidth estimates from large transfers need;
        in a node, gossip probes do the same. With ``payload_bytes`` the probe carries that
        many bytes (ignored by the peer), so it measures bandwidth too.
        """

        header = StageHeader(request_id="probe", family="", variant="", exit_block=0, segments=[], budget_ms=1.0,
                             origin=self.node_id)
        payload = {ACTIVATION: np.zeros(payload_bytes, dtype=np.uint8)} if payload_bytes > 0 else None
        reply = await self.post_stage(peer, header, payload, timeout_s=timeout_s)
        return reply.round_trip_ms

    # ---- generic signed frame exchange ------------------------------------------------
    async def post_frame(self, peer: PeerView, path: str, header: msgspec.Struct, tensors: Mapping[str, Any] | None,
                         reply_type: type[ReplyT], *, timeout_s: float) -> PeerReply[ReplyT]:
        """``POST path`` with a binary frame; the reply must be a frame of ``reply_type``."""
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise PeerTimeout(f"no time left for a hop to {peer.node_id}")
        body = encode_frame_bytes(header, tensors)
        url = peer.url.rstrip("/") + path
        try:
            return await asyncio.wait_for(self._exchange(peer, url, path, body, reply_type), timeout_s)
        except P2PError:  # DeadlineExceeded is a TimeoutError too: a typed answer, not a time-out
            raise
        except asyncio.TimeoutError:
            self.link_model.observe_timeout(self.node_id, peer.node_id, len(body), timeout_s)  # a bound is a sample
            raise PeerTimeout(f"no reply from {peer.node_id} ({url}) within {timeout_s * 1000:.0f} ms") from None

    def _links(self, peer: PeerView) -> tuple[EmulatedLink | None, EmulatedLink | None]:
        if self.link_matrix is None or peer.node_id == self.node_id:
            return None, None
        return self.link_matrix.link(self.node_id, peer.node_id), self.link_matrix.link(peer.node_id, self.node_id)

    async def _exchange(self, peer: PeerView, url: str, path: str, body: bytes,
                        reply_type: type[ReplyT]) -> PeerReply[ReplyT]:
        outbound, inbound = self._links(peer)
        started = time.monotonic()
        for transmission in range(1, self.max_transmissions + 1):
            try:
                trace = _ExchangeTrace()
                reply, tensors, reply_bytes, handled_s = await self._transmit(peer, url, path, body, reply_type,
                                                                             outbound, inbound, trace)
            except _Lost:
                self.losses += 1
                continue
            round_trip_s = time.monotonic() - started
            # a resent exchange's time says nothing clean about the link, nor one that connected (_ExchangeTrace)
            if transmission == 1 and not trace.new_connection:
                transfer_s = max(round_trip_s - handled_s, 0.0)
                self.link_model.observe_transfer(self.node_id, peer.node_id, len(body), transfer_s)
            else:
                transfer_s = round_trip_s - handled_s
            self.exchanges += 1
            return PeerReply(header=reply, tensors=tensors, round_trip_ms=round_trip_s * 1000,
                             transfer_ms=max(transfer_s, 0.0) * 1000, request_bytes=len(body),
                             reply_bytes=reply_bytes, transmissions=transmission)
        raise PeerTimeout(f"hop to {peer.node_id}: {self.max_transmissions} transmissions lost on the emulated link")

    def _retransmission_timeout_s(self, outbound: EmulatedLink | None, inbound: EmulatedLink | None,
                                  nbytes: int) -> float:
        """How long a sender waits for a lost message before sending again: twice the
        expected exchange on the link, at least ``min_retransmission_s`` (TCP's floor idea)."""
        expected = 0.0
        if outbound is not None:
            expected += outbound.rtt_ms / 1000 + outbound.serialization_s(nbytes, outbound.now_s())
        if inbound is not None:
            expected += inbound.rtt_ms / 1000
        return max(2 * expected, self.min_retransmission_s)

    async def _transmit(self, peer: PeerView, url: str, path: str, body: bytes, reply_type: type[ReplyT],
                        outbound: EmulatedLink | None, inbound: EmulatedLink | None, trace: _ExchangeTrace
                        ) -> tuple[ReplyT, dict[str, np.ndarray], int, float]:
        sent_at = time.monotonic()
        if outbound is not None:
            delay = outbound.delay_s(len(body))
            if outbound.drops():
                await self._sleep(self._retransmission_timeout_s(outbound, inbound, len(body)))
                raise _Lost
            await self._sleep(delay)
        headers = {"Content-Type": CONTENT_TYPE}
        if self._secret is not None:
            headers.update(sign_request(self._secret, self.node_id, "POST", path, body, self._clock(),
                                        to=peer.node_id))
        real_started = time.monotonic()
        try:
            async with self._client().post(url, data=body, headers=headers, trace_request_ctx=trace) as response:
                data = await response.read()
                status = response.status
                reply_headers = response.headers
                content_type = response.content_type
        except aiohttp.ClientConnectorError as error:
            raise PeerUnreachable(f"cannot connect to {peer.node_id} ({url}): {error.os_error or error}") from None
        except (aiohttp.ClientError, OSError) as error:
            reason = str(error) or type(error).__name__
            raise PeerUnreachable(f"connection to {peer.node_id} ({url}) failed: {reason}") from None
        real_s = time.monotonic() - real_started

        reply: ReplyT | None = None
        tensors: dict[str, np.ndarray] = {}
        failure: P2PError | None = None
        handled_s = 0.0
        if status == 200:
            try:
                reply, tensors = self._decode_reply(peer, data, reply_headers, content_type, headers, reply_type)
                handled_s = max(float(getattr(reply, "handled_ms", 0.0)), 0.0) / 1000
            except P2PError as error:
                failure = error
        else:
            failure = self._error_reply(peer, status, data, content_type, reply_headers)

        if inbound is not None:
            # Pad the reply direction to the emulated time, minus the real loopback time of
            # both directions (which the request direction's wait did not include).
            real_transfer_s = max(real_s - handled_s, 0.0)
            await self._sleep(max(inbound.delay_s(len(data)) - real_transfer_s, 0.0))
            if inbound.drops():
                elapsed = time.monotonic() - sent_at
                await self._sleep(max(self._retransmission_timeout_s(outbound, inbound, len(body)) - elapsed, 0.0))
                raise _Lost
        if failure is not None:
            raise failure
        assert reply is not None
        return reply, tensors, len(data), handled_s

    def _decode_reply(self, peer: PeerView, data: bytes, reply_headers: Mapping[str, str], content_type: str,
                      request_headers: Mapping[str, str], reply_type: type[ReplyT]
                      ) -> tuple[ReplyT, dict[str, np.ndarray]]:
        if self._reply_verifier is not None:
            try:
                sender = self._reply_verifier.verify(reply_headers, reply_header(request_headers[HEADER_NONCE]), data,
                                                     self._clock())
            except PeerRejected as error:
                raise PeerUnreachable(f"reply from {peer.node_id} refused: {error.message}") from None
            if sender != peer.node_id:
                raise PeerUnreachable(f"reply from {peer.node_id} is signed by {sender!r}")
        if content_type != CONTENT_TYPE:
            raise PeerUnreachable(f"{peer.node_id} answered {content_type!r}, expected {CONTENT_TYPE}")
        try:
            return decode_frame(data, reply_type)
        except P2PError as error:
            raise PeerUnreachable(f"malformed reply from {peer.node_id}: {error.message}") from None

    @staticmethod
    def _error_reply(peer: PeerView, status: int, data: bytes, content_type: str,
                     reply_headers: Mapping[str, str]) -> P2PError:
        body = decode_error_body(data) if content_type == "application/json" else None
        if body is None or body.code is None:
            if status == 401:
                return Unauthorized(f"{peer.node_id} refused this node's signature")
            text = data[:200].decode("utf-8", "replace")
            return PeerUnreachable(f"{peer.node_id} answered HTTP {status}: {text}")
        wait_s = retry_after_of(body, reply_headers.get("Retry-After"))
        error = peer_error(body.code, f"{peer.node_id}: {body.error}", wait_s)
        if type(error) is P2PError and status >= 500:
            return PeerUnreachable(f"{peer.node_id} answered HTTP {status}: {body.error}")
        return error


__all__ = ["PeerReply", "PeerTimeout", "PeerTransport", "PeerUnreachable", "peer_error"]
