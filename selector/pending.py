"""Decisions waiting for their reward: the memory behind delayed feedback.

The reward of a request is known only after its answer (and a label or user score may arrive
through ``POST /v1/feedback`` seconds or minutes later), so a policy must remember, per request
id, the context it saw and the arm it chose. That memory must stay bounded on a small device
whatever clients do (many requests never get feedback), so :class:`PendingDecisions` is an LRU
map with both a maximum size and a time to live:

* at most ``max_size`` entries; remembering one more drops the least recently remembered one;
* an entry older than ``ttl_s`` seconds is treated as absent and dropped lazily.

Entries are kept in insertion order with a monotonic clock, so expired entries are always at the
front and purging them costs O(expired). The clock is injectable so tests never sleep.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.qoe import QoEOutcome

DEFAULT_MAX_PENDING = 4096
DEFAULT_PENDING_TTL_S = 600.0


@dataclass(frozen=True)
class PendingDecision:
    """A decision whose reward (or corrected reward) has not arrived yet.

    ``provisional_reward`` is set when the policy was already updated with a first reward (for
    example the QoE computed from exit confidence when the answer left); a later feedback then
    replaces that reward instead of adding a second observation. ``observation_step`` is the
    policy's observation counter at that time, which discounted policies need to age the
    correction. ``outcome`` is free for the caller (the node keeps the measured latency, deadline
    and energy there, to recompute the reward when a label arrives).
    """

    context: np.ndarray
    arm: Arm
    created_s: float
    observation_step: int
    arm_observation_step: int = 0
    provisional_reward: float | None = None
    outcome: QoEOutcome | None = None


class PendingDecisions:
    """Bounded LRU + TTL map from request id to :class:`PendingDecision`."""

    def __init__(self, max_size: int = DEFAULT_MAX_PENDING, ttl_s: float = DEFAULT_PENDING_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if int(max_size) <= 0:
            raise InvalidParameterError(f"max_size must be > 0, got {max_size}")
        if not float(ttl_s) > 0.0:
            raise InvalidParameterError(f"ttl_s must be > 0, got {ttl_s}")
        self.max_size = int(max_size)
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self.evicted = 0  # dropped because the map was full: feedback for them will be refused
        self.expired = 0  # dropped because they outlived ttl_s
        self._entries: OrderedDict[str, PendingDecision] = OrderedDict()

    def __len__(self) -> int:
        self._purge_expired(self.clock())
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and self.get(request_id) is not None

    def put(self, request_id: str, decision: PendingDecision) -> None:
        """Remember ``decision``; an id remembered again replaces the older entry."""
        self._purge_expired(decision.created_s)
        self._entries.pop(request_id, None)
        self._entries[request_id] = decision
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.evicted += 1

    def get(self, request_id: str) -> PendingDecision | None:
        """The pending decision, or ``None`` if unknown or expired (the entry stays)."""
        self._purge_expired(self.clock())
        return self._entries.get(request_id)

    def take(self, request_id: str) -> PendingDecision | None:
        """Remove and return the pending decision, or ``None`` if unknown or expired."""
        self._purge_expired(self.clock())
        return self._entries.pop(request_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def _purge_expired(self, now: float) -> None:
        horizon = now - self.ttl_s
        entries = self._entries
        while entries:
            request_id, oldest = next(iter(entries.items()))
            if oldest.created_s > horizon:
                break
            del entries[request_id]
            self.expired += 1
