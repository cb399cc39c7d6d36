"""At most one observation per key and period: what lets a node's estimates learn from its
runs without every request paying for it.

Why: a node folds each run's block times into its per-block estimates (``ModelHost``) and
each answer's latency into its route and entry-overhead residuals (``ComputeLatencyModel``).
These are exponentially weighted averages: each folds the last handful of observations
(weights 0.1-0.2). At a few hundred runs a second and above, successive runs say the same
thing, and folding every one of them was ~15 us of a 0.6 ms request on the event loop (session
18's profile of a tiny model at 8 clients). Keeping one observation per key every
``period_s`` changes nothing below ``1 / period_s`` runs a second (tests, emulated devices,
every real model beyond a few ms) and, above, still follows a change within
``period_s / weight`` (25 ms at 5 ms and 0.2). Metrics are never thinned: they count every run.
"""

from __future__ import annotations

from collections.abc import Hashable

OBSERVATION_PERIOD_S = 0.005
"""One observation per key at most every 5 ms (200 a second)."""
MAX_KEYS = 1024
"""Keys come from hosted variants and the routes plans take: few, but bounded."""


class Thinning:
    """``due(key, now)``: whether an observation of ``key`` at ``now`` (monotonic seconds) is
    kept. Safe from the executor's worker threads: a race keeps one observation too many."""

    __slots__ = ("period_s", "_last")

    def __init__(self, period_s: float = OBSERVATION_PERIOD_S) -> None:
        self.period_s = period_s
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            return False
        if last is None and len(self._last) >= MAX_KEYS:
            self._last.clear()
        self._last[key] = now
        return True


__all__ = ["MAX_KEYS", "OBSERVATION_PERIOD_S", "Thinning"]
