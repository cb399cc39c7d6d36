"""The HTTP binding: authenticated garbage gets 400, a route without the middleware fails
closed, and the client refuses replies that are not signed by the cluster."""

from __future__ import annotations

import time

import aiohttp
import msgspec
import pytest
from aiohttp import web

from p2pinfer.errors import NodeIdTaken, PeerUnavailable, Unauthorized
from p2pinfer.membership.gossip import GossipAgent
from p2pinfer.membership.http import GOSSIP_PATH, MSGPACK, HttpTransport, gossip_routes
from p2pinfer.membership.messages import Address, Exchange, ExchangeReply, encode_message
from p2pinfer.protocol.auth import Verifier, peer_auth_middleware, sign_reply, sign_request
from p2pinfer.testing import free_port
from p2pinfer.types import NodeId

SECRET = b"http-test-secret"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def unused_send(address, message, timeout_s, recipient=None):
    raise PeerUnavailable("not used")


async def test_route_answers_bad_bodies_with_400_and_fails_closed_without_middleware():
    agent = GossipAgent("node-a", "127.0.0.1:1", unused_send)
    protected = web.Application(middlewares=[peer_auth_middleware(Verifier(SECRET))])
    protected.add_routes(gossip_routes(agent, SECRET))
    bare = web.Application()
    bare.add_routes(gossip_routes(agent, SECRET))
    runner, address = await serve(protected)
    bare_runner, bare_address = await serve(bare)
    try:
        async with aiohttp.ClientSession() as session:
            async def post(target: str, body: bytes) -> tuple[int, dict]:
                headers = sign_request(SECRET, "node-b", "POST", GOSSIP_PATH, body, time.time(), to=target)
                async with session.post(f"http://{target}{GOSSIP_PATH}", data=body,
                                        headers={**headers, "Content-Type": MSGPACK}) as response:
                    return response.status, await response.json() if response.status != 200 else {}

            status, body = await post(address, b"\xc1garbage")
            assert status == 400 and body["code"] == "bad_header"
            future = msgspec.msgpack.encode({"kind": "exchange", "sender": "node-b", "version": 99})
            status, body = await post(address, future)
            assert status == 400 and body["code"] == "unsupported_version"
            status, body = await post(address, encode_message(ExchangeReply(sender=NodeId("node-b"))))
            assert status == 400 and body["code"] == "bad_header"
            status, body = await post(bare_address, encode_message(Exchange(sender=NodeId("node-b"))))
            assert status == 401 and body["reason"] == "missing"
        assert agent.member("node-b") is None
    finally:
        await runner.cleanup()
        await bare_runner.cleanup()


@pytest.mark.parametrize("reply_secret", [b"not-the-cluster-secret", None])
async def test_transport_refuses_unsigned_or_forged_replies(reply_secret):
    async def impostor(request: web.Request) -> web.Response:
        body = encode_message(ExchangeReply(sender=NodeId("node-x")))
        headers = {}
        if reply_secret is not None:
            headers = sign_reply(reply_secret, "node-x", request.headers["X-P2P-Nonce"], body, time.time(),
                                 to="node-a")
        return web.Response(body=body, content_type=MSGPACK, headers=headers)

    app = web.Application()
    app.router.add_post(GOSSIP_PATH, impostor)
    runner, address = await serve(app)
    transport = HttpTransport("node-a", SECRET)
    try:
        with pytest.raises(Unauthorized):
            await transport(Address(address), Exchange(sender=NodeId("node-a")), 2.0)
    finally:
        await transport.close()
        await runner.cleanup()


async def test_transport_maps_connection_failures_to_peer_unavailable():
    transport = HttpTransport("node-a", SECRET)
    try:
        with pytest.raises(PeerUnavailable):
            await transport(Address(f"127.0.0.1:{free_port()}"), Exchange(sender=NodeId("node-a")), 1.0)
    finally:
        await transport.close()


async def test_a_refused_id_is_a_signed_409_and_a_forged_one_is_not_believed():
    holder = GossipAgent("node-x", "127.0.0.1:1", unused_send)
    app = web.Application(middlewares=[peer_auth_middleware(Verifier(SECRET))])
    app.add_routes(gossip_routes(holder, SECRET))
    runner, address = await serve(app)

    async def forged(request: web.Request) -> web.Response:
        return web.json_response({"error": "taken", "code": "node_id_taken"}, status=409)

    fake = web.Application()
    fake.router.add_post(GOSSIP_PATH, forged)
    fake_runner, fake_address = await serve(fake)
    transport = HttpTransport("node-x", SECRET)  # a second process under the holder's id
    try:
        with pytest.raises(NodeIdTaken, match="node-x"):
            await transport(Address(address), Exchange(sender=NodeId("node-x")), 2.0)
        with pytest.raises(Unauthorized):
            await transport(Address(fake_address), Exchange(sender=NodeId("node-x")), 2.0)
    finally:
        await transport.close()
        await runner.cleanup()
        await fake_runner.cleanup()
