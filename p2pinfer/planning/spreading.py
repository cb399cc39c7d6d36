"""Spreading: the entry node's estimate of how long a new segment waits at each replica.

Gossip tells every node how much work each peer had queued and in flight a moment ago; it
is a few hundred milliseconds old, and in that time this node may itself have sent the peer
several requests. Entries that trusted gossip alone would all pile onto the peer that looked
idle at the last round (a herd). So the expected wait at a peer is the larger of what gossip
says and what this node knows it has outstanding there (join-the-shortest-expected-delay:
the planner's queue term then sends a new request to the replica that finishes soonest, this
node included, whose own queue is read live).

A peer that refused this node's work for load said how long its queue is (its Retry-After:
the queued work ahead of the refused job). Gossip would tell the same only a round later, and
the count of our own requests there not at all when other entries filled the queue, so
``PushBack`` keeps that wait, counting down, as a floor on the peer's queue term: the next
requests go where they can start (thermal: a hot Jetson's robot requests were refused by a
busy Pi four times in two seconds, each refusal costing a hop of their 70 ms).

The gossiped count also goes stale the other way: a peer's load rides on gossip refreshes, so
the record this node holds may have been taken while one of its own requests ran there, and
still say "one in flight" long after that request came back. Sequential requests then saw the
peer they had just used as busy and alternated between a hot (half-speed) Jetson and a cool
one (the heat end-to-end test: 4 of 8 still went to the hot one). So ``Outstanding`` also
remembers when its recent requests at each peer started and finished, and the requests of
this node that were in flight when the peer's record was heard and have finished since are
taken out of the gossiped count (``finished_since``).

``Outstanding`` counts this node's requests in flight at each peer; ``expected_wait_ms`` is
the pure decision rule the cluster view applies.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from p2pinfer.types import NodeId

MAX_PUSH_BACK_S = 2.0  # a refusal's wait is believed this long at most (a peer cannot shut us out)


def expected_wait_ms(gossiped_jobs: float, own_outstanding: int, service_ms: float,
                     pushed_back_ms: float = 0.0, own_finished: int = 0) -> float:
    """Milliseconds a new segment waits at a peer: its jobs (the larger of the gossiped queue
    plus in-flight work and this node's own outstanding requests there) times its mean
    service time, and at least what is left of the wait the peer gave with its last refusal
    (``pushed_back_ms``). The two counts overlap (our requests are in the gossiped count once
    it catches up), so they are not added. ``own_finished``: this node's requests that were
    in flight there when the gossiped count was heard and have finished since; the count no
    longer holds them."""
    gossiped = max(float(gossiped_jobs) - max(own_finished, 0), 0.0)
    jobs = max(gossiped, float(own_outstanding), 0.0)
    return max(jobs * max(service_ms, 0.0), pushed_back_ms, 0.0)


class PushBack:
    """The waits peers gave with their load refusals (Retry-After), counting down (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[NodeId, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.version = 0
        """Grows each time a request is sent or comes back: a cached view of the cluster built
        before it is stale (a view built late in one request was reused by the next plan
        within the cache's 20 ms, still counting the request just answered at its peer)."""

    def refused(self, node_id: NodeId | str, wait_s: float) -> None:
        """``node_id`` refused for load and asked for ``wait_s`` (capped at ``MAX_PUSH_BACK_S``)."""
        if not wait_s > 0:
            return
        until = self._clock() + min(wait_s, MAX_PUSH_BACK_S)
        with self._lock:
            node = NodeId(node_id)
            self._until[node] = max(self._until.get(node, 0.0), until)

    def wait_ms(self, node_id: NodeId | str) -> float:
        """What is left of ``node_id``'s last wait, in ms (0 when it has passed)."""
        node = NodeId(node_id)
        until = self._until.get(node)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            with self._lock:
                if self._until.get(node) == until:
                    del self._until[node]
            return 0.0
        return left * 1000.0


class Outstanding:
    """This entry node's requests in flight at each peer, and when its last ``RECENT`` requests
    at each peer started and finished (thread-safe, bounded by the peers)."""

    RECENT = 64

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._counts: dict[NodeId, int] = {}
        self._finished: dict[NodeId, collections.deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.version = 0
        """Grows each time a request is sent or comes back: a cached view of the cluster built
        before it is stale (a view built late in one request was reused by the next plan
        within the cache's 20 ms, still counting the request just answered at its peer)."""

    def count(self, node_id: NodeId | str) -> int:
        return self._counts.get(NodeId(node_id), 0)

    def snapshot(self) -> dict[NodeId, int]:
        with self._lock:
            return {node: count for node, count in self._counts.items() if count}

    def finished_since(self, node_id: NodeId | str, heard_at: float) -> int:
        """This node's requests at ``node_id`` that were in flight at ``heard_at`` (on this
        clock: when the peer's gossiped load was heard) and have finished since."""
        with self._lock:
            finished = self._finished.get(NodeId(node_id))
            if not finished:
                return 0
            return sum(1 for started, ended in finished if started <= heard_at < ended)

    @contextlib.contextmanager
    def track(self, nodes: Iterable[NodeId | str]) -> Iterator[None]:
        """Count one request at each of ``nodes`` while the block runs."""
        held = sorted({NodeId(node) for node in nodes})
        if not held:
            yield
            return
        started = self._clock()
        with self._lock:
            for node in held:
                self._counts[node] = self._counts.get(node, 0) + 1
            self.version += 1
        try:
            yield
        finally:
            ended = self._clock()
            with self._lock:
                for node in held:
                    left = self._counts.get(node, 0) - 1
                    if left > 0:
                        self._counts[node] = left
                    else:
                        self._counts.pop(node, None)
                    finished = self._finished.get(node)
                    if finished is None:
                        finished = self._finished[node] = collections.deque(maxlen=self.RECENT)
                    finished.append((started, ended))
                self.version += 1


__all__ = ["MAX_PUSH_BACK_S", "Outstanding", "PushBack", "expected_wait_ms"]
