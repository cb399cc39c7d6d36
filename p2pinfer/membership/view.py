"""A node's view of the cluster and the merge of incoming member records.

The merge is deterministic given its inputs (the view, the records, the time passed in): no
clock reads, no randomness. The real node and the gossip simulation run this same code.

Precedence (``supersedes``), SWIM style: higher incarnation wins; at the same incarnation
the later failure-detector state wins (alive < suspect < dead < left, and left is final for
that incarnation); at the same state the higher heartbeat wins. Only a node itself raises
its incarnation: when it learns that others suspect it or think it dead (refutation), and
when it restarts (incarnations are seeded from wall-clock milliseconds).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import msgspec

from p2pinfer.membership.messages import LIVE_STATUSES, Digest, Member, Status
from p2pinfer.types import NodeId


class ChangeKind(enum.Enum):
    JOINED = "joined"
    UPDATED = "updated"
    """New incarnation or revision, same liveness: news worth gossiping."""
    REFRESHED = "refreshed"
    """Only heartbeat/soft state (load, heat, links) moved: not gossiped as news."""
    SUSPECTED = "suspected"
    CONFIRMED = "confirmed"
    """Another node independently suspects an already suspect member (Lifeguard)."""
    DIED = "died"
    LEFT = "left"
    REVIVED = "revived"
    """A suspect, dead or departed member is alive again with a higher incarnation."""
    REFUTED = "refuted"
    """This node raised its own incarnation to deny a suspicion or death about itself."""


class Change(NamedTuple):
    """One effect of a merge. ``member`` is the record to gossip for it."""

    node_id: NodeId
    kind: ChangeKind
    member: Member
    previous: Status | None

    @property
    def newsworthy(self) -> bool:
        return self.kind is not ChangeKind.REFRESHED


class MergeResult(NamedTuple):
    changes: list[Change]
    corrections: list[Member]
    """Local records that beat the incoming ones on membership (incarnation, status or
    revision): sending them back in a reply is how a stale peer, or a suspected node
    that does not know it yet, catches up within one exchange."""


class Suspicion:
    """Local bookkeeping of one suspicion: when this node learned it, and who suspects."""

    __slots__ = ("incarnation", "started_at", "confirmers")

    def __init__(self, incarnation: int, started_at: float, confirmers: set[NodeId]) -> None:
        self.incarnation = incarnation
        self.started_at = started_at
        self.confirmers = confirmers


def supersedes(incoming: Member, current: Member) -> bool:
    """True if ``incoming`` is newer than ``current`` (two records of the same node)."""
    if incoming.incarnation != current.incarnation:
        return incoming.incarnation > current.incarnation
    if incoming.status != current.status:
        return incoming.status > current.status  # Status values are its precedence
    return incoming.heartbeat > current.heartbeat


def _identity_hash(member: Member) -> int:
    text = f"{member.node_id}\x00{member.incarnation}\x00{int(member.status)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _membership_differs(a: Member, b: Member) -> bool:
    return a.incarnation != b.incarnation or a.status is not b.status or a.revision != b.revision


class View:
    """Every member record this node holds, plus the bookkeeping the failure detector needs.

    ``members`` maps node id to its newest known record (this node's own included);
    dead and departed members stay as tombstones until ``reap``ed, then their last
    incarnation is remembered in ``graveyard`` so a stale record cannot resurrect them.
    A list of live ids is kept beside the dict so random peer choice is O(fanout).
    """

    GRAVEYARD_SIZE = 10_000

    def __init__(self, own: Member) -> None:
        self.self_id: NodeId = own.node_id
        self.members: dict[NodeId, Member] = {}
        self.suspicions: dict[NodeId, Suspicion] = {}
        self.departed_at: dict[NodeId, float] = {}
        self.graveyard: dict[NodeId, int] = {}
        self._live: list[NodeId] = []
        self._live_index: dict[NodeId, int] = {}
        self._fingerprint = 0
        self.version = 0
        """Grows whenever membership (incarnation, status, revision) changes: a cache key."""
        self._put(own, None)

    @classmethod
    def from_records(cls, own: Member, records: Iterable[Member], now: float = 0.0) -> View:
        view = cls(own)
        merge(view, records, now)
        return view

    def replicate(self, own: Member) -> View:
        """A copy of this view as node ``own.node_id`` would hold it (the simulation builds
        a converged cluster with this instead of N^2 merges)."""
        clone = View.__new__(View)
        clone.self_id = own.node_id
        clone.members = dict(self.members)
        clone.suspicions = {}
        clone.departed_at = dict(self.departed_at)
        clone.graveyard = dict(self.graveyard)
        clone._live = list(self._live)
        clone._live_index = dict(self._live_index)
        clone._fingerprint = self._fingerprint
        clone.version = self.version
        if own.node_id in clone.members:
            clone._put(own, clone.members[own.node_id])
        else:
            clone._put(own, None)
        return clone

    # -- reading -------------------------------------------------------------------------
    @property
    def own(self) -> Member:
        return self.members[self.self_id]

    def get(self, node_id: str) -> Member | None:
        return self.members.get(NodeId(node_id))

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    @property
    def live_ids(self) -> list[NodeId]:
        """Ids of alive and suspect members, this node included (do not mutate)."""
        return self._live

    @property
    def live_count(self) -> int:
        return len(self._live)

    def is_live(self, node_id: NodeId) -> bool:
        return node_id in self._live_index

    def digest(self) -> Digest:
        return Digest(members=len(self.members), fingerprint=self._fingerprint)

    # -- writing -------------------------------------------------------------------------
    def _put(self, member: Member, previous: Member | None) -> None:
        """Store ``member``, keeping the live list, fingerprint and departure times right."""
        node_id = member.node_id
        self.members[node_id] = member
        if previous is None or _membership_differs(previous, member):
            self.version += 1
            if previous is None or previous.incarnation != member.incarnation or previous.status is not member.status:
                if previous is not None:
                    self._fingerprint ^= _identity_hash(previous)
                self._fingerprint ^= _identity_hash(member)
        live = member.status <= Status.SUSPECT
        if live and node_id not in self._live_index:
            self._live_index[node_id] = len(self._live)
            self._live.append(node_id)
        elif not live and node_id in self._live_index:
            self._drop_live(node_id)
        if member.status is not Status.SUSPECT:
            self.suspicions.pop(node_id, None)

    def _drop_live(self, node_id: NodeId) -> None:
        index = self._live_index.pop(node_id)
        last = self._live.pop()
        if last != node_id:
            self._live[index] = last
            self._live_index[last] = index

    def set_own(self, member: Member) -> Change | None:
        """Replace this node's own record (the owner's edits: heartbeat, load, variants)."""
        if member.node_id != self.self_id:
            raise ValueError(f"set_own got a record of {member.node_id}, this view belongs to {self.self_id}")
        previous = self.own
        if member == previous:
            return None
        self._put(member, previous)
        kind = ChangeKind.UPDATED if _membership_differs(member, previous) else ChangeKind.REFRESHED
        if member.status is Status.LEFT and previous.status is not Status.LEFT:
            kind = ChangeKind.LEFT
        return Change(member.node_id, kind, member, previous.status)

    def mark(self, member: Member, now: float, kind: ChangeKind) -> Change:
        """Store a record this node produced about another node (suspect, dead)."""
        previous = self.members.get(member.node_id)
        self._put(member, previous)
        if member.status in (Status.DEAD, Status.LEFT):
            self.departed_at.setdefault(member.node_id, now)
        return Change(member.node_id, kind, member, None if previous is None else previous.status)

    def reap(self, now: float, tombstone_s: float) -> list[NodeId]:
        """Forget members dead or departed for longer than ``tombstone_s``."""
        expired = [node_id for node_id, since in self.departed_at.items() if now - since >= tombstone_s]
        for node_id in expired:
            del self.departed_at[node_id]
            if node_id == self.self_id:
                continue
            member = self.members.pop(node_id, None)
            if member is None:
                continue
            self._fingerprint ^= _identity_hash(member)
            self.version += 1
            self.graveyard[node_id] = member.incarnation
            if len(self.graveyard) > self.GRAVEYARD_SIZE:
                del self.graveyard[next(iter(self.graveyard))]
        return expired


def _refute(view: View, incoming: Member) -> Change:
    own = view.own
    refuted = msgspec.structs.replace(
        own, incarnation=max(own.incarnation, incoming.incarnation) + 1, heartbeat=own.heartbeat + 1,
        status=Status.ALIVE, suspected_by=None)
    view._put(refuted, own)
    return Change(view.self_id, ChangeKind.REFUTED, refuted, incoming.status)


def _kind_of(incoming: Member, current: Member) -> ChangeKind:
    status = incoming.status
    if status is not current.status:
        if status is Status.SUSPECT:
            return ChangeKind.SUSPECTED
        if status is Status.DEAD:
            return ChangeKind.DIED
        if status is Status.LEFT:
            return ChangeKind.LEFT
        return ChangeKind.REVIVED
    if _membership_differs(incoming, current):
        return ChangeKind.UPDATED
    return ChangeKind.REFRESHED


def merge(view: View, incoming: Iterable[Member], now: float) -> MergeResult:
    """Fold ``incoming`` records into ``view``; return what changed and what to correct.

    A record about this node that would beat its own is refuted (own incarnation raised
    above it) instead of applied; a node that is leaving does not refute. A suspect record
    for a member already suspect at that incarnation counts as a confirmation if it names
    a suspector not seen yet. Deterministic for given inputs.
    """
    changes: list[Change] = []
    corrections: list[Member] = []
    members = view.members
    for record in incoming:
        node_id = record.node_id
        if node_id == view.self_id:
            own = view.own
            if own.status is not Status.LEFT and supersedes(record, own):
                changes.append(_refute(view, record))
            continue
        current = members.get(node_id)
        if current is None:
            if view.graveyard.get(node_id, -1) >= record.incarnation:
                continue
            view._put(record, None)
            view.graveyard.pop(node_id, None)
            status = record.status
            if status is Status.SUSPECT:
                view.suspicions[node_id] = Suspicion(record.incarnation, now, {record.suspected_by or node_id})
                kind = ChangeKind.SUSPECTED
            elif status is Status.ALIVE:
                kind = ChangeKind.JOINED
            else:
                view.departed_at.setdefault(node_id, now)
                kind = ChangeKind.DIED if status is Status.DEAD else ChangeKind.LEFT
            changes.append(Change(node_id, kind, record, None))
            continue
        if supersedes(record, current):
            kind = _kind_of(record, current)
            view._put(record, current)
            if record.status is Status.SUSPECT:
                suspicion = view.suspicions.get(node_id)
                suspector = record.suspected_by or node_id
                if suspicion is None or suspicion.incarnation != record.incarnation:
                    view.suspicions[node_id] = Suspicion(record.incarnation, now, {suspector})
                elif suspector not in suspicion.confirmers:
                    suspicion.confirmers.add(suspector)
                    kind = ChangeKind.CONFIRMED
            elif record.status in LIVE_STATUSES:
                view.departed_at.pop(node_id, None)
            else:
                view.departed_at.setdefault(node_id, now)
            changes.append(Change(node_id, kind, record, current.status))
            continue
        if record.status is Status.SUSPECT and current.status is Status.SUSPECT \
                and record.incarnation == current.incarnation:
            suspicion = view.suspicions.get(node_id)
            suspector = record.suspected_by or node_id
            if suspicion is not None and suspector not in suspicion.confirmers:
                suspicion.confirmers.add(suspector)
                changes.append(Change(node_id, ChangeKind.CONFIRMED, record, current.status))
            continue
        if _membership_differs(current, record) and supersedes(current, record):
            corrections.append(current)
    return MergeResult(changes, corrections)


def live_members(view: View) -> list[Member]:
    members = view.members
    return [members[node_id] for node_id in view.live_ids]
