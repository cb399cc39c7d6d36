"""The view of the cluster that placement and split execution need: who hosts what, how fast,
how loaded, and how the links between nodes look.

``PeerDirectory`` is the interface; a node backs it with its gossip view (membership), tests
and benchmarks with ``StaticDirectory``. It is deliberately small: the planner needs per-node
block profiles, a slowdown, a queueing delay and link estimates, not the whole membership
record.

A directory also holds *local suspicion*: when a hop to a peer fails, the sender calls
``mark_failed`` so that the next plans (its own re-plan included) avoid that peer at once,
without waiting for the failure detector. Gossip (or ``mark_alive``) clears it when the peer
is heard from again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from p2pinfer.errors import InvalidPlanningProblem
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.spreading import PushBack
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

DEFAULT_UNITS: tuple[str, ...] = ("cpu",)


@dataclass(frozen=True)
class PeerView:
    """One node as the planner sees it (this node included).

    ``hosted`` maps a variant to the inclusive block range the node holds. ``block_ms`` is
    the node's per-block profile of that variant (milliseconds, full speed, no load; an exit
    block's time includes its head), indexed by block number over the whole variant (blocks
    outside ``hosted`` are ignored). ``slowdown`` is what load and heat do to that profile
    right now (``planner.compute_slowdown``: load factor / throttle factor), ``queue_ms`` the
    predicted wait before a new segment starts there. ``unit_factors`` optionally scales the
    profile per compute unit (a GPU beside the CPU); a unit not named runs at factor 1.
    ``mean_block_ms``: the node's own view only, where ``block_ms`` holds its blocks' p90s —
    their means (a peer's gossiped ``block_ms`` is already its mean).
    """

    node_id: NodeId
    url: str
    alive: bool = True
    hosted: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    block_ms: Mapping[str, Sequence[float]] = field(default_factory=dict)
    units: tuple[str, ...] = DEFAULT_UNITS
    queue_ms: float = 0.0
    slowdown: float = 1.0
    unit_factors: Mapping[str, float] = field(default_factory=dict)
    mean_block_ms: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.slowdown > 0:
            raise InvalidPlanningProblem(f"{self.node_id}: slowdown must be > 0, got {self.slowdown}")
        if not self.queue_ms >= 0:
            raise InvalidPlanningProblem(f"{self.node_id}: queue_ms must be >= 0, got {self.queue_ms}")
        if not self.units:
            raise InvalidPlanningProblem(f"{self.node_id}: a node needs at least one compute unit")
        for variant, (first, last) in self.hosted.items():
            if not 0 <= first <= last:
                raise InvalidPlanningProblem(f"{self.node_id}: bad hosted range [{first}, {last}] of {variant}")

    def hosts(self, variant: str, first: int, last: int) -> bool:
        """Whether the node holds every block in ``[first, last]`` of ``variant``."""
        hosted = self.hosted.get(variant)
        return hosted is not None and hosted[0] <= first <= last <= hosted[1]


@runtime_checkable
class PeerDirectory(Protocol):
    """What placement and the stage service ask about the cluster."""

    @property
    def self_id(self) -> NodeId:
        """This node's id."""
        ...

    def peers(self) -> list[PeerView]:
        """Every known node, this one included; failed or dead ones with ``alive=False``."""
        ...

    def link(self, src: NodeId | str, dst: NodeId | str) -> LinkEstimate | None:
        """The link estimate from ``src`` to ``dst`` (None: they cannot exchange tensors)."""
        ...

    def mark_failed(self, node_id: NodeId | str) -> None:
        """Suspect ``node_id`` locally: plans avoid it until it is heard from again."""
        ...

    def mark_busy(self, node_id: NodeId | str, wait_s: float) -> None:
        """``node_id`` refused work for load and asked to wait ``wait_s``: its queue term is at
        least what is left of that wait (``spreading.PushBack``)."""
        ...


def find_peer(directory: PeerDirectory, node_id: NodeId | str) -> PeerView | None:
    """One node's view in ``directory``, or None when it is unknown."""
    for view in directory.peers():
        if view.node_id == node_id:
            return view
    return None


class StaticDirectory:
    """A directory from fixed peer views and links, for tests and benchmarks.

    Links are looked up in order: a pair measured by ``link_model`` (what this node learnt
    from its own transfers; for a pair to this node, its measurement from it), the configured
    ``links`` (the pair, then the reverse pair), then ``default_link``. ``update`` replaces a
    peer's view (a benchmark heating a node, a test changing a queue), which is what gossip does
    in a real node.
    """

    def __init__(self, self_id: NodeId | str, peers: Sequence[PeerView],
                 links: Mapping[tuple[NodeId, NodeId], LinkEstimate] | None = None, *,
                 default_link: LinkEstimate | None = None, link_model: LinkLatencyModel | None = None) -> None:
        self._self_id = NodeId(self_id)
        self._peers: dict[NodeId, PeerView] = {}
        for view in peers:
            if view.node_id in self._peers:
                raise InvalidPlanningProblem(f"peer {view.node_id} appears twice")
            self._peers[view.node_id] = view
        if self._self_id not in self._peers:
            raise InvalidPlanningProblem(f"the directory of {self._self_id} must include its own view")
        self._links = dict(links or {})
        self.default_link = default_link
        self.link_model = link_model
        self._failed: set[NodeId] = set()
        self.push_back = PushBack()

    @property
    def self_id(self) -> NodeId:
        return self._self_id

    def peers(self) -> list[PeerView]:
        return [self._as_seen(view) for view in self._peers.values()]

    def peer(self, node_id: NodeId | str) -> PeerView | None:
        view = self._peers.get(NodeId(node_id))
        return None if view is None else self._as_seen(view)

    def _as_seen(self, view: PeerView) -> PeerView:
        """The configured view with this node's local suspicion and push-back applied."""
        if view.node_id in self._failed and view.alive:
            view = replace(view, alive=False)
        pushed_back_ms = self.push_back.wait_ms(view.node_id)
        if pushed_back_ms > view.queue_ms:
            view = replace(view, queue_ms=pushed_back_ms)
        return view

    def link(self, src: NodeId | str, dst: NodeId | str) -> LinkEstimate | None:
        pair = (NodeId(src), NodeId(dst))
        if self.link_model is not None and self._self_id in pair:
            # as a node's directory does: links are roughly symmetric and this node's own
            # measurement is the freshest, for the way back (a result's return) too
            measured = self.link_model.estimates().get(pair if pair[0] == self._self_id else (pair[1], pair[0]))
            if measured is not None:
                return measured
        found = self._links.get(pair)
        if found is None:
            found = self._links.get((pair[1], pair[0]))
        return self.default_link if found is None else found

    def mark_failed(self, node_id: NodeId | str) -> None:
        if NodeId(node_id) != self._self_id:
            self._failed.add(NodeId(node_id))

    def mark_busy(self, node_id: NodeId | str, wait_s: float) -> None:
        if NodeId(node_id) != self._self_id:
            self.push_back.refused(node_id, wait_s)

    def mark_alive(self, node_id: NodeId | str) -> None:
        """Clear a local suspicion (what hearing from the node through gossip does)."""
        self._failed.discard(NodeId(node_id))

    @property
    def failed(self) -> frozenset[NodeId]:
        """Nodes suspected locally."""
        return frozenset(self._failed)

    def update(self, view: PeerView) -> None:
        """Add or replace one node's view."""
        self._peers[view.node_id] = view

    def set_link(self, src: NodeId | str, dst: NodeId | str, estimate: LinkEstimate | None) -> None:
        """Configure (or, with None, forget) the link of one ordered pair."""
        pair = (NodeId(src), NodeId(dst))
        if estimate is None:
            self._links.pop(pair, None)
        else:
            self._links[pair] = estimate


__all__ = ["DEFAULT_UNITS", "PeerDirectory", "PeerView", "StaticDirectory", "find_peer"]
