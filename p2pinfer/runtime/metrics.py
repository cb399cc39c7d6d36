"""Prometheus metrics of one node, on a registry of its own (several nodes may share a
process in tests). Served as text at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("p2pinfer_requests", "Inference requests by outcome", ["outcome"],
                                registry=registry)
        self.latency = Histogram("p2pinfer_request_latency_seconds", "Entry-node latency of answered requests",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("p2pinfer_queue_depth", "Jobs waiting in the EDF queue", registry=registry)
        self.in_flight = Gauge("p2pinfer_in_flight", "Requests being handled", registry=registry)
        self.deadline_misses = Counter("p2pinfer_deadline_misses", "Requests that missed their deadline",
                                       registry=registry)
        self.block_compute = Histogram("p2pinfer_block_compute_seconds", "Compute time per block",
                                       ["variant", "block"], buckets=LATENCY_BUCKETS, registry=registry)
        self.rejected_inputs = Counter("p2pinfer_rejected_inputs", "Bad inputs refused with a 4xx", ["reason"],
                                       registry=registry)
        self.batch_size = Histogram("p2pinfer_batch_size", "Micro-batch sizes run", buckets=(1, 2, 4, 8, 16, 32),
                                    registry=registry)
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
        self._block_children: dict[tuple[str, int], Histogram] = {}

    def block_compute_of(self, variant: str, block: int) -> Histogram:
        """The block-time histogram of one (variant, block), looked up once: it is observed for
        every block of every request, and a labelled lookup costs more than the observation."""
        child = self._block_children.get((variant, block))
        if child is None:
            child = self._block_children[(variant, block)] = self.block_compute.labels(variant=variant,
                                                                                        block=str(block))
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)
