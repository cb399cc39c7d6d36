"""PeerTransport over emulated links: the measured estimate converges to the emulated link,
emulated losses are retransmitted (a lost reply is answered from the idempotency cache)."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from aiohttp import web

from p2pinfer.emulation.link import EmulatedLink, LinkMatrix
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView, StaticDirectory
from p2pinfer.protocol.wire import CONTENT_TYPE, decode_frame, encode_frame_bytes
from p2pinfer.runtime.link_prober import run_link_prober, unmeasured_peers
from p2pinfer.runtime.stage import STAGE_PATH, StageHeader, StageReplyHeader
from p2pinfer.runtime.transport import PeerTimeout, PeerTransport
from p2pinfer.testing import ServiceNodeSpec, async_wait_until, segments_of, start_cluster
from p2pinfer.types import NodeId
from tests.p2pinfer.collaboration_support import CNN, sample


async def sink_server() -> tuple[web.AppRunner, str]:
    """A peer that reads the frame and answers at once (no compute): the link alone is measured."""

    async def stage(request: web.Request) -> web.Response:
        received = time.monotonic()
        decode_frame(await request.read(), StageHeader)
        reply = StageReplyHeader(exit_block=0, handled_ms=(time.monotonic() - received) * 1000)
        return web.Response(body=encode_frame_bytes(reply, {"logits": torch.zeros(1, 10)}), content_type=CONTENT_TYPE)

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post(STAGE_PATH, stage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    return runner, f"http://127.0.0.1:{port}"


def header(request_id: str) -> StageHeader:
    return StageHeader(request_id=request_id, family="digits-cnn", variant=CNN, exit_block=0,
                       segments=segments_of(("sink", 0, 0)), budget_ms=10_000.0, origin="a", hop=1)


async def test_measured_link_converges_to_the_emulated_20_mbit_link():
    runner, url = await sink_server()
    model = LinkLatencyModel()
    matrix = LinkMatrix(links={(NodeId("a"), NodeId("sink")): EmulatedLink(bandwidth_mbps=20.0, rtt_ms=30.0)})
    transport = PeerTransport("a", None, matrix, model)
    peer = PeerView(node_id=NodeId("sink"), url=url)
    try:
        for _ in range(5):  # small messages: the RTT
            await transport.probe(peer)
        payload = torch.rand(32 * 1024)  # 128 KiB activations: the bandwidth
        for index in range(12):
            reply = await transport.post_stage(peer, header(f"t{index}"), {"activation": payload})
    finally:
        await transport.close()
        await runner.cleanup()
    estimate = model.estimate(NodeId("a"), NodeId("sink"))
    assert estimate.bandwidth_mbps == pytest.approx(20.0, rel=0.2)
    # The RTT also holds the real cost of one HTTP exchange on loopback (a few ms on an idle
    # machine, more on a loaded one): never below the emulated 30 ms.
    assert 30.0 <= estimate.rtt_ms <= 60.0
    # The last exchange: 128 KiB at 20 Mbit/s is 52 ms, plus the 30 ms round trip (and loopback).
    assert 52.4 + 30.0 <= reply.transfer_ms <= 1.3 * (52.4 + 30.0)


async def test_an_exchange_that_opened_a_connection_is_not_a_sample_of_the_link():
    """The first probe of a new peer pays the connection and both ends' first use of their code
    (172 ms on loopback for a 1 ms link, then 11 ms): the link model took it for the RTT, and the
    planner priced every plan through that peer with it. Exchanges that connect are not samples."""
    runner, url = await sink_server()
    model = LinkLatencyModel()
    transport = PeerTransport("a", None, None, model)
    peer = PeerView(node_id=NodeId("sink"), url=url)
    a, sink = NodeId("a"), NodeId("sink")
    try:
        await transport.probe(peer)  # connects
        assert model.age_s(a, sink) == float("inf")
        await transport.probe(peer)  # the same connection: a sample
        assert model.age_s(a, sink) < 5.0
        await transport.close()  # the next exchange connects again
        model.observe_rtt(a, sink, 0.001)
        before = model.estimate(a, sink).rtt_ms
        await transport.probe(peer)
        assert model.estimate(a, sink).rtt_ms == before
    finally:
        await transport.close()
        await runner.cleanup()
    assert transport.exchanges == 3


async def test_an_always_lossy_link_fails_as_a_timeout_after_the_resend():
    runner, url = await sink_server()
    matrix = LinkMatrix(links={(NodeId("a"), NodeId("sink")): EmulatedLink(rtt_ms=2.0, loss=1.0)})
    transport = PeerTransport("a", None, matrix, min_retransmission_s=0.05)
    try:
        with pytest.raises(PeerTimeout, match="2 transmissions lost"):
            await transport.post_stage(PeerView(node_id=NodeId("sink"), url=url), header("lost"), None)
    finally:
        await transport.close()
        await runner.cleanup()
    assert transport.losses == 2


async def test_a_lost_reply_is_resent_and_answered_from_the_cache(manifest):
    variant = manifest.variant(CNN)
    matrix = LinkMatrix(links={(NodeId("a"), NodeId("b")): EmulatedLink(rtt_ms=2.0),
                               (NodeId("b"), NodeId("a")): EmulatedLink(rtt_ms=2.0, loss=0.5, seed=3)})
    cluster = await start_cluster([ServiceNodeSpec("a", {variant.name: (0, 2)}),
                                   ServiceNodeSpec("b", {variant.name: (0, 2)})],
                                  manifest=manifest, link_matrix=matrix)
    cluster["a"].transport.min_retransmission_s = 0.02
    cluster["a"].transport.max_transmissions = 8
    try:
        view = cluster["a"].directory.peer(NodeId("b"))
        for index in range(6):
            stage = StageHeader(request_id=f"lossy-{index}", family=variant.family, variant=variant.name,
                                exit_block=2, segments=segments_of(("b", 0, 2)), budget_ms=10_000.0, origin="a",
                                hop=1)
            reply = await cluster["a"].transport.post_stage(view, stage, {"activation": sample(variant, index)})
            assert reply.header.exit_block == 2
    finally:
        await cluster.close()
    assert cluster["a"].transport.losses >= 1  # seed 3 loses some replies of six
    assert sorted(cluster["b"].jobs) == sorted((f"lossy-{index}", 0, 2) for index in range(6))  # each ran once
    assert cluster["b"].service.cache.hits == cluster["a"].transport.losses


async def test_the_prober_measures_a_new_peers_link_at_once_not_after_a_period():
    """A peer never measured is probed on sight: with a stale-link period of a minute, the
    10 Mbit/s, 20 ms link is known well before that — its RTT too (measured first: counted as
    serialization, an unknown RTT halved the bandwidth and stayed at the default 1 ms)."""
    runner, url = await sink_server()
    model = LinkLatencyModel(bandwidth_min_bytes=8 * 1024)
    matrix = LinkMatrix(links={(NodeId("a"), NodeId("sink")): EmulatedLink(bandwidth_mbps=10.0, rtt_ms=20.0)})
    transport = PeerTransport("a", None, matrix, model)
    directory = StaticDirectory("a", [PeerView(node_id=NodeId("a"), url="http://127.0.0.1:9"),
                                      PeerView(node_id=NodeId("sink"), url=url, hosted={CNN: (0, 1)})],
                                link_model=model)
    assert [peer.node_id for peer in unmeasured_peers(directory, model)] == ["sink"]
    prober = asyncio.create_task(run_link_prober(directory, transport, model, period_s=60.0, tick_s=0.01))
    try:
        async def measured() -> bool:
            return model.bandwidth_measured(NodeId("a"), NodeId("sink"))

        # 10 s at most, far below the 60 s period
        await async_wait_until(measured, timeout_s=10.0, message="the new peer's link measured")
        assert unmeasured_peers(directory, model) == []
        estimate = model.estimate(NodeId("a"), NodeId("sink"))
        assert 6.0 <= estimate.bandwidth_mbps <= 12.0
        assert 20.0 <= estimate.rtt_ms <= 45.0
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)
        await transport.close()
        await runner.cleanup()
