"""Spreading: the entry node's estimate of how long a new segment waits at each replica.

Gossip tells every node how much work each peer had queued and in flight a moment ago; it
is a few hundred milliseconds old, and in that time this node may itself have sent the peer
several requests. Entries that trusted gossip alone would all pile onto the peer that looked
idle at the last round (a herd). So the expected wait at a peer is the larger of what gossip
says and what this node knows it has outstanding there (join-the-shortest-expected-delay:
the planner's queue term then sends a new request to the replica that finishes soonest, this
node included, whose own queue is read live).

``Outstanding`` counts this node's requests in flight at each peer; ``expected_wait_ms`` is
the pure decision rule the cluster view applies.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from p2pinfer.types import NodeId


def expected_wait_ms(gossiped_jobs: float, own_outstanding: int, service_ms: float) -> float:
    """Milliseconds a new segment waits at a peer: its jobs (the larger of the gossiped queue
    plus in-flight work and this node's own outstanding requests there) times its mean
    service time. The two counts overlap (our requests are in the gossiped count once it
    catches up), so they are not added."""
    jobs = max(float(gossiped_jobs), float(own_outstanding), 0.0)
    return jobs * max(service_ms, 0.0)


class Outstanding:
    """This entry node's requests in flight at each peer (thread-safe, bounded by the peers)."""

    def __init__(self) -> None:
        self._counts: dict[NodeId, int] = {}
        self._lock = threading.Lock()

    def count(self, node_id: NodeId | str) -> int:
        return self._counts.get(NodeId(node_id), 0)

    def snapshot(self) -> dict[NodeId, int]:
        with self._lock:
            return {node: count for node, count in self._counts.items() if count}

    @contextlib.contextmanager
    def track(self, nodes: Iterable[NodeId | str]) -> Iterator[None]:
        """Count one request at each of ``nodes`` while the block runs."""
        held = sorted({NodeId(node) for node in nodes})
        with self._lock:
            for node in held:
                self._counts[node] = self._counts.get(node, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for node in held:
                    left = self._counts.get(node, 0) - 1
                    if left > 0:
                        self._counts[node] = left
                    else:
                        self._counts.pop(node, None)


__all__ = ["Outstanding", "expected_wait_ms"]
