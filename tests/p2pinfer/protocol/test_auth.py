"""Peer signing: good messages pass; missing, malformed, unknown, bad, stale and replayed
ones are refused with the right reason, by the verifier and by the aiohttp middleware,
before any handler runs."""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import web

from p2pinfer.errors import Unauthorized
from p2pinfer.protocol.auth import (
    HEADER_NONCE,
    HEADER_RECIPIENT,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    PEER_ID,
    PeerRejected,
    RejectReason,
    Verifier,
    peer_auth_middleware,
    request_header,
    sign,
    sign_request,
)
from p2pinfer.testing import free_port

SECRET = b"cluster-secret"
HEADER = request_header("POST", "/v1/stage")
PAYLOAD = b"\x00\x01" * 2048
TO = "node-0"


def refused(verifier: Verifier, headers, header=HEADER, payload=PAYLOAD, now=1000.0) -> RejectReason:
    with pytest.raises(PeerRejected) as caught:
        verifier.verify(headers, header, payload, now)
    assert isinstance(caught.value, Unauthorized) and caught.value.status == 401
    return caught.value.reason


def test_good_message_is_accepted_and_names_its_sender():
    headers = sign(SECRET, "node-1", HEADER, PAYLOAD, now=1000.0, to=TO)
    assert Verifier(SECRET).verify(headers, HEADER, PAYLOAD, now=1005.0) == "node-1"


def test_each_refusal_has_its_reason():
    verifier = Verifier(SECRET, window_s=30)
    good = sign(SECRET, "node-1", HEADER, PAYLOAD, now=1000.0, to=TO)
    assert refused(verifier, {}) is RejectReason.MISSING
    assert refused(verifier, {k: v for k, v in good.items() if k != HEADER_SIGNATURE}) is RejectReason.MISSING
    assert refused(verifier, {**good, HEADER_TIMESTAMP: "soon"}) is RejectReason.MALFORMED
    assert refused(verifier, {**good, HEADER_NONCE: "xyz"}) is RejectReason.MALFORMED
    wrong_secret = sign(b"wrong-secret", "node-1", HEADER, PAYLOAD, 1000.0, to=TO)
    assert refused(verifier, wrong_secret) is RejectReason.BAD_SIGNATURE
    assert refused(verifier, good, payload=PAYLOAD + b"!") is RejectReason.BAD_SIGNATURE
    assert refused(verifier, good, header=request_header("POST", "/v1/gossip")) is RejectReason.BAD_SIGNATURE
    assert refused(verifier, {**good, "X-P2P-Node": "node-2"}) is RejectReason.BAD_SIGNATURE
    assert refused(verifier, good, now=1031.0) is RejectReason.STALE
    assert refused(verifier, good, now=969.0) is RejectReason.STALE
    assert verifier.verify(good, HEADER, PAYLOAD, 1000.0) == "node-1"
    assert refused(verifier, good, now=1001.0) is RejectReason.REPLAYED


def test_unknown_sender_with_per_node_secrets_or_an_allow_list():
    per_node = Verifier({"node-1": b"one", "node-2": b"two"})
    two = sign(b"two", "node-2", HEADER, PAYLOAD, 1000.0, to=TO)
    assert per_node.verify(two, HEADER, PAYLOAD, 1000.0) == "node-2"
    assert refused(per_node, sign(b"three", "node-3", HEADER, PAYLOAD, 1000.0, to=TO)) is RejectReason.UNKNOWN_SENDER
    allow = Verifier(SECRET, allowed_senders={"node-1"})
    assert refused(allow, sign(SECRET, "mallory", HEADER, PAYLOAD, 1000.0, to=TO)) is RejectReason.UNKNOWN_SENDER


def test_forged_messages_do_not_enter_the_nonce_cache():
    verifier = Verifier(SECRET)
    for _ in range(10):
        refused(verifier, sign(b"wrong", "node-1", HEADER, PAYLOAD, 1000.0, to=TO))
    assert len(verifier) == 0


def test_nonce_cache_is_bounded_and_eviction_never_reopens_a_replay():
    verifier = Verifier(SECRET, window_s=30, nonce_cache_size=4)
    sent = [sign(SECRET, "node-1", HEADER, b"m", now=1000.0 + index, to=TO) for index in range(10)]
    for headers in sent:
        verifier.verify(headers, HEADER, b"m", now=1010.0)
        assert len(verifier) <= 4
    for headers in sent[:6]:  # evicted: refused through the sender's watermark
        assert refused(verifier, headers, payload=b"m", now=1011.0) is RejectReason.STALE
    for headers in sent[6:]:
        assert refused(verifier, headers, payload=b"m", now=1011.0) is RejectReason.REPLAYED
    # Entries leave by time too: once outside the window a replay is stale anyway.
    late = sign(SECRET, "node-2", HEADER, b"m", now=2000.0, to=TO)
    verifier.verify(late, HEADER, b"m", now=2000.0)
    assert len(verifier) == 1


def test_sign_request_binds_the_route():
    headers = sign_request(SECRET, "node-1", "post", "/v1/gossip", b"body", 1000.0, to=TO)
    assert Verifier(SECRET).verify(headers, request_header("POST", "/v1/gossip"), b"body", 1000.0) == "node-1"


async def test_middleware_refuses_before_the_handler_and_reports_the_reason():
    calls, rejections = [], []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request[PEER_ID])
        return web.json_response({"ok": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[peer_auth_middleware(Verifier(SECRET), on_reject=rejections.append)])
    app.router.add_post("/v1/stage", handler)
    app.router.add_get("/v1/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/health") as response:
                assert response.status == 200  # unprotected paths are untouched
            async with session.post(f"{url}/v1/stage", data=PAYLOAD) as response:
                assert response.status == 401
                body = await response.json()
                assert body["code"] == "unauthorized" and body["reason"] == "missing"
            headers = sign_request(SECRET, "node-7", "POST", "/v1/stage", PAYLOAD, time.time(), to=TO)
            async with session.post(f"{url}/v1/stage", data=PAYLOAD, headers=headers) as response:
                assert response.status == 200
            async with session.post(f"{url}/v1/stage", data=PAYLOAD, headers=headers) as response:
                assert response.status == 401 and (await response.json())["reason"] == "replayed"
            bad = sign_request(b"not-the-secret", "node-7", "POST", "/v1/stage", PAYLOAD, time.time(), to=TO)
            async with session.post(f"{url}/v1/stage", data=PAYLOAD, headers=bad) as response:
                assert response.status == 401 and (await response.json())["reason"] == "bad_signature"
    finally:
        await runner.cleanup()
    assert calls == ["node-7"]
    assert rejections == [RejectReason.MISSING, RejectReason.REPLAYED, RejectReason.BAD_SIGNATURE]


def test_a_message_signed_for_one_node_is_refused_by_every_other():
    """Defect 5: the signature covers the recipient, so a message for A replayed to B fails
    (B's nonce cache never saw it, only the recipient check can stop it)."""
    for_a = sign_request(SECRET, "node-1", "POST", "/v1/emulation", b'{"temperature_c": 95}', 1000.0, to="node-a")
    node_a = Verifier(SECRET, recipients={"node-a", "127.0.0.1:7001"})
    node_b = Verifier(SECRET, recipients={"node-b", "127.0.0.1:7002"})
    header = request_header("POST", "/v1/emulation")
    assert refused(node_b, for_a, header=header, payload=b'{"temperature_c": 95}') is RejectReason.WRONG_RECIPIENT
    assert node_a.verify(for_a, header, b'{"temperature_c": 95}', 1000.0) == "node-1"
    # the recipient header cannot be rewritten: it is signed
    readdressed = {**for_a, HEADER_RECIPIENT: "node-b"}
    assert refused(node_b, readdressed, header=header, payload=b'{"temperature_c": 95}') is RejectReason.BAD_SIGNATURE
    # a seed known only by address: signed for host:port, accepted there
    by_address = sign_request(SECRET, "node-1", "POST", "/v1/gossip", b"x", 1000.0, to="127.0.0.1:7002")
    assert node_b.verify(by_address, request_header("POST", "/v1/gossip"), b"x", 1000.0) == "node-1"
    assert refused(node_a, {k: v for k, v in for_a.items() if k != HEADER_RECIPIENT}, header=header,
                   payload=b'{"temperature_c": 95}') is RejectReason.MISSING
