"""SWIM's piggyback buffer: recent membership news, each sent a limited number of times.

Why: sending the whole view every round costs O(N) bytes per message. Instead each change
(join, suspicion, death, refutation, new revision) is attached to outgoing messages until
it has been sent ``retransmit_limit(N)`` = λ·⌈log10(N+1)⌉ times, which is enough for an
epidemic to reach every node with high probability, and then dropped. The least-sent news
goes first, so a burst of changes shares the bounded message space fairly.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Container

from p2pinfer.membership.messages import Member
from p2pinfer.types import NodeId


@functools.lru_cache(maxsize=256)
def retransmit_limit(live_members: int, multiplier: float = 4.0) -> int:
    """How many times each node sends one piece of news (memberlist's formula)."""
    return max(1, math.ceil(multiplier * math.ceil(math.log10(max(live_members, 1) + 1))))


class Dissemination:
    """Per member at most one pending record (the newest news about it) and its send count."""

    __slots__ = ("_entries", "_order")

    def __init__(self) -> None:
        self._entries: dict[NodeId, list] = {}  # node id -> [sends, order, record]
        self._order = 0

    def add(self, record: Member) -> None:
        """Queue ``record`` as news (replacing older news about the same node)."""
        self._order += 1
        self._entries[record.node_id] = [0, self._order, record]

    def take(self, budget: int, limit: int, exclude: Container[NodeId] = ()) -> list[Member]:
        """Up to ``budget`` least-sent records (newest first among equals), counting this send;
        records sent ``limit`` times leave the buffer."""
        if budget <= 0 or not self._entries:
            return []
        candidates = [
            (entry[0], -entry[1], node_id) for node_id, entry in self._entries.items() if node_id not in exclude
        ]
        chosen = heapq.nsmallest(budget, candidates) if len(candidates) > budget else candidates
        records = []
        for _, _, node_id in chosen:
            entry = self._entries[node_id]
            records.append(entry[2])
            entry[0] += 1
            if entry[0] >= limit:
                del self._entries[node_id]
        return records

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries
