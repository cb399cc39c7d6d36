"""Helpers of the load tests on real node processes: start several nodes at once, keep a
node busy with requests pinned to it, read a node's view of its peers' load.

Every loop here is bounded in count and in time; tests wait on conditions read from the
nodes' own routes, never on sleeps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np

from p2pinfer import Client
from p2pinfer.errors import P2PError
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import wait_until
from zoo.dataset import held_out

SECRET = "load-test-secret"
SLOW = "rpi-zero2w"  # x40, padding sleeps: a node is busy for ~0.3 s per request, the host is not
RESNET = "digits-resnet-w0.25"
BLOCKS = 4


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


@functools.lru_cache(maxsize=4)
def _images(shape: tuple[int, ...]) -> np.ndarray:
    return held_out(shape)[0].numpy()  # resizing the whole split takes a while: once per shape


def resnet_image(index: int = 0) -> np.ndarray:
    images = _images((1, 64, 64))
    return images[index % len(images)]


def start_nodes(node_factory: Callable[..., Any], specs: Sequence[tuple[str, Sequence[str]]],
                gossip_interval: float = 0.1) -> list[Any]:
    """Start the first node, then the others in parallel seeded by it; wait until every node
    sees every other alive. ``specs``: (node id, extra arguments)."""
    def start(node_id: str, extra: Sequence[str], seed: str | None) -> Any:
        arguments = ["--node-id", node_id, "--secret", SECRET, "--gossip-interval", str(gossip_interval), *extra]
        if seed is not None:
            arguments += ["--seed", seed]
        return node_factory(*arguments)

    first = start(specs[0][0], specs[0][1], None)
    seed = first.url.removeprefix("http://")
    with ThreadPoolExecutor(max_workers=max(1, len(specs) - 1)) as pool:
        rest = list(pool.map(lambda spec: start(spec[0], spec[1], seed), specs[1:]))
    nodes = [first, *rest]
    everyone = {node.node_id for node in nodes}
    for node in nodes:
        wait_until(lambda node=node: alive_ids(node) == everyone, timeout_s=40,
                   message=f"{node.node_id} to see all of {sorted(everyone)}")
    return nodes


def alive_ids(node: Any) -> set[str]:
    try:
        view = get_json(f"{node.url}/v1/peers")
    except OSError:
        return set()
    return {peer["node_id"] for peer in view["peers"] if peer["status"] in ("alive", "suspect")}


def gossiped_jobs(observer: Any, node_id: str) -> int:
    """Queued + in-flight jobs of ``node_id`` as ``observer`` last heard through gossip."""
    for peer in get_json(f"{observer.url}/v1/peers")["peers"]:
        if peer["node_id"] == node_id:
            return int(peer["load"]["queue_depth"]) + int(peer["load"]["in_flight"])
    return 0


class PinnedLoad:
    """``workers`` closed-loop clients sending requests to ``node`` with the plan pinned to run
    all blocks of ``variant`` there: the node stays busy whatever the planner would prefer.
    Bounded: at most ``max_requests`` per worker and ``max_s`` seconds."""

    def __init__(self, node: Any, workers: int, variant: str = RESNET, family: str = "digits-resnet",
                 deadline_ms: float = 30_000, max_requests: int = 200, max_s: float = 60.0) -> None:
        self.node = node
        self.workers = workers
        self.variant = variant
        self.family = family
        self.deadline_ms = deadline_ms
        self.max_requests = max_requests
        self.max_s = max_s
        self.sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, worker: int) -> None:
        plan = [PlanSegment(node=self.node.node_id, unit="cpu", first_block=0, last_block=BLOCKS - 1)]
        ends = time.monotonic() + self.max_s
        with Client(self.node.url) as client:
            for index in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > ends:
                    return
                with contextlib.suppress(P2PError, OSError):  # a refusal is load too: keep going
                    client.infer(resnet_image(worker * 1000 + index), deadline_ms=self.deadline_ms,
                                 family=self.family, variant=self.variant, exit=BLOCKS - 1, plan=plan,
                                 user=f"pinned-{worker}")
                self.sent += 1

    def __enter__(self) -> PinnedLoad:
        for worker in range(self.workers):
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
