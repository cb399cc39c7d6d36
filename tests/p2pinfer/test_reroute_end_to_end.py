"""Real ``p2pinfer node`` processes: a request the entry's own unit refuses before running any
of it (its queue is full, or its run would end late) goes to a peer while the budget allows,
instead of coming back as a 429 or 504."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp
import pytest

from p2pinfer.protocol.wire import CONTENT_TYPE, InferFrameHeader, encode_frame_bytes
from p2pinfer.testing import wait_until
from zoo.dataset import held_out

SECRET = "test-reroute-secret"
VARIANT = "digits-resnet-w1"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def metric(text: str, name: str, label: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line)


@pytest.fixture
def entry_and_peer(node_factory):
    common = ("--secret", SECRET, "--gossip-interval", "0.1", "--variants", VARIANT, "--max-batch", "1")
    # one slot in the entry's queue: a burst overflows it whatever the planner predicted
    entry = node_factory("--node-id", "entry", "--queue-capacity", "1", *common)
    peer = node_factory("--node-id", "peer", "--seed", entry.url.removeprefix("http://"), *common)
    wait_until(lambda: {p["node_id"] for p in get_json(f"{entry.url}/v1/peers")["peers"]
                        if p["status"] == "alive" and p.get("variants")} >= {"entry", "peer"},
               timeout_s=60, message="the entry to see the peer with its variant")
    return entry, peer


async def test_a_burst_the_entry_refuses_locally_is_answered_by_its_peer(entry_and_peer):
    """16 concurrent requests for a pinned variant (pinned arms are never shed to a cheaper
    one): the entry's one-slot queue refuses most of those placed on it, and each of those is
    sent to the peer instead — every request is answered, some through a re-route."""
    entry, _ = entry_and_peer
    images, _ = held_out((1, 64, 64))
    async with aiohttp.ClientSession() as session:
        async def one(index: int) -> tuple[int, dict]:
            body = encode_frame_bytes(InferFrameHeader(deadline_ms=30_000, family="digits-resnet", variant=VARIANT,
                                                       request_id=f"burst-{index}"),
                                      {"input": images[index:index + 1].numpy()})
            async with session.post(f"{entry.url}/v1/infer", data=body,
                                    headers={"Content-Type": CONTENT_TYPE}) as answer:
                return answer.status, json.loads(await answer.read())

        for burst in range(3):  # bounded: three bursts at most, until one overflows the entry's queue
            outcomes = await asyncio.gather(*[one(burst * 16 + index) for index in range(16)])
            statuses = [status for status, _ in outcomes]
            assert statuses == [200] * 16, [answer for status, answer in outcomes if status != 200]
            rerouted = [answer for _, answer in outcomes if answer["replans"] >= 1]
            if rerouted:
                break
        assert rerouted, "no burst overflowed the entry's queue"
        for answer in rerouted:
            assert [segment["node"] for segment in answer["plan"]] == ["peer"], answer["plan"]
        async with session.get(f"{entry.url}/metrics") as answer:
            text = await answer.text()
    assert metric(text, "p2pinfer_requests_total", 'outcome="rerouted_after_local_refusal"') >= len(rerouted)
