"""One service node in a process of its own, for the tests that need a real process (``kill -9``)
or a network namespace.

    python stage_peer.py serve CONFIG_JSON      # print "READY <port>", serve until killed
    python stage_peer.py measure CONFIG_JSON    # transfers to a peer, print one JSON line

CONFIG_JSON: ``{"node": {"node_id", "hosted", "device_slowdown"}, "host", "port", "secret",
"peers": [{"node_id", "hosted", "device_slowdown", "url"}], "variant", "transfers"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import torch

from p2pinfer.runtime.stage import StageHeader
from p2pinfer.testing import ServiceNode, ServiceNodeSpec, peer_view, segments_of
from p2pinfer.types import NodeId
from zoo.manifest import read_manifest


def spec_of(table: dict) -> ServiceNodeSpec:
    return ServiceNodeSpec(table["node_id"], {name: tuple(bounds) for name, bounds in table["hosted"].items()},
                    device_slowdown=table.get("device_slowdown", 1.0))


async def start(config: dict) -> ServiceNode:
    manifest = read_manifest()
    secret = config.get("secret")
    node = ServiceNode(spec_of(config["node"]), manifest, secret=secret.encode() if secret else None)
    await node.start(config.get("host", "127.0.0.1"), config.get("port", 0))
    for peer in config.get("peers", []):
        node.directory.update(peer_view(spec_of(peer), peer["url"], manifest))
    return node


async def serve(config: dict) -> None:
    node = await start(config)
    print(f"READY {node.port}", flush=True)
    await asyncio.Event().wait()


async def measure(config: dict) -> None:
    """Probe the peer, then send ``transfers`` stages of the variant's largest activation."""
    node = await start(config)
    manifest = node.manifest
    variant = manifest.variant(config["variant"])
    peer = node.directory.peer(NodeId(config["peers"][0]["node_id"]))
    assert peer is not None
    for _ in range(5):
        await node.transport.probe(peer)
    largest = max(range(1, variant.block_count), key=lambda block: variant.boundary_bytes(block))
    activation = torch.rand([1, *variant.blocks[largest - 1].output_shape])
    seconds, nbytes = [], 0
    for _ in range(config.get("transfers", 6)):
        header = StageHeader(request_id=uuid.uuid4().hex, family=variant.family, variant=variant.name,
                             exit_block=variant.block_count - 1,
                             segments=segments_of((peer.node_id, largest, variant.block_count - 1)),
                             budget_ms=30_000.0, origin=node.node_id, hop=1)
        started = time.monotonic()
        reply = await node.transport.post_stage(peer, header, {"activation": activation}, timeout_s=30.0)
        seconds.append(time.monotonic() - started - reply.header.handled_ms / 1000)
        nbytes = reply.request_bytes
    estimate = node.transport.link_model.estimate(node.node_id, peer.node_id)
    print(json.dumps({"estimate_mbps": estimate.bandwidth_mbps, "rtt_ms": estimate.rtt_ms, "request_bytes": nbytes,
                      "throughput_mbps": [nbytes * 8 / value / 1e6 for value in seconds]}), flush=True)
    await node.stop()


def main() -> None:
    torch.set_num_threads(1)
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    asyncio.run(serve(config) if mode == "serve" else measure(config))


if __name__ == "__main__":
    main()
