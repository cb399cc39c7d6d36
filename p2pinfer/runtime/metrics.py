"""Prometheus metrics of one node, on a registry of its own (several nodes may share a
process in tests). Served as text at ``GET /metrics``."""

from __future__ import annotations

import bisect
import collections
import math
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


FOLD_AFTER = 512
"""Observations a histogram child keeps unfolded at most (a scrape folds them all)."""


class HotHistogramChild:
    """One label set of a ``HotHistogram``: a count per bucket and a sum. An observation is
    appended to a deque (atomic, no lock, no bisect on the request path); they are folded into
    the buckets in one loop when a scrape reads them, or once ``FOLD_AFTER`` are waiting."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._pending: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        pending = self._pending
        pending.append(amount)
        if len(pending) >= FOLD_AFTER:
            self._fold()

    def _fold(self) -> None:
        """Move the waiting observations into the buckets; one appended meanwhile (another
        thread) is folded now or by the next fold, never lost (``popleft`` until empty)."""
        with self._lock:
            pending, bounds, counts = self._pending, self._bounds, self._counts
            total = self._sum
            while pending:
                amount = pending.popleft()
                counts[bisect.bisect_left(bounds, amount)] += 1  # the first bucket whose bound is >= amount
                total += amount
            self._sum = total

    def snapshot(self) -> tuple[list[int], float]:
        self._fold()
        with self._lock:
            return list(self._counts), self._sum


class HotHistogram:
    """A Prometheus histogram for what is observed on every block or request, exposed exactly
    as ``prometheus_client.Histogram`` exposes one (``_bucket``/``_count``/``_sum``).

    Why not that class: its ``observe`` takes a lock for the sum and another for the bucket,
    and walks the buckets in Python — with the per-block node bookkeeping around it, about
    13 µs of every block of every request, a tenth of a tiny model's whole request path on
    the event loop. Here an observation is a bisect and one lock; the work of turning counts
    into cumulative buckets moves to the scrape."""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self._bounds = (*(float(bound) for bound in buckets), math.inf)
        self._children: dict[tuple[str, ...], HotHistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> HotHistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
            with self._lock:
                child = self._children.setdefault(values, HotHistogramChild(self._bounds))
        return child

    def observe(self, amount: float) -> None:
        """An observation of the histogram without labels."""
        self.labels().observe(amount)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            counts, total = child.snapshot()
            cumulative, buckets = 0, []
            for bound, count in zip(self._bounds, counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(values), buckets, total)
        yield family


class _BlockHistograms(dict[int, HotHistogramChild]):
    """A variant's block-time histograms by block number, each labelled on first use."""

    def __init__(self, metrics: NodeMetrics, variant: str) -> None:
        super().__init__()
        self._metrics = metrics
        self._variant = variant

    def __missing__(self, block: int) -> HotHistogramChild:
        child = self[block] = self._metrics.block_compute_of(self._variant, block)
        return child


class NodeMetrics:
    def __init__(self) -> None:
        self._block_children: dict[str, _BlockHistograms] = {}
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("p2pinfer_requests", "Inference requests by outcome", ["outcome"],
                                registry=registry)
        self.latency = HotHistogram("p2pinfer_request_latency_seconds", "Entry-node latency of answered requests",
                                    (), LATENCY_BUCKETS, registry)
        self.queue_depth = Gauge("p2pinfer_queue_depth", "Jobs waiting in the EDF queue", registry=registry)
        self.in_flight = Gauge("p2pinfer_in_flight", "Requests being handled", registry=registry)
        self.deadline_misses = Counter("p2pinfer_deadline_misses", "Requests that missed their deadline",
                                       registry=registry)
        self.block_compute = HotHistogram("p2pinfer_block_compute_seconds", "Compute time per block",
                                          ("variant", "block"), LATENCY_BUCKETS, registry)
        self.rejected_inputs = Counter("p2pinfer_rejected_inputs", "Bad inputs refused with a 4xx", ["reason"],
                                       registry=registry)
        self.batch_size = HotHistogram("p2pinfer_batch_size", "Micro-batch sizes run", (), (1, 2, 4, 8, 16, 32),
                                       registry)
        self.peer_rejections = Counter("p2pinfer_peer_auth_rejections", "Peer messages refused (401)",
                                       ["reason"], registry=registry)
        self.replans = Counter("p2pinfer_replans", "Hops re-planned after a failure", registry=registry)
        self.stages = Counter("p2pinfer_stages", "Stage requests served for peers", ["outcome"], registry=registry)
        self.gossip_events = Gauge("p2pinfer_gossip_events", "Gossip and failure-detector events so far",
                                   ["kind"], registry=registry)
        self.members = Gauge("p2pinfer_members", "Cluster members by status, as this node sees them", ["status"],
                             registry=registry)
        self.error_answers = Counter("p2pinfer_error_answers", "Error answers on every route, by code",
                                     ["code"], registry=registry)
        self.internal_errors = Counter("p2pinfer_internal_errors", "Unexpected exceptions answered as a typed 500",
                                       ["route"], registry=registry)
        self.state_entries = Gauge("p2pinfer_state_entries", "Entries of tables keyed by client-chosen values",
                                   ["table"], registry=registry)
        self.state_evictions = Counter("p2pinfer_state_evictions", "Entries evicted from bounded tables",
                                       ["table"], registry=registry)
        self.feedback = Counter("p2pinfer_feedback", "Feedback messages applied", ["kind"], registry=registry)

    def block_compute_of(self, variant: str, block: int) -> HotHistogramChild:
        """The block-time histogram of one (variant, block) (``HotHistogram.labels`` keeps its children)."""
        return self.block_compute.labels(variant, str(block))

    def block_compute_children(self, variant: str) -> _BlockHistograms:
        """The block-time histograms of a variant, indexed by block: found once, not labelled
        (a string per block number and a lookup) on every block of every run."""
        children = self._block_children.get(variant)
        if children is None:
            children = self._block_children[variant] = _BlockHistograms(self, variant)
        return children

    def render(self) -> bytes:
        return generate_latest(self.registry)
