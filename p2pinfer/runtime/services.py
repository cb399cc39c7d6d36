"""Everything a running node is made of, built once by ``Node.start`` and read by the routes.

Why one object: the routes, the telemetry loop and the health report need the same dozen
services; passing them as one typed bundle keeps the node itself wiring only, and a route
module never reaches into the node.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from p2pinfer.membership import GossipAgent
from p2pinfer.planning.latency_model import ComputeLatencyModel, LinkLatencyModel
from p2pinfer.planning.selection import ArmSelection
from p2pinfer.protocol.auth import Verifier
from p2pinfer.runtime.cluster_view import NodeDirectory
from p2pinfer.runtime.controller import Controller
from p2pinfer.runtime.device_state import DeviceState
from p2pinfer.runtime.learning_exchange import StatisticsSharing
from p2pinfer.runtime.metrics import NodeMetrics
from p2pinfer.runtime.model_host import ModelHost
from p2pinfer.runtime.request_gate import RequestGate
from p2pinfer.runtime.stage import StageService
from p2pinfer.runtime.warmup import CodecCosts, UnitWarmup
from zoo.backend import BackendInfo


@dataclass(frozen=True)
class NodeServices:
    node_id: str
    url: str
    policy: str
    started_at: float
    metrics: NodeMetrics
    gate: RequestGate
    device: DeviceState
    host: ModelHost
    link_model: LinkLatencyModel
    compute_model: ComputeLatencyModel
    agent: GossipAgent
    directory: NodeDirectory
    stage: StageService
    selection: ArmSelection
    sharing: StatisticsSharing | None
    controller: Controller
    peer_refusals: Counter[str] = field(default_factory=Counter)
    """Peer messages this node refused, by reason (a wrong secret shows here first)."""
    warmups: tuple[UnitWarmup, ...] = ()  # one per compute unit, in the order of --units
    backends: tuple[BackendInfo, ...] = ()  # every backend, and why each unavailable one is missing
    peer_verifier: Verifier | None = None
    """The verifier of incoming peer messages (its nonce cache size is a metric)."""
    codec_costs: CodecCosts | None = None
    """The boundary-codec costs this node measured at start and plans with (``/v1/health``)."""


__all__ = ["NodeServices"]
