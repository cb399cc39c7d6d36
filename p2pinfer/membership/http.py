"""Gossip over HTTP: the signed client (``HttpTransport``) and the ``POST /v1/gossip`` route.

Requests are signed with ``auth.sign_request`` and checked by ``auth.peer_auth_middleware``
before the route runs; the route refuses any request the middleware did not authenticate
(so a node that forgot the middleware fails closed), and refuses a message whose ``sender``
field is not the authenticated peer. Replies are signed too, bound to the request's nonce,
and the transport verifies them: a forged or replayed reply cannot inject records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from p2pinfer.errors import NodeIdTaken, P2PError, PeerUnavailable, Unauthorized
from p2pinfer.membership.gossip import GossipAgent
from p2pinfer.membership.messages import Address, GossipMessage, decode_message, encode_message
from p2pinfer.protocol.auth import (
    HEADER_NONCE,
    PEER_ID,
    PeerRejected,
    RejectCallback,
    RejectReason,
    Verifier,
    sign_reply,
    sign_request,
)
from p2pinfer.protocol.error_body import error_from_answer, error_response
from p2pinfer.types import NodeId

GOSSIP_PATH = "/v1/gossip"
MSGPACK = "application/msgpack"


class HttpTransport:
    """The ``send`` of a node's ``GossipAgent``: signed ``POST /v1/gossip`` with aiohttp.

    Owns an aiohttp session created on first use (inside the running loop); call ``close``
    when the node shuts down.
    """

    def __init__(self, node_id: str, secret: bytes, *, clock: Callable[[], float] = time.time,
                 session: aiohttp.ClientSession | None = None, window_s: float = 30.0) -> None:
        if not secret:
            raise ValueError("gossip needs the cluster secret")
        self.node_id = node_id
        self._secret = secret
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._reply_verifier = Verifier(secret, window_s=window_s, recipients={node_id})

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._session

    async def __call__(self, address: Address, message: GossipMessage, timeout_s: float,
                       recipient: NodeId | None = None) -> GossipMessage:
        """Signed for ``recipient`` when the agent knows the node's id (then no other node
        accepts the message, whatever name its address goes by), else for ``address``."""
        body = encode_message(message)
        to = str(recipient) if recipient is not None else str(address)
        headers = sign_request(self._secret, self.node_id, "POST", GOSSIP_PATH, body, self._clock(), to=to)
        headers["Content-Type"] = MSGPACK
        try:
            async with self._client().post(f"http://{address}{GOSSIP_PATH}", data=body, headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                data = await response.read()
                status = response.status
                reply_headers = response.headers
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise PeerUnavailable(f"gossip to {address} failed: {error or type(error).__name__}") from error
        if status == 401:
            raise Unauthorized(f"{address} refused this node's signature")
        if status == NodeIdTaken.status:
            # a refusal of this node's id is signed like a reply: a forged one cannot keep a node out
            self._reply_verifier.verify_reply(reply_headers, headers[HEADER_NONCE], data, self._clock())
            raise error_from_answer(status, data)
        if status != 200:
            raise PeerUnavailable(f"{address} answered gossip with HTTP {status}")
        sender = self._reply_verifier.verify_reply(reply_headers, headers[HEADER_NONCE], data, self._clock())
        reply = decode_message(data)
        if reply.sender != sender:
            raise Unauthorized(f"reply signed by {sender!r} claims to come from {reply.sender!r}")
        return reply

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


def gossip_routes(agent: GossipAgent, secret: bytes, *, clock: Callable[[], float] = time.time,
                  on_reject: RejectCallback | None = None) -> list[web.RouteDef]:
    """``POST /v1/gossip`` for ``agent``; add to an app that runs ``peer_auth_middleware``
    (pass the same ``on_reject`` to count the refusals this route adds)."""

    def refuse(error: PeerRejected) -> web.Response:
        if on_reject is not None:
            on_reject(error.reason)
        return error_response(error)

    async def gossip(request: web.Request) -> web.Response:
        sender = request.get(PEER_ID)
        if sender is None:
            return refuse(PeerRejected(RejectReason.MISSING, "gossip requires peer authentication"))
        body = await request.read()
        agent.counters["received_bytes"] += len(body)  # every exchange is counted once, where it is served
        try:
            message = decode_message(body)
        except P2PError as error:
            return error_response(error)
        if message.sender != sender:
            return refuse(PeerRejected(RejectReason.SENDER_MISMATCH,
                                       f"message claims sender {message.sender!r} but is signed by {sender!r}"))
        nonce = request.headers[HEADER_NONCE]
        try:
            reply = await agent.handle(message)
        except P2PError as error:
            response = error_response(error)
            if isinstance(error, NodeIdTaken) and isinstance(response.body, bytes):
                response.headers.update(sign_reply(secret, agent.node_id, nonce, response.body, clock(), to=sender))
            return response
        data = encode_message(reply)
        agent.counters["replied_bytes"] += len(data)
        headers = sign_reply(secret, agent.node_id, nonce, data, clock(), to=sender)
        return web.Response(body=data, content_type=MSGPACK, headers=headers)

    return [web.post(GOSSIP_PATH, gossip)]

