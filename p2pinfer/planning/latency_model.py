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
  subtracted using the current bandwidth estimate, and from any larger message whose whole
  round trip took less than the RTT estimate (an upper bound of the RTT: without it an
  estimate taken while the peer was stalled stayed wrong for as long as every later message
  was larger than ``rtt_max_bytes``);
- bandwidth from large transfers (at least ``bandwidth_min_bytes``, e.g. activations): the
  throughput ``nbytes * 8 / (seconds - rtt)``, kept only when serialization is at least
  ``min_serialization_share`` of the sample (otherwise RTT jitter dominates the quotient).

Both are EWMAs with the same bias correction. Every mean also tracks its spread (an EWMA of
the absolute deviation of samples from the mean, as TCP's RTTVAR), so that a decision that
must hold most of the time prices the tail, not the mean: ``Ewma.tail`` is the p90 of a
normal with that spread (mean + ``P90_SPREADS`` x mean absolute deviation). The feasibility
mask and the admission of a job use tails; the shares of a measured segment and the queue
behind work use means. Samples that are not finite or not positive
are ignored. Links react fast to bad news and slowly to good: a sample that says the link got
worse (less bandwidth, more RTT) moves the estimate with weight ``bad_news_alpha``; a second
sample in a row that says it is more than ``confirm_factor`` times worse is taken as the new
estimate outright, so that after a step drop at most two requests cross the old link's
estimate — while one stalled transfer alone only moves it part way. A sample that says the
link got better moves it with ``alpha``; every sample is clipped to ``outlier_factor`` times
the estimate (except a confirmed drop), so one lucky transfer does not lure tight deadlines
onto a link that is still bad. A time-out is a
sample too (``observe_timeout``): the transfer took at least that long. Every link records
when it was last measured (``age_s``), so a node can probe a link before betting a tight
deadline on an old estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId, UnitName

P90_SPREADS = 1.6
"""The p90 of a normal is its mean + 1.28 standard deviations, and the mean absolute deviation
is 0.8 of a standard deviation: mean + 1.6 mean absolute deviations."""


@dataclass
class Ewma:
    """An exponentially weighted mean, bias-corrected while it has few samples, and its spread
    (the same average of each sample's absolute deviation from the mean before it)."""

    alpha: float = 0.2
    value: float | None = None
    count: int = 0
    outlier_factor: float = 10.0
    spread: float = 0.0

    def seed(self, value: float) -> None:
        """Start from a prior (counts as one sample)."""
        self.value, self.count = value, 1

    def update(self, sample: float, *, alpha: float | None = None, outlier_factor: float | None = None) -> float | None:
        """Move towards ``sample``; ``alpha`` and ``outlier_factor`` override this mean's for one sample."""
        if not (math.isfinite(sample) and sample >= 0):
            return self.value
        if self.value is None:
            self.value, self.count = sample, 1
            return self.value
        factor = self.outlier_factor if outlier_factor is None else outlier_factor
        if self.value > 0 and self.count >= 2:
            sample = min(max(sample, self.value / factor), self.value * factor)
        self.count += 1
        weight = max(self.alpha if alpha is None else alpha, 1.0 / self.count)
        deviation = abs(sample - self.value)
        self.spread += weight * (deviation - self.spread)
        self.value += weight * (sample - self.value)
        return self.value

    def tail(self, spreads: float = P90_SPREADS) -> float | None:
        """The mean plus ``spreads`` spreads (default: the p90, see ``P90_SPREADS``)."""
        return None if self.value is None else self.value + spreads * self.spread


ComputeKey = tuple[NodeId, UnitName, str, int]


class ComputeLatencyModel:
    """Per (node, unit, variant, block) compute time in ms, learnt from measured hops."""

    def __init__(self, alpha: float = 0.2, outlier_factor: float = 10.0, own_node: NodeId | None = None) -> None:
        """``own_node``: the node this model plans for; plans on its own route (run where the
        request entered) and plans on peers each have their entry overhead
        (``entry_overhead_ms``)."""
        self.alpha = alpha
        self.outlier_factor = outlier_factor
        self.own_node = own_node
        self._estimates: dict[ComputeKey, Ewma] = {}
        self._route_residuals: dict[NodeId, PredictionResidual] = {}
        self._entry_overheads: dict[bool, PredictionResidual] = {}  # plans on this node (True) or on peers

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

    def predict_tail(self, node_id: NodeId, unit: UnitName, variant: str, block: int) -> float | None:
        """The block's p90 (``Ewma.tail``): what the planner prices a peer's block at."""
        entry = self._estimates.get((node_id, unit, variant, block))
        return None if entry is None else entry.tail()

    def observe_entry_overhead(self, node_id: NodeId | str, overhead_ms: float) -> None:
        """What an answered request took at its entry beyond its plan's measured parts (queue,
        compute and transfer of every segment): decoding, selecting, encoding, the entry's
        event loop. ``node_id``: where the plan ran (this node, or peers: a hop adds its own
        handling on both ends)."""
        local = NodeId(node_id) == self.own_node
        overhead = self._entry_overheads.get(local)
        if overhead is None:
            overhead = self._entry_overheads[local] = PredictionResidual()
        overhead.observe(0.0, overhead_ms)

    def entry_overhead_ms(self, node_id: NodeId | str) -> float:
        """The measured entry overhead of plans of ``node_id``'s kind (on this node, or on
        peers); a kind not seen yet starts from the other (a hop costs at least what the
        entry does around a local plan); 0 before any answer."""
        local = NodeId(node_id) == self.own_node
        overhead = self._entry_overheads.get(local) or self._entry_overheads.get(not local)
        return max(overhead.mean, 0.0) if overhead is not None and overhead.count else 0.0

    def observe_route(self, node_id: NodeId, residual_ms: float) -> None:
        """What an answered request whose plan ran on ``node_id`` alone took beyond this model's
        prediction of its parts and the entry overhead (``entry_overhead_ms``) it was priced
        with: the route's own bias."""
        residual = self._route_residuals.get(node_id)
        if residual is None:
            residual = self._route_residuals[node_id] = PredictionResidual()
        residual.observe(0.0, residual_ms)

    def route_overhead_ms(self, node_id: NodeId | str) -> float:
        """What a plan on ``node_id`` takes beyond its compute, queue and transfers: the entry
        overhead of its kind (measured on every answer, ``entry_overhead_ms``) plus the route's
        own bias (its mean residual beyond that, ``PredictionResidual``); never below 0: a
        route that comes early is not made to look faster than its parts. The planner adds it
        once to a plan using the node, as it adds the node's queue.

        Measured on the shipped scenarios, a plan's parts miss a fixed cost per route: plans
        run on the entry itself came 3.4 ms late at the median (the entry decodes, selects and
        answers around the compute; its event loop is shared), plans from the Pi to a peer
        about 7 ms late (a hop whose handling on both ends no link estimate sees).

        A route's bias counts in full after ``min_samples`` answers and shrunk toward 0 before
        (``n`` answers weigh ``n / (n + min_samples)``); the entry overhead is shared by every
        route of the kind. (Until session 9 a route with few answers started from the mean
        residual of the other peer routes: those were the edge's, whose p90 compute tails
        already covered the overhead — residual about 0 — so a peer the Pi rarely used, the
        Jetson, was priced 6-10 ms early: bandwidth-trace, 9 of its 34 robot answers late.)"""
        node = NodeId(node_id)
        bias = 0.0
        residual = self._route_residuals.get(node)
        if residual is not None and residual.count:
            weight = 1.0 if residual.count >= residual.min_samples else \
                residual.count / (residual.count + residual.min_samples)
            bias = weight * residual.mean
        return max(self.entry_overhead_ms(node) + bias, 0.0)

    def entry_overhead_summary(self) -> dict[str, dict[str, float | int]]:
        """The entry overhead of each kind (``/v1/health``: ``planner.entry_overhead_ms``)."""
        return {("local" if local else "peers"): overhead.summary()
                for local, overhead in sorted(self._entry_overheads.items())}

    def route_summary(self) -> dict[str, dict[str, float | int]]:
        """Every route's residual (``/v1/health``: ``planner.route_residual_ms``)."""
        return {node: residual.summary() for node, residual in sorted(self._route_residuals.items())}

    def block_ms(self, node_id: NodeId, unit: UnitName, variant: str) -> dict[int, float]:
        """Every known block time of a variant on a unit (the planner's ``CandidateUnit.block_ms``
        before slowdown)."""
        return {key[3]: entry.value for key, entry in self._estimates.items()
                if key[:3] == (node_id, unit, variant) and entry.value is not None}


@dataclass
class _LinkState:
    rtt_ms: Ewma
    mbps: Ewma
    measured_at: float = -math.inf  # monotonic seconds of the last sample
    rtt_worse_streak: int = 0  # samples in a row far worse than the estimate
    mbps_worse_streak: int = 0
    large_transfers: int = 0  # transfers of at least ``bandwidth_min_bytes`` measured (a sample or not)


class LinkLatencyModel:
    """Per ordered (src, dst) node pair: RTT and bandwidth learnt from measured round trips."""

    def __init__(self, default: LinkEstimate = LinkEstimate(bandwidth_mbps=100.0, rtt_ms=1.0), *,
                 alpha: float = 0.2, rtt_max_bytes: int = 8 * 1024, bandwidth_min_bytes: int = 32 * 1024,
                 min_serialization_share: float = 0.25, outlier_factor: float = 10.0,
                 bad_news_alpha: float = 0.5, confirm_factor: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.default = default
        self.alpha = alpha
        self.bad_news_alpha = bad_news_alpha
        self.confirm_factor = confirm_factor
        self.clock = clock
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

    def _update(self, mean: Ewma, sample: float, worse: bool, streak: int) -> int:
        """Bad news counts fast, a confirmed drop at once, good news slowly (module docstring).
        Returns the new count of far-worse samples in a row."""
        if mean.value is None or not worse:
            mean.update(sample)
            return 0
        far = sample > mean.value * self.confirm_factor or sample * self.confirm_factor < mean.value
        streak = streak + 1 if far else 0
        if streak >= 2 and math.isfinite(sample) and sample >= 0:
            mean.value, mean.count = sample, mean.count + 1  # a confirmed step: take it outright
        else:
            mean.update(sample, alpha=self.bad_news_alpha)
        return streak

    def _update_rtt(self, state: _LinkState, ms: float) -> None:
        worse = state.rtt_ms.value is not None and ms > state.rtt_ms.value
        state.rtt_worse_streak = self._update(state.rtt_ms, ms, worse, state.rtt_worse_streak)
        state.measured_at = self.clock()

    def _update_mbps(self, state: _LinkState, mbps: float) -> None:
        worse = state.mbps.value is not None and mbps < state.mbps.value
        state.mbps_worse_streak = self._update(state.mbps, mbps, worse, state.mbps_worse_streak)
        state.measured_at = self.clock()

    def observe_rtt(self, src: NodeId, dst: NodeId, seconds: float) -> None:
        """A round trip of a message small enough that serialization does not matter (a probe)."""
        if math.isfinite(seconds) and seconds >= 0:
            self._update_rtt(self._state(src, dst), seconds * 1000.0)

    def observe_transfer(self, src: NodeId, dst: NodeId, nbytes: int, seconds: float) -> None:
        """A measured round trip: ``nbytes`` sent from ``src`` to ``dst``, a small reply back."""
        if not (math.isfinite(seconds) and seconds > 0) or nbytes < 0:
            return
        state = self._state(src, dst)
        bandwidth = state.mbps.value if state.mbps.value else self.default.bandwidth_mbps
        if nbytes <= self.rtt_max_bytes:
            serialization_s = nbytes * 8.0 / (bandwidth * 1e6)
            self._update_rtt(state, max(seconds - serialization_s, 0.0) * 1000.0)
        elif state.rtt_ms.value is not None and seconds * 1000.0 < state.rtt_ms.value:
            # Any round trip bounds the RTT from above: an over-estimate (first probes sent while
            # the peer was busy starting) is corrected by the next larger messages too.
            self._update_rtt(state, seconds * 1000.0)
        if nbytes >= self.bandwidth_min_bytes:
            state.large_transfers += 1
            rtt_s = (state.rtt_ms.value if state.rtt_ms.value is not None else 0.0) / 1000.0
            serialization_s = seconds - rtt_s
            if serialization_s >= self.min_serialization_share * seconds:
                self._update_mbps(state, nbytes * 8.0 / serialization_s / 1e6)

    def observe_timeout(self, src: NodeId, dst: NodeId, nbytes: int, seconds: float) -> None:
        """No reply within ``seconds`` after sending ``nbytes``: the link is at most this fast.

        A bound, not a measurement: it only ever lowers the estimate (bad news), never raises it."""
        if not (math.isfinite(seconds) and seconds > 0) or nbytes < 0:
            return
        state = self._state(src, dst)
        rtt_ms = state.rtt_ms.value if state.rtt_ms.value is not None else self.default.rtt_ms
        current = state.mbps.value if state.mbps.value else self.default.bandwidth_mbps
        if state.mbps.value is None:
            state.mbps.seed(current)
        if nbytes >= self.bandwidth_min_bytes and seconds * 1000.0 > rtt_ms:
            bound = nbytes * 8.0 / (seconds - rtt_ms / 1000.0) / 1e6
            if bound < current:
                self._update_mbps(state, bound)
        elif seconds * 1000.0 > rtt_ms:  # a small message that timed out: the round trip is at least this
            self._update_rtt(state, seconds * 1000.0)

    def bandwidth_measured(self, src: NodeId, dst: NodeId) -> bool:
        """Whether a transfer large enough to tell bandwidth has been measured on the link (small
        round trips give only its RTT: until then its bandwidth is the default). Also true when
        such a transfer crossed too fast to tell (serialization under ``min_serialization_share``
        of it): the link is then at least as fast as the default says."""
        state = self._links.get((src, dst))
        return state is not None and (state.mbps.value is not None or state.large_transfers > 0)

    def age_s(self, src: NodeId, dst: NodeId) -> float:
        """Seconds since the link was last measured (infinite when never)."""
        state = self._links.get((src, dst))
        return math.inf if state is None else self.clock() - state.measured_at

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


class PredictionResidual:
    """How far the planner's predictions are from what answers took at an entry node.

    A plan's predicted latency sums compute, transfers and queues; what it does not see — the
    entry's own work before and after the plan (decoding, selection, encoding the answer),
    an event loop shared with other requests, a host busier than when it profiled — shows up
    as ``measured - predicted`` on every answered request. Its signed EWMA and spread (as
    ``Ewma``) and tail (mean + ``P90_SPREADS`` spreads) are shown in ``/v1/health``: a
    positive mean says plans come late, a large spread that predictions are noisy. A request
    refused for its deadline is a sample at the deadline: it would have taken at least that.

    Not a margin of the mask: tried as one (the mask adding the tail to every arm, 3 seeds of
    ``bandwidth-trace`` and ``thermal``, ``benchmarks/results/adapt/residual-margin-trial``),
    misses moved within the seeds' spread (1.4 % vs 2.1 %, 4.9 % vs 4.6 %) while thermal's
    accuracy fell from 92 % to 84 %: one residual for every route is too blunt (local plans
    came 2.5 ms late, plans to a slow peer 4 ms late, plans to the edge 3 ms early with a
    17 ms spread). Kept per route instead (``ComputeLatencyModel.route_overhead_ms``).
    """

    def __init__(self, alpha: float = 0.1, min_samples: int = 10) -> None:
        self.alpha = alpha
        self.min_samples = min_samples
        self.mean = 0.0
        self.spread = 0.0
        self.count = 0

    def observe(self, predicted_ms: float, measured_ms: float) -> None:
        residual = measured_ms - predicted_ms
        if not math.isfinite(residual):
            return
        self.count += 1
        weight = max(self.alpha, 1.0 / self.count)
        self.spread += weight * (abs(residual - self.mean) - self.spread) if self.count > 1 else 0.0
        self.mean += weight * (residual - self.mean)

    def tail_ms(self) -> float:
        """The residual's p90 (ms), 0 until ``min_samples`` answers were seen."""
        if self.count < self.min_samples:
            return 0.0
        return self.mean + P90_SPREADS * self.spread

    def summary(self) -> dict[str, float | int]:
        """What ``/v1/health`` shows under ``planner.prediction_residual_ms``."""
        return {"mean": round(self.mean, 3), "spread": round(self.spread, 3), "p90": round(self.tail_ms(), 3),
                "samples": self.count}
