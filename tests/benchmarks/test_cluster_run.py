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

from benchmarks.cluster_run import EMULATION_ROUTE, ScenarioCluster, apply_events
from benchmarks.scenario import Event, parse_scenario
from p2pinfer.testing import free_port, free_ports

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
    cluster = ScenarioCluster(parse_scenario(SCENARIO), "fixed", tmp_path, SECRET, [])
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


def test_free_ports_are_distinct():
    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(port > 0 for port in ports)
    assert free_port() > 0


TWO_NODES = {**SCENARIO, "cluster": {"nodes": [{"name": "a"}, {"name": "b"}]}}


def fake_start_node(started: list[list[str]], failure: Exception | None):
    """``start_node`` that records arguments; a node given ``--port`` (the start of all nodes at
    once, on chosen ports) fails with ``failure``."""

    def start_node(arguments, timeout_s=None, **options):
        started.append(list(arguments))
        if failure is not None and "--port" in arguments:
            raise failure
        port = 40000 + len(started)
        return SimpleNamespace(url=f"http://127.0.0.1:{port}", address=f"127.0.0.1:{port}", port=port,
                               alive=lambda: False, kill=lambda: None)

    return start_node


def test_a_failed_start_of_all_nodes_at_once_starts_them_one_by_one(tmp_path: Path, monkeypatch):
    import p2pinfer.cli.cluster
    from p2pinfer.errors import NodeStartError

    started: list[list[str]] = []
    monkeypatch.setattr(p2pinfer.cli.cluster, "start_node",
                        fake_start_node(started, NodeStartError("node exited with 1 before it was ready")))
    warnings: list[str] = []
    cluster = ScenarioCluster(parse_scenario(TWO_NODES), "fixed", tmp_path, SECRET, warnings)
    cluster.start()
    assert set(cluster.nodes) == {"a", "b"} and "one by one" in warnings[0]
    # the fallback: the first node alone on a port of its own, then the others seeded with it
    assert "--port" not in cluster.arguments["a"] and "--port" not in cluster.arguments["b"]
    first = cluster.nodes["a"].address
    assert cluster.arguments["b"][cluster.arguments["b"].index("--seed") + 1] == first


def test_a_start_failure_that_is_not_a_node_start_error_is_raised(tmp_path: Path, monkeypatch):
    import p2pinfer.cli.cluster

    monkeypatch.setattr(p2pinfer.cli.cluster, "start_node", fake_start_node([], RuntimeError("a harness bug")))
    cluster = ScenarioCluster(parse_scenario(TWO_NODES), "fixed", tmp_path, SECRET, [])
    with pytest.raises(RuntimeError, match="a harness bug"):
        cluster.start()
