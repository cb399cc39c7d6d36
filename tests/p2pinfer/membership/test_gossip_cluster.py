"""Five real aiohttp servers on 127.0.0.1, each hosting a GossipAgent behind the peer-auth
middleware: join from one seed, merged statistics over HTTP, refused forgeries and replays,
coordinator death detected within a stated bound, restart with a higher incarnation."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
from aiohttp import web

from p2pinfer.membership.gossip import GossipAgent, GossipSettings
from p2pinfer.membership.http import GOSSIP_PATH, MSGPACK, HttpTransport, gossip_routes
from p2pinfer.membership.messages import Address, Exchange, Member, Status, encode_message
from p2pinfer.protocol.auth import RejectReason, Verifier, peer_auth_middleware, sign_request
from p2pinfer.testing import async_wait_until, free_port
from p2pinfer.types import NodeId

SECRET = b"test-cluster-secret"
SETTINGS = GossipSettings(interval_s=0.05, probe_timeout_s=0.25, guidance_interval_s=0.1, stats_interval_s=0.2,
                          jitter=0.2)
DETECTION_BOUND_S = 5.0
"""Stated bound: with a 50 ms period, the probe cycle (4 peers), one re-probe and the
suspicion timeout (0.2 s confirmed, 1.2 s unconfirmed) fit well inside it."""


class Node:
    """A minimal node: the gossip route behind the auth middleware, and its agent."""

    def __init__(self, node_id: str, port: int, seeds: list[str]) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.transport = HttpTransport(node_id, SECRET)
        self.agent = GossipAgent(node_id, self.address, self.transport, seeds=seeds, settings=SETTINGS)
        self.rejections: list[RejectReason] = []
        app = web.Application(middlewares=[peer_auth_middleware(Verifier(SECRET, recipients={node_id, self.address}),
                                                                on_reject=self.rejections.append)])
        app.add_routes(gossip_routes(self.agent, SECRET, on_reject=self.rejections.append))
        self.runner = web.AppRunner(app, shutdown_timeout=0.0)

    async def start(self) -> Node:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        await self.agent.start()
        return self

    async def kill(self) -> None:
        """Stop abruptly: no leave message, the server closes under in-flight requests."""
        await self.agent.stop(leave=False)
        await self.runner.cleanup()
        await self.transport.close()

    def sees(self, node_id: str, status: Status = Status.ALIVE) -> Member | None:
        member = self.agent.member(node_id)
        return member if member is not None and member.status is status else None


async def post(address: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{address}{GOSSIP_PATH}", data=body, headers={**headers, "Content-Type": MSGPACK}) as response:
        return response.status, (await response.json() if response.status != 200 else {})


async def test_five_real_nodes_join_detect_death_refuse_forgeries_and_revive():
    ports = [free_port() for _ in range(5)]
    seed = f"127.0.0.1:{ports[0]}"
    nodes = [await Node(f"node-{index}", port, [seed] if index else []).start() for index, port in enumerate(ports)]
    names = {f"node-{index}" for index in range(5)}
    try:
        async def all_see_all() -> bool:
            return all({m.node_id for m in node.agent.live_members()} == names for node in nodes)

        await async_wait_until(all_see_all, timeout_s=10.0, message="five nodes to see each other")

        # Merged bandit statistics travel over the signed HTTP path too.
        for index, node in enumerate(nodes):
            node.agent.publish_stats({"resnet@2": np.full(3, float(index)).tobytes()}, user_demand={"u": 1.0})
        expected = np.full(3, 0.0 + 1 + 2 + 3 + 4).tobytes()

        async def stats_everywhere() -> bool:
            return all(node.agent.merged_stats()[1].get("resnet@2") == expected for node in nodes)

        await async_wait_until(stats_everywhere, timeout_s=10.0, message="merged statistics on every node")
        assert all(node.agent.guidance().coordinator == "node-0" for node in nodes)

        # Forged, unsigned and replayed gossip: 401, counted, and no view changes.
        target = nodes[1]
        before = target.agent.member("node-2")
        forged = encode_message(Exchange(sender=NodeId("node-3"), records=[
            Member(node_id=NodeId("node-2"), incarnation=before.incarnation + 10**6, address=before.address,
                   status=Status.DEAD),
            Member(node_id=NodeId("mallory"), incarnation=1, address=Address("10.6.6.6:1"))]))
        wrong_key = sign_request(b"guessed-secret", "node-3", "POST", GOSSIP_PATH, forged, time.time(),
                                 to=target.address)
        status, body = await post(target.address, forged, wrong_key)
        assert status == 401 and body == {"error": "bad peer signature", "code": "unauthorized",
                                          "reason": "bad_signature"}
        assert (await post(target.address, forged, {}))[0] == 401
        benign = encode_message(Exchange(sender=NodeId("node-3")))
        signed = sign_request(SECRET, "node-3", "POST", GOSSIP_PATH, benign, time.time(),
                              to=target.address)
        assert (await post(target.address, benign, signed))[0] == 200
        status, body = await post(target.address, benign, signed)
        assert status == 401 and body["reason"] == "replayed"
        impostor = sign_request(SECRET, "node-4", "POST", GOSSIP_PATH, forged, time.time(),
                                 to=target.address)
        assert (await post(target.address, forged, impostor))[0] == 401  # signed by node-4, claims node-3
        assert target.rejections == [RejectReason.BAD_SIGNATURE, RejectReason.MISSING, RejectReason.REPLAYED,
                                     RejectReason.SENDER_MISMATCH]
        for node in nodes:
            assert node.agent.member("mallory") is None
            assert node.agent.member("node-2").incarnation == before.incarnation
            assert node.sees("node-2")

        # Kill the coordinator (also the seed): everyone marks it dead, node-1 takes the role.
        victim = nodes[0]
        old_incarnation = victim.agent.view.own.incarnation
        killed_at = time.monotonic()
        await victim.kill()
        survivors = nodes[1:]

        async def victim_dead() -> bool:
            return all(node.sees("node-0", Status.DEAD) for node in survivors)

        await async_wait_until(victim_dead, timeout_s=DETECTION_BOUND_S, interval_s=0.01,
                               message=f"node-0 marked dead within {DETECTION_BOUND_S}s")
        detection_s = time.monotonic() - killed_at
        print(f"detection of a killed node by all 4 survivors: {detection_s:.2f}s")

        async def new_coordinator() -> bool:
            return all(node.agent.coordinator() == "node-1" and node.agent.guidance().coordinator == "node-1"
                       for node in survivors)

        await async_wait_until(new_coordinator, timeout_s=5.0, message="node-1 to take the coordinator role")

        # Restart on the same port: wall-clock incarnation outranks the dead record.
        reborn = await Node("node-0", victim.port, [survivors[0].address]).start()
        nodes[0] = reborn
        assert reborn.agent.view.own.incarnation > old_incarnation

        async def revived() -> bool:
            return all((m := node.sees("node-0")) is not None and m.incarnation > old_incarnation
                       for node in survivors) and await all_see_all()

        await async_wait_until(revived, timeout_s=10.0, message="node-0 alive again everywhere")

        async def coordinator_back() -> bool:
            return all(node.agent.coordinator() == "node-0" for node in nodes)

        await async_wait_until(coordinator_back, timeout_s=5.0, message="node-0 to hold the role again")
        assert detection_s < DETECTION_BOUND_S
    finally:
        await asyncio.gather(*(node.kill() for node in nodes), return_exceptions=True)
