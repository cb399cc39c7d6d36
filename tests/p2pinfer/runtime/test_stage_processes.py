"""Real processes: ``kill -9`` the middle node of a chain during a stream of requests; and, as
root on Linux, two nodes in network namespaces joined by a tc-shaped kernel link."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pinfer.emulation.netns import NamespaceNetwork, Shaping, unavailable_reason
from p2pinfer.errors import NetnsUnavailable, P2PError
from p2pinfer.runtime.stage import StageHooks
from p2pinfer.testing import ServiceNodeSpec, peer_view, segments_of, start_cluster
from p2pinfer.types import NodeId
from tests.p2pinfer.collaboration_support import resnet_name, sample

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the repository root (tests/p2pinfer/runtime -> .)
PEER_SCRIPT = HERE / "stage_peer.py"
SECRET = "process-test-secret"


def peer_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def spec_table(spec: ServiceNodeSpec, url: str | None = None) -> dict:
    table = {"node_id": spec.node_id, "hosted": {name: list(bounds) for name, bounds in spec.hosted.items()},
             "device_slowdown": spec.device_slowdown}
    if url is not None:
        table["url"] = url
    return table


async def test_kill_9_the_middle_node_every_request_gets_one_answer(manifest):
    variant = manifest.variant(resnet_name(manifest))
    hosted = {variant.name: (0, variant.block_count - 1)}
    specs = {node: ServiceNodeSpec(node, hosted) for node in ("a", "b", "c")}
    replans: list[str] = []
    cluster = await start_cluster([specs["a"], specs["c"]], manifest=manifest, secret=SECRET.encode(),
                                  hooks={"a": StageHooks(on_replan=lambda rid, node, error: replans.append(node))})
    config = {"node": spec_table(specs["b"]), "secret": SECRET,
              "peers": [spec_table(specs[node], cluster[node].url) for node in ("a", "c")]}
    process = await asyncio.create_subprocess_exec(sys.executable, str(PEER_SCRIPT), "serve", json.dumps(config),
                                                   stdout=asyncio.subprocess.PIPE, env=peer_environment())
    answers: dict[str, object] = {}
    killed_after: list[int] = []
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line.startswith("READY "), line
        b_view = peer_view(specs["b"], f"http://127.0.0.1:{int(line.split()[1])}", manifest)
        for node in cluster.nodes.values():
            node.directory.update(b_view)
        plan = segments_of(("a", 0, 0), ("b", 1, 2), ("c", 3, variant.block_count - 1))
        slots = asyncio.Semaphore(3)

        async def request(index: int) -> None:
            async with slots:
                request_id = f"stream-{index}"
                try:
                    outcome = await cluster["a"].service.execute(
                        request_id=request_id, family=variant.family, variant=variant.name,
                        exit_block=variant.block_count - 1, segments=plan, tensor=sample(variant, index),
                        budget_ms=15_000.0, allow_degrade=False)
                    answers.setdefault(request_id, outcome)
                except P2PError as error:
                    answers.setdefault(request_id, error)
                if len(answers) == 10:  # two requests are in flight: kill b under them
                    process.kill()
                    killed_after.append(len(answers))

        await asyncio.gather(*(request(index) for index in range(30)))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await cluster.close()
    assert killed_after == [10]
    assert sorted(answers) == sorted(f"stream-{index}" for index in range(30))  # exactly one answer each
    errors = {rid: answer for rid, answer in answers.items() if isinstance(answer, P2PError)}
    assert not errors, errors  # a and c can serve everything: nothing is lost
    outcomes = list(answers.values())
    before = [outcome for outcome in outcomes if not outcome.replans]
    after = [outcome for outcome in outcomes if outcome.replans]
    assert len(before) >= 10 and all([t.node for t in o.timings] == ["a", "b", "c"] for o in before)
    assert len(after) >= 18 and all("b" not in [t.node for t in o.timings] for o in after)
    assert set(replans) == {"b"} and len(replans) == sum(outcome.replans for outcome in outcomes)
    assert NodeId("b") in cluster["a"].directory.failed


def test_a_tc_shaped_kernel_link_between_two_namespaced_nodes(manifest):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    variant = manifest.variant(resnet_name(manifest))
    hosted = {variant.name: (0, variant.block_count - 1)}
    rate_mbit = 20.0
    try:
        network = NamespaceNetwork(2, shaping={0: Shaping(rate_mbit=rate_mbit)}).__enter__()
    except NetnsUnavailable as error:
        pytest.skip(f"cannot create network namespaces here: {error.message}")
    server = None
    try:
        if not network.reachable(0, 1):
            pytest.skip("namespaces on the bridge cannot reach each other (a host firewall on bridged traffic?)")
        serve_config = {"node": spec_table(ServiceNodeSpec("b", hosted)), "host": network[1].address}
        server = network.popen(1, [sys.executable, str(PEER_SCRIPT), "serve", json.dumps(serve_config)],
                               stdout=subprocess.PIPE, text=True, env=peer_environment())
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("READY "), line
        url = f"http://{network[1].address}:{int(line.split()[1])}"
        measure_config = {"node": spec_table(ServiceNodeSpec("a", hosted)), "host": network[0].address,
                          "peers": [spec_table(ServiceNodeSpec("b", hosted), url)], "variant": variant.name,
                          "transfers": 8}
        measured = network.run(0, [sys.executable, str(PEER_SCRIPT), "measure", json.dumps(measure_config)],
                               capture_output=True, text=True, env=peer_environment(), timeout=120)
        assert measured.returncode == 0, measured.stderr[-2000:]
        result = json.loads(measured.stdout.strip().splitlines()[-1])
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        network.close()
    # The kernel's token bucket, not the emulation, sets the pace: the link model's estimate
    # and each transfer's throughput sit near the shaped rate (TCP/IP headers cost a few %).
    assert result["request_bytes"] > 100_000
    assert result["estimate_mbps"] == pytest.approx(rate_mbit, rel=0.2), result
    throughputs = sorted(result["throughput_mbps"])
    assert throughputs[len(throughputs) // 2] == pytest.approx(rate_mbit, rel=0.2), result
