"""Real ``p2pinfer node`` processes: a node heated through the signed ``/v1/emulation`` route
gets less work from the entry node that places requests on it."""

from __future__ import annotations

import json
import time
import urllib.request

from p2pinfer import Client
from p2pinfer.protocol.auth import sign_request
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import wait_until
from zoo.dataset import held_out
from zoo.manifest import read_manifest

SECRET = "test-heat-secret"
VARIANT = "digits-resnet-w0.25"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def throttle_seen(entry, node_id: str) -> float:
    for peer in get_json(f"{entry.url}/v1/peers")["peers"]:
        if peer["node_id"] == node_id and peer["status"] == "alive":
            return float((peer.get("thermal") or {}).get("throttle") or 0.0)
    return 0.0


def heat(node, temperature_c: float) -> dict:
    body = json.dumps({"temperature_c": temperature_c, "hold": True}).encode()
    headers = {"Content-Type": "application/json",
               **sign_request(SECRET.encode(), "test-harness", "POST", "/v1/emulation", body, time.time(),
                              to=node.node_id)}
    request = urllib.request.Request(f"{node.url}/v1/emulation", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def computed_on(client: Client, images, count: int, offset: int, plan: list[PlanSegment] | None = None) -> list[str]:
    """Where each of ``count`` requests for the pinned variant ran its blocks (the planner places
    them, unless ``plan`` pins the placement too)."""
    nodes = []
    for index in range(count):
        result = client.infer(images[(offset + index) % len(images)].unsqueeze(0).numpy(), deadline_ms=5_000,
                              family="digits-resnet", variant=VARIANT, exit=3 if plan else None, plan=plan)
        nodes += [segment.node for segment in result.plan]
    return nodes


# In the default run again (session 21): it failed about 1 run in 4 after spreading landed beside
# it. Causes found and fixed: the entry counted its own finished requests in a peer's gossiped load
# (``Outstanding.finished_since``), heard that load late (stage replies now carry it), and kept a
# link RTT measured while a peer was starting (36 ms on loopback) for good, so that it routed around
# a cool peer's link. 23 of 23 runs passed after, 15 of them with one or both cores taken by a spinning process.
def test_a_heated_node_receives_less_work(node_factory):
    """The entry (not hosting the pinned variant) places every request on one of two identical
    jetson-nano peers (x8). The one that got most of the work is heated to 95 °C: it throttles to
    half speed (x16), the entry hears it by gossip and measures it, and the work moves off it."""
    common = ("--secret", SECRET, "--gossip-interval", "0.1")
    entry = node_factory("--node-id", "entry", "--variants", "digits-resnet-w0.5", *common)
    seed = entry.url.removeprefix("http://")
    peers = {name: node_factory("--node-id", name, "--variants", VARIANT, "--device-profile", "jetson-nano",
                                "--seed", seed, *common) for name in ("jetson-a", "jetson-b")}
    wait_until(lambda: {p["node_id"] for p in get_json(f"{entry.url}/v1/peers")["peers"]
                        if p["status"] == "alive" and p.get("variants")} >= {"entry", *peers},
               timeout_s=60, message="the entry to see both peers with their variants")
    images, _ = held_out(tuple(read_manifest().variant(VARIANT).input_shape))
    with Client(entry.url, timeout_s=30) as client:
        for name in peers:  # both measured (and their model loaded) before anything is compared
            computed_on(client, images, 3, 100, plan=[PlanSegment(node=name, unit="cpu", first_block=0, last_block=3)])
        before = computed_on(client, images, 8, 0)
        hot = max(peers, key=before.count)
        reading = heat(peers[hot], 95.0)
        assert reading["throttle_factor"] == 0.5
        wait_until(lambda: throttle_seen(entry, hot) > 0.0, timeout_s=30,
                   message="gossip to carry the heat to the entry")
        after = computed_on(client, images, 8, 8)
    share_before, share_after = before.count(hot) / len(before), after.count(hot) / len(after)
    assert share_before >= 0.5, before
    assert share_after <= 0.25 and share_after < share_before, (before, after)  # the hot node lost its work
