"""SWIM failure detection with the cheap parts of Lifeguard, as pure state transitions.

Each protocol period a node probes one member chosen by randomised round-robin (every
member is probed once per cycle, so detection time is bounded). The probe is the gossip
exchange itself; if it fails, ``indirect_probes`` other members are asked to probe the
target (``ping-req``) while the prober retries once directly. If nobody reaches it, it is
probed again first thing next round, and if that fails too (or someone already suspects
it) the target becomes *suspect*: the suspicion is gossiped, and the suspected node, when
it hears it, refutes by raising its incarnation. A suspicion that is not refuted in time
turns into *dead*.

Lifeguard ideas kept because they are cheap:

* the suspicion timeout scales with log10 N (dissemination takes O(log N) rounds), and
  starts long (``max_multiplier`` x the minimum) and shrinks towards the minimum as
  independent suspectors confirm it: a real failure is confirmed by several probers and
  declared quickly, a false suspicion from one lossy path has a long time to be refuted;
* a local health score (``LocalHealth``) that grows when this node's own probes fail
  without any helper answering, and when it has to refute a suspicion about itself, and
  scales its probe timeout: a slow or overloaded node stops accusing healthy peers.

Every function here takes ``now`` as an argument and reads no clock; the probe I/O itself
is in ``gossip.GossipAgent``.
"""

from __future__ import annotations

import math
import random

import msgspec

from p2pinfer.membership.messages import Member, Status
from p2pinfer.membership.view import Change, ChangeKind, Suspicion, View
from p2pinfer.types import NodeId


def suspicion_timeouts(live_members: int, interval_s: float, multiplier: float = 4.0,
                       max_multiplier: float = 6.0) -> tuple[float, float]:
    """(minimum, maximum) suspicion timeout in seconds for a cluster of ``live_members``."""
    minimum = multiplier * max(1.0, math.log10(max(live_members, 1))) * interval_s
    return minimum, minimum * max_multiplier


def suspicion_timeout(confirmations: int, minimum_s: float, maximum_s: float, expected_confirmations: int) -> float:
    """Lifeguard's shrinking timeout: ``maximum`` with no independent confirmation, falling
    logarithmically to ``minimum`` at ``expected_confirmations``."""
    if expected_confirmations <= 0:
        return minimum_s
    if confirmations <= 0:
        return maximum_s
    fraction = math.log(confirmations + 1) / math.log(expected_confirmations + 1)
    return max(minimum_s, maximum_s - (maximum_s - minimum_s) * fraction)


def suspect(view: View, node_id: NodeId, now: float) -> Change | None:
    """This node's probe of ``node_id`` failed, directly and indirectly.

    An alive member becomes suspect (suspected by this node); an already suspect one gets
    this node as an independent confirmation. Returns the change to gossip, if any."""
    current = view.members.get(node_id)
    if current is None or node_id == view.self_id:
        return None
    if current.status is Status.ALIVE:
        record = msgspec.structs.replace(current, status=Status.SUSPECT, suspected_by=view.self_id)
        change = view.mark(record, now, ChangeKind.SUSPECTED)
        view.suspicions[node_id] = Suspicion(record.incarnation, now, {view.self_id})
        return change
    if current.status is Status.SUSPECT:
        suspicion = view.suspicions.get(node_id)
        if suspicion is None:
            view.suspicions[node_id] = Suspicion(current.incarnation, now, {view.self_id})
            return None
        if view.self_id in suspicion.confirmers:
            return None
        suspicion.confirmers.add(view.self_id)
        record = msgspec.structs.replace(current, suspected_by=view.self_id)
        return Change(node_id, ChangeKind.CONFIRMED, record, Status.SUSPECT)
    return None


def expire_suspicions(view: View, now: float, minimum_s: float, maximum_s: float,
                      expected_confirmations: int) -> list[Change]:
    """Declare dead every suspect whose (confirmation-scaled) timeout has passed."""
    changes: list[Change] = []
    for node_id, suspicion in list(view.suspicions.items()):
        timeout = suspicion_timeout(len(suspicion.confirmers) - 1, minimum_s, maximum_s, expected_confirmations)
        if now - suspicion.started_at < timeout:
            continue
        current = view.members.get(node_id)
        if current is None or current.status is not Status.SUSPECT:
            view.suspicions.pop(node_id, None)
            continue
        dead = msgspec.structs.replace(current, status=Status.DEAD)
        changes.append(view.mark(dead, now, ChangeKind.DIED))
    return changes


class LocalHealth:
    """Lifeguard's local health multiplier: 0 is healthy; each point adds one probe timeout."""

    __slots__ = ("score", "maximum")

    def __init__(self, maximum: int = 8) -> None:
        self.score = 0
        self.maximum = maximum

    def worse(self) -> None:
        self.score = min(self.maximum, self.score + 1)

    def better(self) -> None:
        self.score = max(0, self.score - 1)

    @property
    def multiplier(self) -> int:
        return self.score + 1


class ProbeSchedule:
    """Randomised round-robin over live members: a shuffled cycle, rebuilt when exhausted,
    so each member is probed once per cycle (SWIM's bounded detection time).

    A member whose probe failed (directly and through helpers) is probed again first in the
    next round, and only a second consecutive failure makes it suspect: under independent
    message loss p a healthy member is then accused with probability ~q² instead of q (q
    being one round's failure probability), which keeps suspicions, and the refutation
    traffic they cause, rare at the cost of one round of detection time."""

    __slots__ = ("_queue", "_failed_once")

    def __init__(self) -> None:
        self._queue: list[NodeId] = []
        self._failed_once: set[NodeId] = set()

    def next_target(self, view: View, rng: random.Random) -> NodeId | None:
        for _ in range(2):
            while self._queue:
                node_id = self._queue.pop()
                if node_id != view.self_id and view.is_live(node_id):
                    return node_id
                self._failed_once.discard(node_id)
            self._queue = [node_id for node_id in view.live_ids if node_id != view.self_id]
            rng.shuffle(self._queue)
        return None

    def probe_failed(self, node_id: NodeId) -> bool:
        """Record a failed probe; True if it is the second in a row (time to suspect)."""
        if node_id in self._failed_once:
            self._failed_once.discard(node_id)
            return True
        self._failed_once.add(node_id)
        self._queue.append(node_id)  # probed again first, next round
        return False

    def probe_succeeded(self, node_id: NodeId) -> None:
        self._failed_once.discard(node_id)


def leave(own: Member) -> Member:
    """This node's record for a graceful departure: ``left`` is final for its incarnation."""
    return msgspec.structs.replace(own, status=Status.LEFT, heartbeat=own.heartbeat + 1, revision=own.revision + 1)
