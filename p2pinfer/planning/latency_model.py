"""Online latency models: what the planner believes about compute and links, learnt from hops.

Compute: one estimate per (node, unit, variant, block), seeded from the node's block profile
and moved by every measured hop. The average is exponentially weighted (recent hops matter
more: load and heat change), with a bias correction while few samples exist: the weight of
the n-th sample is ``max(alpha, 1 / (n + 1))`` (the seed counts as one sample), so a wrong
seed is forgotten after a handful of hops instead of decaying for dozens. A hop measures a
whole segment, so its time is shared among the segment's blocks in proportion to their
current estimates (the profile's shape is kept, its scale learnt).

Links: one estimate per ordered node pair, from round trips the transport measures anyway:
the time from starting to send ``nbytes`` until the peer's small reply arrived, which is
``rtt + nbytes * 8 / bandwidth`` on an ideal link. A single sample cannot separate the two
terms, so they are learnt from different messages:

- RTT from small messages (at most ``rtt_max_bytes``, e.g. gossip), whose serialization is
  subtracted using the current bandwidth estimate;
- bandwidth from large transfers (at least ``bandwidth_min_bytes``, e.g. activations): the
  throughput ``nbytes * 8 / (seconds - rtt)``, kept only when serialization is at least
  ``min_serialization_share`` of the sample (otherwise RTT jitter dominates the quotient).

Both are EWMAs with the same bias correction. Samples that are not finite or not positive
are ignored, and a single sample is clipped to ``outlier_factor`` times the current
estimate either way, so that one stalled transfer (a GC pause, a retransmission) cannot
wipe out what was learnt; a lasting change still gets through, a factor per sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId, UnitName


@dataclass
class Ewma:
    """An exponentially weighted mean, bias-corrected while it has few samples."""

    alpha: float = 0.2
    value: float | None = None
    count: int = 0
    outlier_factor: float = 10.0

    def seed(self, value: float) -> None:
        """Start from a prior (counts as one sample)."""
        self.value, self.count = value, 1

    def update(self, sample: float) -> float | None:
        if not (math.isfinite(sample) and sample >= 0):
            return self.value
        if self.value is None:
            self.value, self.count = sample, 1
            return self.value
        if self.value > 0 and self.count >= 2:
            sample = min(max(sample, self.value / self.outlier_factor), self.value * self.outlier_factor)
        self.count += 1
        weight = max(self.alpha, 1.0 / self.count)
        self.value += weight * (sample - self.value)
        return self.value


ComputeKey = tuple[NodeId, UnitName, str, int]


class ComputeLatencyModel:
    """Per (node, unit, variant, block) compute time in ms, learnt from measured hops."""

    def __init__(self, alpha: float = 0.2, outlier_factor: float = 10.0) -> None:
        self.alpha = alpha
        self.outlier_factor = outlier_factor
        self._estimates: dict[ComputeKey, Ewma] = {}

    def _entry(self, key: ComputeKey) -> Ewma:
        entry = self._estimates.get(key)
        if entry is None:
            entry = self._estimates[key] = Ewma(self.alpha, outlier_factor=self.outlier_factor)
        return entry

    def seed(self, node_id: NodeId, unit: UnitName, variant: str, profile_ms: Mapping[int, float],
             *, overwrite: bool = False) -> None:
        """Take a node's profiled block times as priors (kept if already learnt, unless ``overwrite``)."""
        for block, ms in profile_ms.items():
            entry = self._entry((node_id, unit, variant, block))
            if overwrite or entry.value is None:
                entry.seed(ms)

    def observe(self, node_id: NodeId, unit: UnitName, variant: str, block: int, ms: float) -> None:
        """One measured block time."""
        self._entry((node_id, unit, variant, block)).update(ms)

    def observe_segment(self, node_id: NodeId, unit: UnitName, variant: str, first_block: int,
                        last_block: int, ms: float) -> None:
        """A measured segment time, shared among its blocks in proportion to their estimates."""
        if not (math.isfinite(ms) and ms >= 0) or last_block < first_block:
            return
        blocks = range(first_block, last_block + 1)
        current = [self.predict(node_id, unit, variant, block) for block in blocks]
        known = [value for value in current if value is not None and value > 0]
        if len(known) == len(current):
            total = sum(known)
            shares = [value / total for value in known]
        else:
            shares = [1.0 / len(current)] * len(current)
        for block, share in zip(blocks, shares, strict=True):
            self.observe(node_id, unit, variant, block, ms * share)

    def predict(self, node_id: NodeId, unit: UnitName, variant: str, block: int) -> float | None:
        entry = self._estimates.get((node_id, unit, variant, block))
        return None if entry is None else entry.value

    def block_ms(self, node_id: NodeId, unit: UnitName, variant: str) -> dict[int, float]:
        """Every known block time of a variant on a unit (the planner's ``CandidateUnit.block_ms``
        before slowdown)."""
        return {key[3]: entry.value for key, entry in self._estimates.items()
                if key[:3] == (node_id, unit, variant) and entry.value is not None}


@dataclass
class _LinkState:
    rtt_ms: Ewma
    mbps: Ewma


class LinkLatencyModel:
    """Per ordered (src, dst) node pair: RTT and bandwidth learnt from measured round trips."""

    def __init__(self, default: LinkEstimate = LinkEstimate(bandwidth_mbps=100.0, rtt_ms=1.0), *,
                 alpha: float = 0.2, rtt_max_bytes: int = 8 * 1024, bandwidth_min_bytes: int = 32 * 1024,
                 min_serialization_share: float = 0.25, outlier_factor: float = 10.0) -> None:
        self.default = default
        self.alpha = alpha
        self.rtt_max_bytes = rtt_max_bytes
        self.bandwidth_min_bytes = bandwidth_min_bytes
        self.min_serialization_share = min_serialization_share
        self.outlier_factor = outlier_factor
        self._links: dict[tuple[NodeId, NodeId], _LinkState] = {}

    def _state(self, src: NodeId, dst: NodeId) -> _LinkState:
        state = self._links.get((src, dst))
        if state is None:
            state = _LinkState(Ewma(self.alpha, outlier_factor=self.outlier_factor),
                               Ewma(self.alpha, outlier_factor=self.outlier_factor))
            self._links[(src, dst)] = state
        return state

    def observe_rtt(self, src: NodeId, dst: NodeId, seconds: float) -> None:
        """A round trip of a message small enough that serialization does not matter (a probe)."""
        self._state(src, dst).rtt_ms.update(seconds * 1000.0)

    def observe_transfer(self, src: NodeId, dst: NodeId, nbytes: int, seconds: float) -> None:
        """A measured round trip: ``nbytes`` sent from ``src`` to ``dst``, a small reply back."""
        if not (math.isfinite(seconds) and seconds > 0) or nbytes < 0:
            return
        state = self._state(src, dst)
        bandwidth = state.mbps.value if state.mbps.value else self.default.bandwidth_mbps
        if nbytes <= self.rtt_max_bytes:
            serialization_s = nbytes * 8.0 / (bandwidth * 1e6)
            state.rtt_ms.update(max(seconds - serialization_s, 0.0) * 1000.0)
        if nbytes >= self.bandwidth_min_bytes:
            rtt_s = (state.rtt_ms.value if state.rtt_ms.value is not None else 0.0) / 1000.0
            serialization_s = seconds - rtt_s
            if serialization_s >= self.min_serialization_share * seconds:
                state.mbps.update(nbytes * 8.0 / serialization_s / 1e6)

    def estimate(self, src: NodeId, dst: NodeId) -> LinkEstimate:
        """The current estimate, falling back to the default for what has not been measured."""
        state = self._links.get((src, dst))
        if state is None:
            return self.default
        rtt = state.rtt_ms.value if state.rtt_ms.value is not None else self.default.rtt_ms
        mbps = state.mbps.value if state.mbps.value else self.default.bandwidth_mbps
        return LinkEstimate(bandwidth_mbps=mbps, rtt_ms=rtt)

    def estimates(self) -> dict[tuple[NodeId, NodeId], LinkEstimate]:
        """Every measured pair (for gossip and for the planner's ``Network``)."""
        return {pair: self.estimate(*pair) for pair in self._links}
