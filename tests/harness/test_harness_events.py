"""Timed events against stand-in nodes: a heat request is signed the way peers sign (so a node
that protects ``/v1/emulation`` with ``p2pinfer.auth`` accepts it), a missing route is reported
as unsupported, and every event ends with a status."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from benchmarks.bench import EMULATION_ROUTE, NodeCapabilities, ScenarioCluster, apply_events
from benchmarks.scenario import Event, parse_scenario

SECRET = "test-secret-0123456789"
SCENARIO = {"duration_s": 5, "cluster": {"nodes": [{"name": "a"}]},
            "users": [{"group": "g", "count": 1, "rate_per_s": 1.0}]}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    return runner, f"http://127.0.0.1:{port}"


def cluster_at(url: str, tmp_path: Path) -> ScenarioCluster:
    cluster = ScenarioCluster(parse_scenario(SCENARIO), "fixed", NodeCapabilities(frozenset()), tmp_path, SECRET, [])
    cluster.nodes["a"] = SimpleNamespace(url=url, alive=lambda: True)
    return cluster


async def test_heat_is_signed_like_a_peer_message(tmp_path: Path):
    from p2pinfer.protocol.auth import PEER_ID, Verifier, peer_auth_middleware

    seen: list[tuple[str, dict]] = []

    async def emulation(request: web.Request) -> web.Response:
        seen.append((request[PEER_ID], await request.json()))
        return web.json_response({"temperature_c": 85.0})

    app = web.Application(middlewares=[peer_auth_middleware(Verifier(SECRET.encode()),
                                                            protected_paths={EMULATION_ROUTE})])
    app.router.add_post(EMULATION_ROUTE, emulation)
    runner, url = await serve(app)
    try:
        cluster = cluster_at(url, tmp_path)
        async with aiohttp.ClientSession() as session:
            status, _ = await cluster.heat(session, "a", 85.0)
            assert status == "applied"
            assert seen == [("bench-harness", {"temperature_c": 85.0})]
            cluster.secret = "a-different-secret"
            status, detail = await cluster.heat(session, "a", 85.0)
            assert status == "failed" and "401" in detail
    finally:
        await runner.cleanup()


async def test_events_end_with_a_status(tmp_path: Path):
    runner, url = await serve(web.Application())  # no emulation route at all
    try:
        cluster = cluster_at(url, tmp_path)
        events = [Event(0.0, "heat", "a", {"temperature_c": 90.0}),
                  Event(0.0, "users", None, {"group": "g", "count": 0}),
                  Event(0.0, "restart", "a")]  # restarting a running node is refused, not fatal
        async with aiohttp.ClientSession() as session:
            applied = await apply_events(cluster, events, time.monotonic(), session)
        assert [event.status for event in applied] == ["unsupported", "applied", "failed"]
        assert "404" in applied[0].detail and "still running" in applied[2].detail
        assert json.dumps([event.as_dict() for event in applied])
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("text", ["[Errno 98] error while attempting to bind: address already in use"])
def test_port_clash_is_recognised(text):
    from benchmarks.bench import _port_taken, free_ports

    assert _port_taken(RuntimeError(text)) and not _port_taken(RuntimeError("ImportError"))
    ports = free_ports(4)
    assert len(set(ports)) == 4
