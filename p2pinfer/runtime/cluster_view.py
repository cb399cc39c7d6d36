"""The cluster as this node's planner sees it: itself (live, exact) plus the peers its
gossip view knows, converted to ``PeerView``s, with link estimates from its own
measurements (links from this node) and from the peers' gossiped measurements (links
between two peers, so edge→edge chains can be priced).

Gossip carries a node's hosted blocks as its per-block profile of each variant, with
``NOT_HOSTED`` (-1) for blocks the node does not hold: one field serves both.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView
from p2pinfer.planning.planner import compute_slowdown
from p2pinfer.planning.spreading import Outstanding, PushBack, expected_wait_ms
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

NOT_HOSTED = -1.0
UNIT_FACTOR_PREFIX = "@unit:"
PEERS_CACHE_S = 0.02  # one request asks for the view several times; gossip changes it far slower
FAILED_MEMORY_S = 10.0  # a peer a hop failed on is avoided this long unless gossip refutes it
DEFAULT_PEER_LINK = LinkEstimate(bandwidth_mbps=100.0, rtt_ms=1.0)


def hosted_profile(block_ms: list[float], first: int, last: int) -> list[float]:
    """A variant's profile as gossiped: measured ms for hosted blocks, NOT_HOSTED elsewhere."""
    return [ms if first <= index <= last else NOT_HOSTED for index, ms in enumerate(block_ms)]


def hosted_range(profile: list[float]) -> tuple[int, int] | None:
    hosted = [index for index, ms in enumerate(profile) if ms >= 0]
    if not hosted:
        return None
    return hosted[0], hosted[-1]


def member_view(member, url_scheme: str = "http", outstanding: int = 0, pushed_back_ms: float = 0.0,
                own_finished: int = 0, jobs: int | None = None) -> PeerView:
    """A gossip ``Member`` as the planner's ``PeerView``; ``outstanding``: this node's own
    requests in flight there, ``pushed_back_ms``: what is left of the wait it gave with its
    last load refusal, ``own_finished``: this node's requests its last known load still counts
    but that have finished (all three ``spreading.expected_wait_ms``); ``jobs``: its queued and
    computing jobs when a stage reply said so after its record was heard (default: the record's)."""
    from p2pinfer.membership.messages import LIVE_STATUSES

    hosted: dict[str, tuple[int, int]] = {}
    block_ms: dict[str, list[float]] = {}
    unit_factors: dict[str, float] = {}
    for variant, profile in member.variants.items():
        if variant.startswith(UNIT_FACTOR_PREFIX):
            if profile and profile[0] > 0:
                unit_factors[variant[len(UNIT_FACTOR_PREFIX):]] = profile[0]
            continue
        span = hosted_range(profile)
        if span is not None:
            hosted[variant] = span
            block_ms[variant] = [max(ms, 0.0) for ms in profile]
    load = member.load
    throttle = min(max(member.thermal.throttle, 0.0), 0.95)
    mean_block_ms = _mean_segment_ms(block_ms)
    return PeerView(
        node_id=NodeId(member.node_id), url=f"{url_scheme}://{member.address}",
        alive=member.status in LIVE_STATUSES, hosted=hosted, block_ms=block_ms,
        units=tuple(member.compute_units) or ("cpu",),
        queue_ms=expected_wait_ms(load.queue_depth + load.in_flight if jobs is None else jobs, outstanding,
                                  mean_block_ms, pushed_back_ms, own_finished),
        slowdown=compute_slowdown(1.0, 1.0 - throttle), unit_factors=unit_factors)


def _mean_segment_ms(block_ms: dict[str, list[float]]) -> float:
    totals = [sum(profile) for profile in block_ms.values() if profile]
    return sum(totals) / len(totals) if totals else 0.0


class NodeDirectory:
    """``PeerDirectory`` over this node's live state and its gossip agent (if any)."""

    def __init__(self, node_id: str, self_view: Callable[[], PeerView], link_model: LinkLatencyModel,
                 agent=None, outstanding: Outstanding | None = None) -> None:
        self._self_id = NodeId(node_id)
        self.outstanding = outstanding
        self._self_view = self_view
        self.link_model = link_model
        self.agent = agent
        self._failed: dict[str, float] = {}
        self.push_back = PushBack()
        self._cached: tuple[float, tuple[int, int], list[PeerView]] | None = None  # (built at, members and
        # this node's requests sent or back then, views)
        self._heard_at: dict[str, float] = {}  # member -> when its current record (its load) was heard
        # member -> (jobs its last stage reply said, when, its (incarnation, heartbeat) then)
        self._replied: dict[str, tuple[int, float, tuple[int, int]]] = {}
        if agent is not None:
            agent.on_change(self._heard)

    def heard_load(self, node_id: str, jobs: int, incarnation: int, heartbeat: int, counted: bool = False) -> None:
        """A peer's stage reply said how many jobs it had as it answered, at which gossip
        heartbeat: fresher than any gossiped record of it up to that heartbeat (a record can
        reach this node long after it was taken, relayed by another). ``counted``: the request
        that reply answers is this node's own, which ``Outstanding`` counts until the hop's
        caller is done; it is kept in (+1) and ``finished_since`` takes it out with this node's
        other finished requests."""
        self._replied[str(node_id)] = (max(jobs, 0) + int(counted), time.monotonic(), (incarnation, heartbeat))
        self._cached = None

    def _heard(self, change) -> None:
        """A newer record of a member arrived (gossip calls this for every one, refreshes
        included): its gossiped load dates from about now (``spreading.Outstanding.finished_since``)."""
        self._heard_at[str(change.node_id)] = time.monotonic()
        self._cached = None

    @property
    def self_id(self) -> NodeId:
        return self._self_id

    def peers(self) -> list[PeerView]:
        """Cached for ``PEERS_CACHE_S``, unless a member joined, a newer record of one was
        heard, or this node sent or got back a request since: a node that ``/v1/peers``
        already lists must be known to the next plan (a pinned plan naming it was refused as
        unknown for up to the cache's age), and a plan must not see the request answered
        just before it as still running at its peer."""
        now = time.monotonic()
        members = len(self.agent.view) if self.agent is not None else 0
        sent = self.outstanding.version if self.outstanding is not None else 0
        cached = self._cached
        if cached is not None and now - cached[0] < PEERS_CACHE_S and (members, sent) == cached[1]:
            return cached[2]
        views = self._build_views()
        self._cached = (now, (members, sent), views)
        return views

    def _build_views(self) -> list[PeerView]:
        views = [self._self_view()]
        if self.agent is not None:
            now = time.monotonic()
            for member in self.agent.members():
                if member.node_id == self._self_id:
                    continue
                outstanding, finished, jobs = 0, 0, None
                heard_at = self._heard_at.get(member.node_id)
                replied = self._replied.get(member.node_id)
                if replied is not None and (member.incarnation, member.heartbeat) <= replied[2]:
                    jobs, heard_at, _ = replied
                if self.outstanding is not None:
                    outstanding = self.outstanding.count(member.node_id)
                    if heard_at is not None:
                        finished = self.outstanding.finished_since(member.node_id, heard_at)
                view = member_view(member, outstanding=outstanding, own_finished=finished, jobs=jobs,
                                   pushed_back_ms=self.push_back.wait_ms(member.node_id))
                failed_at = self._failed.get(member.node_id)
                if failed_at is not None and now - failed_at < FAILED_MEMORY_S:
                    view = PeerView(node_id=view.node_id, url=view.url, alive=False, hosted=view.hosted,
                                    block_ms=view.block_ms, units=view.units, queue_ms=view.queue_ms,
                                    slowdown=view.slowdown)
                views.append(view)
        return views

    def link(self, src: NodeId | str, dst: NodeId | str) -> LinkEstimate | None:
        if src == dst:
            return None
        if src == self._self_id:
            return self.link_model.estimate(NodeId(src), NodeId(dst))
        if dst == self._self_id:  # links are roughly symmetric; our own measurement is the freshest
            return self.link_model.estimate(NodeId(dst), NodeId(src))
        if self.agent is not None:
            member = self.agent.member(str(src))
            if member is not None and str(dst) in member.links:
                gossiped = member.links[str(dst)]
                return LinkEstimate(bandwidth_mbps=max(gossiped.bandwidth_mbps, 1e-3), rtt_ms=max(gossiped.rtt_ms, 0))
        return DEFAULT_PEER_LINK

    def mark_failed(self, node_id: NodeId | str) -> None:
        self._failed[str(node_id)] = time.monotonic()
        self._cached = None

    def mark_busy(self, node_id: NodeId | str, wait_s: float) -> None:
        if NodeId(node_id) != self._self_id:
            self.push_back.refused(node_id, wait_s)
            self._cached = None

    def url_of(self, node_id: str) -> str | None:
        for view in self.peers():
            if view.node_id == node_id:
                return view.url
        return None
