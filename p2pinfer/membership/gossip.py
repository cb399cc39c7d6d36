"""The gossip agent a node hosts: push-pull dissemination, SWIM probing, the coordinator role.

Every ``interval_s`` the agent runs one protocol round (``run_round``):

1. bumps its own heartbeat, expires suspicions (suspect -> dead), forgets old tombstones,
   and, if it holds the coordinator role, recomputes and publishes guidance;
2. exchanges records (push-pull) with ``fanout`` members: the probe target chosen by
   randomised round-robin, plus random others; a joining or lonely node contacts its seeds;
3. if the probe target did not answer, asks ``indirect_probes`` members to probe it
   (``ping-req``) while retrying it directly once; if nobody could, probes it again next
   round and suspects it after that second failure (``swim.ProbeSchedule``);
4. every ``stats_interval_s``, sends its own bandit statistics and demand to the
   coordinator and pulls the merged statistics back.

Message size is bounded whatever the cluster size: a message holds at most ``max_records``
records: the sender's own, the peer's own if the sender suspects it (so it refutes at
once), corrections of what the peer sent that is out of date, news from the piggyback
buffer (``dissemination``), and up to ``refresh_records`` random live records that refresh
soft state (load, heat), so bytes per node stay flat as the cluster grows. A joining node
pulls the full view in pages of ``sync_page_records``.

All I/O goes through the injected ``send(address, message, timeout_s) -> reply``
coroutine: ``membership.http.HttpTransport`` in a node, an in-memory function in the
simulation (``benchmarks/gossip_sim.py``), which drives this same class on simulated time
through ``clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec

from p2pinfer.errors import BadHeader, NodeIdTaken, P2PError
from p2pinfer.membership import swim
from p2pinfer.membership.coordinator import (
    GuidanceSettings,
    StatsMerger,
    compute_guidance,
    elect,
    guidance_differs,
    stats_fingerprint,
    sum_float64_blobs,
)
from p2pinfer.membership.dissemination import Dissemination, retransmit_limit
from p2pinfer.membership.messages import (
    Address,
    Exchange,
    ExchangeReply,
    GossipMessage,
    Guidance,
    Load,
    Member,
    ProbeReply,
    ProbeRequest,
    StatsReply,
    StatsReport,
    Status,
    Thermal,
)
from p2pinfer.membership.view import Change, ChangeKind, MergeResult, View, live_members, merge
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

logger = logging.getLogger(__name__)

Send = Callable[[Address, GossipMessage, float, NodeId | None], Awaitable[GossipMessage]]
"""Deliver ``message`` to the node at ``address`` and return its reply within ``timeout_s``;
raise ``P2PError`` (e.g. ``PeerUnavailable``), ``OSError`` or ``TimeoutError`` on failure.
The fourth argument is the recipient's node id when the agent knows it (a member of its
view), None for a first contact (a seed, an introduction): the HTTP transport signs the
message for that id, so only that node accepts it, and for the address otherwise."""

ChangeListener = Callable[[Change], object]
StatsListener = Callable[[int, dict[str, bytes]], object]

_TRANSPORT_ERRORS = (P2PError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class GossipSettings:
    interval_s: float = 1.0
    """Protocol period: one push-pull round and one probe."""
    fanout: int = 3
    probe_timeout_s: float = 0.5
    """Direct probe timeout (scaled by the local health multiplier)."""
    indirect_probes: int = 3
    suspicion_multiplier: float = 4.0
    """Minimum suspicion timeout = multiplier * max(1, log10 N) * interval."""
    suspicion_max_multiplier: float = 6.0
    """An unconfirmed suspicion waits this many times the minimum."""
    expected_confirmations: int = 3
    retransmit_multiplier: float = 4.0
    """λ in λ·⌈log10(N+1)⌉ sends of each piece of news."""
    max_records: int = 16
    """Most records in one message (a sync page comes on top)."""
    refresh_records: int = 2
    """Random live records added to each message to refresh soft state (load, heat). Two: a
    message then carries about as many records in a 4-node cluster as in a 16-node one, so
    gossip bytes per node stay flat as the cluster grows (6 made them grow 3x from 4 to 16
    nodes, 3 still 1.9x); a node's own record rides on every exchange it makes or answers, so its
    load reaches the peers it works with within a round or two."""
    sync_page_records: int = 64
    resync_interval_s: float = 30.0
    """At most one full-sync pass per this long when a peer's digest counts more members."""
    dead_contact_probability: float = 0.1
    """Chance per round of one extra exchange with a dead (not yet forgotten) member, so two
    halves of a healed partition find each other again (memberlist's gossip to the dead)."""
    tombstone_s: float = 60.0
    guidance_interval_s: float = 2.0
    guidance_refresh_s: float = 30.0
    """Publish a new guidance epoch at least this often even if nothing moved."""
    stats_interval_s: float = 5.0
    stats_report_ttl_s: float = 60.0
    max_links: int = 3
    """Link estimates a record carries: the most recently measured peers (the links in use);
    23 bytes each, and a record is ~150 bytes without them."""
    max_local_health: int = 8
    jitter: float = 0.1
    """Fraction of the interval randomised so nodes do not gossip in lockstep."""


def wall_clock_incarnation() -> int:
    """Incarnation of a starting node: wall-clock milliseconds, so a restarted node outranks
    every record of its previous life (which could only have been refuted upwards by a
    handful of increments, far fewer than the milliseconds a restart takes)."""
    return time.time_ns() // 1_000_000


class GossipAgent:
    """Membership, failure detection and the coordinator role of one node.

    The node feeds its own state with ``update_self`` / ``record_link`` / ``publish_stats``
    and reads the cluster with ``members``, ``live_members``, ``member``, ``coordinator``,
    ``guidance`` and ``merged_stats``. Incoming peer messages go to ``handle`` (see
    ``membership.http.gossip_routes``).
    """

    def __init__(self, node_id: str, address: str, send: Send, *, seeds: Iterable[str] = (),
                 settings: GossipSettings | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, incarnation: int | None = None,
                 eligible_coordinator: bool = True, stats_merger: StatsMerger = sum_float64_blobs,
                 guidance_settings: GuidanceSettings | None = None) -> None:
        self.node_id = NodeId(node_id)
        self.address = Address(address)
        self.settings = settings or GossipSettings()
        self.guidance_settings = guidance_settings or GuidanceSettings()
        self._send = send
        self._clock = clock
        self._rng = rng or random.Random()
        own = Member(node_id=self.node_id,
                     incarnation=wall_clock_incarnation() if incarnation is None else incarnation,
                     address=self.address, eligible_coordinator=eligible_coordinator)
        self.view = View(own)
        self._news = Dissemination()
        self._news.add(own)
        self._schedule = swim.ProbeSchedule()
        self.health = swim.LocalHealth(self.settings.max_local_health)
        self.send_failures: dict[Address, str] = {}
        """The last failure of each address that did not answer (cleared when it does)."""
        self._seeds: list[Address] = []
        self._introductions: list[Address] = []
        for seed in seeds:
            self.add_seed(seed)
        self._sync_cursor: str | None = ""
        self._last_sync_at = -math.inf
        self._stats_merger = stats_merger
        self._own_report: StatsReport | None = None
        self._reports: dict[NodeId, tuple[StatsReport, float]] = {}
        self._merged: tuple[int, dict[str, bytes]] = (0, {})
        self._merged_fingerprint = stats_fingerprint({})
        self._epoch = 0
        self._last_guidance_check = -math.inf
        self._last_publish_at = -math.inf
        self._adopted: Guidance | None = None
        self._last_stats_at = -math.inf
        self._leader: NodeId | None = None
        self._leader_stale = True
        self._change_listeners: list[ChangeListener] = []
        self._stats_listeners: list[StatsListener] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.counters: Counter[str] = Counter()
        """Messages sent/failed/handled, probes, suspicions, deaths, refutations (for /metrics)."""
        self.identity_conflict: NodeIdTaken | None = None
        """Set when a peer refused this node's id (a live member holds it at another
        address); the agent then stops gossiping: it never joined (see ``check_identity``)."""
        self._conflict_seen: dict[tuple[NodeId, Address], float] = {}
        """(id, claimed address) -> when a live holder at another address last answered."""
        self._round_done = asyncio.Event()

    # -- the node's own record -------------------------------------------------------------
    def _edit_own(self, newsworthy: bool, **fields: object) -> None:
        own = self.view.own
        record = msgspec.structs.replace(own, heartbeat=own.heartbeat + 1,
                                         revision=own.revision + (1 if newsworthy else 0), **fields)
        self._note(self.view.set_own(record))

    def update_self(self, *, load: Load | None = None, thermal: Thermal | None = None,
                    variants: Mapping[str, list[float]] | None = None, compute_units: list[str] | None = None,
                    capacity_rps: float | None = None, eligible_coordinator: bool | None = None) -> None:
        """Feed this node's state into its record. Load, heat and capacity are soft state
        (they ride on the next exchanges); variants, compute units and eligibility are
        news (gossiped to everyone within O(log N) rounds)."""
        own = self.view.own
        fields: dict[str, object] = {}
        newsworthy = False
        if load is not None:
            fields["load"] = load
        if thermal is not None:
            fields["thermal"] = thermal
        if capacity_rps is not None:
            fields["capacity_rps"] = float(capacity_rps)
        if variants is not None and dict(variants) != own.variants:
            fields["variants"] = {name: [float(ms) for ms in profile] for name, profile in variants.items()}
            newsworthy = True
        if compute_units is not None and list(compute_units) != own.compute_units:
            fields["compute_units"] = list(compute_units)
            newsworthy = True
        if eligible_coordinator is not None and eligible_coordinator != own.eligible_coordinator:
            fields["eligible_coordinator"] = eligible_coordinator
            newsworthy = True
        if fields:
            self._edit_own(newsworthy, **fields)

    def record_link(self, peer_id: str, rtt_ms: float, bandwidth_mbps: float) -> None:
        """A link estimate measured from a real transfer; the record keeps the ``max_links``
        most recently measured peers."""
        links = dict(self.view.own.links)
        links.pop(peer_id, None)
        links[peer_id] = LinkEstimate(rtt_ms=float(rtt_ms), bandwidth_mbps=float(bandwidth_mbps))
        while len(links) > self.settings.max_links:
            del links[next(iter(links))]
        self._edit_own(False, links=links)

    def publish_stats(self, stats: Mapping[str, bytes], user_demand: Mapping[str, float] | None = None,
                      variant_demand: Mapping[str, float] | None = None) -> None:
        """This node's own bandit statistics (arm key -> blob, only what it learned itself)
        and the demand it saw (requests/s per user and per variant). Sent to the coordinator
        every ``stats_interval_s``; the merge comes back through ``merged_stats``."""
        self._own_report = StatsReport(sender=self.node_id, stats={arm: bytes(blob) for arm, blob in stats.items()},
                                       user_demand=dict(user_demand or {}),
                                       variant_demand=dict(variant_demand or {}))

    def replace_view(self, view: View) -> None:
        """Start from a prepared view (simulations and tests build converged clusters this
        way); forgets pending news and any sync in progress."""
        if view.self_id != self.node_id:
            raise ValueError(f"view belongs to {view.self_id}, not {self.node_id}")
        self.view = view
        self._news = Dissemination()
        self._sync_cursor = None
        self._last_sync_at = self._clock()
        self._leader_stale = True

    def add_seed(self, address: str) -> None:
        """A permanent contact point, tried while this node knows no live peer."""
        address = Address(address)
        if address != self.address and address not in self._seeds:
            self._seeds.append(address)
            self._introductions.append(address)

    def introduce(self, address: str) -> None:
        """Contact ``address`` once at the next round (mDNS and static peers use this)."""
        address = Address(address)
        if address != self.address and address not in self._introductions:
            self._introductions.append(address)

    def on_change(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def on_merged_stats(self, listener: StatsListener) -> None:
        self._stats_listeners.append(listener)

    # -- reading the cluster ---------------------------------------------------------------
    def members(self) -> list[Member]:
        """Every record held, tombstones (dead, left) included."""
        return list(self.view.members.values())

    def live_members(self) -> list[Member]:
        """Alive and suspect members, this node included."""
        return live_members(self.view)

    def member(self, node_id: str) -> Member | None:
        return self.view.get(node_id)

    def coordinator(self) -> NodeId | None:
        """The node holding the coordinator role in this node's view (maybe itself)."""
        if self._leader_stale:
            self._leader = elect(self.view)
            self._leader_stale = False
        return self._leader

    def guidance(self) -> Guidance | None:
        """The guidance to follow: the current coordinator's newest epoch; the last adopted
        one while the coordinator has published none (nodes keep serving on it)."""
        leader = self.coordinator()
        record = self.view.members.get(leader) if leader is not None else None
        published = record.guidance if record is not None else None
        if published is not None and (self._adopted is None or published.coordinator != self._adopted.coordinator
                                      or published.epoch > self._adopted.epoch):
            self._adopted = published
        return self._adopted

    def merged_stats(self) -> tuple[int, dict[str, bytes]]:
        """(version, arm key -> merged blob) last received from (or computed as) the coordinator."""
        return self._merged

    # -- bookkeeping -----------------------------------------------------------------------
    def _note(self, change: Change | None) -> None:
        if change is None:
            return
        if change.newsworthy:
            self._news.add(change.member)
            self.counters[f"change_{change.kind.value}"] += 1
            if self._leader is None or change.node_id <= self._leader:
                self._leader_stale = True  # only news about ids up to the leader's can move the role
        if change.kind is ChangeKind.REFUTED:
            self.health.worse()
        for listener in self._change_listeners:
            try:
                listener(change)
            except Exception:  # a listener must never stop the protocol
                logger.exception("membership change listener failed")

    def _absorb(self, records: list[Member], now: float) -> MergeResult:
        for record in records:
            if record.node_id == self.node_id and record.address != self.address:
                # another process gossips under this node's id (it got in before its
                # conflict was seen): this node keeps refuting, and says so once per address
                self.counters["identity_claims_seen"] += 1
                if self._conflict_seen.setdefault((self.node_id, record.address), now) == now:
                    logger.warning("another node at %s gossips under this node's id %r", record.address,
                                   str(self.node_id))
        result = merge(self.view, records, now)
        for change in result.changes:
            self._note(change)
        return result

    def _random_peers(self, count: int, exclude: set[NodeId]) -> list[NodeId]:
        live = self.view.live_ids
        if count <= 0 or len(live) <= 1:
            return []
        picked = self._rng.sample(live, min(len(live), count + len(exclude)))
        return [node_id for node_id in picked if node_id not in exclude][:count]

    def _records_for(self, peer_id: NodeId | None, exclude: set[NodeId] | None = None,
                     corrections: list[Member] | None = None) -> list[Member]:
        """The records of one outgoing message, at most ``max_records``: own record, what
        the peer should hear about itself, corrections, news, then random refreshes."""
        view = self.view
        limit = self.settings.max_records
        chosen: dict[NodeId, Member] = {self.node_id: view.own}
        if peer_id is not None:
            about_peer = view.members.get(peer_id)
            if about_peer is not None and about_peer.status is not Status.ALIVE:
                chosen[peer_id] = about_peer  # tell it now that it is suspected: it refutes at once
        for record in corrections or ():
            if len(chosen) >= limit // 2:
                break
            chosen.setdefault(record.node_id, record)
        skip = chosen.keys() | exclude if exclude else chosen.keys()
        news_limit = retransmit_limit(view.live_count, self.settings.retransmit_multiplier)
        for record in self._news.take(limit - len(chosen), news_limit, skip):
            chosen[record.node_id] = record
        room = min(limit - len(chosen), self.settings.refresh_records)
        if room > 0:
            live = view.live_ids
            for node_id in self._rng.sample(live, min(len(live), room + 2)):
                if node_id not in chosen and (exclude is None or node_id not in exclude):
                    chosen[node_id] = view.members[node_id]
                    room -= 1
                    if room == 0:
                        break
        return list(chosen.values())

    def _sync_page(self, cursor: str) -> tuple[list[Member], str | None]:
        ordered = sorted(node_id for node_id in self.view.members if node_id > cursor)
        page = ordered[: self.settings.sync_page_records]
        next_cursor = page[-1] if len(ordered) > len(page) else None
        return [self.view.members[node_id] for node_id in page], next_cursor

    # -- serving peers ---------------------------------------------------------------------
    async def handle(self, message: GossipMessage) -> GossipMessage:
        """Answer one authenticated peer message (the body of ``POST /v1/gossip``)."""
        now = self._clock()
        self.counters["handled"] += 1
        if message.sender == self.node_id:
            raise self._refuse_identity(message.sender, None, self.address)
        if isinstance(message, Exchange):
            await self._check_identity(message, now)
            result = self._absorb(message.records, now)
            incoming = {record.node_id for record in message.records}
            records = self._records_for(message.sender, incoming, result.corrections)
            sync_next = None
            if message.sync_cursor is not None:
                page, sync_next = self._sync_page(message.sync_cursor)
                included = {record.node_id for record in records}
                records.extend(record for record in page if record.node_id not in included)
            return ExchangeReply(sender=self.node_id, records=records, digest=self.view.digest(),
                                 sync_next=sync_next)
        if isinstance(message, ProbeRequest):
            self._absorb(message.records, now)
            acked = await self._exchange(message.target_address, message.target, sync=False)
            self.counters["probe_requests_served"] += 1
            return ProbeReply(sender=self.node_id, acked=acked, records=self._records_for(message.sender))
        if isinstance(message, StatsReport):
            leader = self.coordinator()
            if leader != self.node_id:
                return StatsReply(sender=self.node_id, coordinator=leader)
            self._reports[message.sender] = (message, now)
            version, merged = self._merged
            return StatsReply(sender=self.node_id, stats_version=version, coordinator=self.node_id,
                              merged=merged if message.have_version < version else None)
        raise BadHeader(f"a node does not accept {type(message).__name__} messages")

    # -- identity --------------------------------------------------------------------------
    async def _check_identity(self, message: Exchange, now: float) -> None:
        """Refuse (``NodeIdTaken``) an exchange from a node whose id a live member holds at
        another address, before any of its records are merged.

        SWIM-correct: a restart at the same address (higher incarnation) is no conflict; nor
        is a restart at a new address once the old holder is gone. The old address is probed
        (one signed exchange, shorter than the joiner's own timeout) and only a holder that
        answers under that id makes it a conflict; a verdict is remembered for a few
        rounds so a retrying joiner does not cost a probe per message."""
        claimed = next((record for record in message.records if record.node_id == message.sender), None)
        current = self.view.members.get(message.sender)
        if claimed is None or current is None or current.address == claimed.address \
                or not self.view.is_live(message.sender):
            return
        key = (message.sender, claimed.address)
        seen = self._conflict_seen.get(key)
        if seen is None or now - seen > 4 * self.settings.interval_s:
            if not await self._holder_answers(current):
                return  # the old holder is gone: a restart at a new address, let it in
            self._conflict_seen[key] = now
            while len(self._conflict_seen) > 256:
                del self._conflict_seen[next(iter(self._conflict_seen))]
        raise self._refuse_identity(message.sender, claimed.address, current.address)

    async def _holder_answers(self, holder: Member) -> bool:
        """True if the member at ``holder.address`` answers a signed exchange as itself."""
        message = Exchange(sender=self.node_id, records=self._records_for(holder.node_id),
                           digest=self.view.digest())
        reply = await self._call(holder.address, holder.node_id, message, 0.6 * self._probe_timeout())
        if not isinstance(reply, ExchangeReply) or reply.sender != holder.node_id:
            return False
        self._absorb(reply.records, self._clock())
        return True

    def _refuse_identity(self, node_id: NodeId, claimed: Address | None, holder: Address) -> NodeIdTaken:
        self.counters["identity_conflicts"] += 1
        where = f" at {claimed}" if claimed is not None else ""
        error = NodeIdTaken(f"node id {str(node_id)!r} is taken by a live member at {holder}; "
                            f"a second node{where} tried to join under it (give each node its own --node-id)")
        logger.warning("refused a join: %s", error.message)
        return error

    # -- the protocol round ----------------------------------------------------------------
    def _probe_timeout(self) -> float:
        return self.settings.probe_timeout_s * self.health.multiplier

    async def _call(self, address: Address, recipient: NodeId | None, message: GossipMessage,
                    timeout_s: float) -> GossipMessage | None:
        self.counters["sent"] += 1
        try:
            return await self._send(address, message, timeout_s, recipient)
        except NodeIdTaken as error:
            self.counters["identity_refused"] += 1
            if self.identity_conflict is None:
                logger.error("node id %r refused by %s: %s; this node stays out of the cluster",
                             str(self.node_id), address, error.message)
            self.identity_conflict = error
            self._stopping = True  # never joined: stop gossiping (and do not "leave" someone else's id)
            return None
        except _TRANSPORT_ERRORS as error:
            self.counters["send_failed"] += 1
            refused = isinstance(error, PermissionError)  # Unauthorized: our signature (secret) refused
            self.counters["refused_by_peer" if refused else "unreachable"] += 1
            text = f"{'refused our signature' if refused else 'unreachable'}: {error}"
            if self.send_failures.get(address) != text and (refused or address in self._seeds):
                # loud, once per change: a wrong secret or a dead seed leaves a node alone silently
                logger.warning("gossip to %s: %s", address, text)
            self.send_failures[address] = text
            if len(self.send_failures) > 1024:
                self.send_failures.pop(next(iter(self.send_failures)))
            return None
        self.send_failures.pop(address, None)

    async def _exchange(self, address: Address, peer_id: NodeId | None, sync: bool) -> bool:
        """One push-pull exchange (which doubles as the direct probe); True if answered."""
        cursor = self._sync_cursor if sync else None
        message = Exchange(sender=self.node_id, records=self._records_for(peer_id), digest=self.view.digest(),
                           sync_cursor=cursor)
        reply = await self._call(address, peer_id, message, self._probe_timeout())
        if not isinstance(reply, ExchangeReply):
            return False
        now = self._clock()
        self._absorb(reply.records, now)
        if cursor is not None:
            self._sync_cursor = reply.sync_next
            if reply.sync_next is None:
                self._last_sync_at = now
        elif (self._sync_cursor is None and reply.digest is not None
              and reply.digest.members > len(self.view.members)
              and now - self._last_sync_at >= self.settings.resync_interval_s):
            self._sync_cursor = ""  # the peer knows members this node has never heard of
        return True

    async def _indirect_probe(self, target: NodeId) -> None:
        record = self.view.members.get(target)
        if record is None:
            return
        helpers = self._random_peers(self.settings.indirect_probes, {self.node_id, target})
        timeout = 2 * self._probe_timeout()
        # Beside the ping-reqs, one more direct attempt (memberlist's TCP fallback ping): a
        # single lost message must not be enough to accuse a healthy node.
        retry = asyncio.ensure_future(self._exchange(record.address, target, sync=False))
        replies = await asyncio.gather(*(
            self._call(self.view.members[helper].address, helper,
                       ProbeRequest(sender=self.node_id, target=target, target_address=record.address,
                                    records=self._records_for(helper)), timeout)
            for helper in helpers))
        now = self._clock()
        acked = await retry
        for reply in replies:
            if isinstance(reply, ProbeReply):
                self._absorb(reply.records, now)
                acked = acked or reply.acked
        if acked:
            self.counters["indirect_acks"] += 1
            self._schedule.probe_succeeded(target)
            return
        if helpers and not any(isinstance(reply, ProbeReply) for reply in replies):
            self.health.worse()  # nobody answered, not even a nack: the problem may be here
        current = self.view.members.get(target)
        if self._schedule.probe_failed(target) or (current is not None and current.status is Status.SUSPECT):
            self._note(swim.suspect(self.view, target, now))

    def _tick(self, now: float) -> None:
        settings = self.settings
        minimum, maximum = swim.suspicion_timeouts(self.view.live_count, settings.interval_s,
                                                   settings.suspicion_multiplier, settings.suspicion_max_multiplier)
        for change in swim.expire_suspicions(self.view, now, minimum, maximum, settings.expected_confirmations):
            self._note(change)
        self.view.reap(now, settings.tombstone_s)
        if now - self._last_guidance_check >= settings.guidance_interval_s:
            self._last_guidance_check = now
            self._coordinate(now)

    async def run_round(self) -> None:
        """One protocol period. The loop started by ``start`` calls this every interval; the
        simulation calls it directly on simulated time."""
        if self.view.own.status is Status.LEFT:
            return
        now = self._clock()
        self._edit_own(False)
        self._tick(now)
        self.counters["rounds"] += 1
        view = self.view
        target = self._schedule.next_target(view, self._rng)
        exclude = {self.node_id} if target is None else {self.node_id, target}
        others = self._random_peers(self.settings.fanout - (target is not None), exclude)
        contacts: list[tuple[Address, NodeId | None]] = []
        if target is not None:
            contacts.append((view.members[target].address, target))
        contacts.extend((view.members[node_id].address, node_id) for node_id in others)
        if view.departed_at and self._rng.random() < self.settings.dead_contact_probability:
            departed = self._rng.choice(list(view.departed_at))
            record = view.members.get(departed)
            if record is not None and record.status is Status.DEAD:
                contacts.append((record.address, departed))
        known = {address for address, _ in contacts}
        if view.live_count <= 1:
            self._sync_cursor = self._sync_cursor if self._sync_cursor is not None else ""
            for seed in self._seeds:
                if seed not in self._introductions:
                    self._introductions.append(seed)
        introductions, self._introductions = self._introductions, []
        contacts.extend((address, None) for address in introductions if address not in known)
        if not contacts:
            return
        results = await asyncio.gather(*(
            self._exchange(address, peer_id, sync=index == 0) for index, (address, peer_id) in enumerate(contacts)))
        if target is not None:
            if results[0]:
                self.health.better()
                self._schedule.probe_succeeded(target)
            elif view.is_live(target):
                self.counters["probe_failed"] += 1
                await self._indirect_probe(target)
        await self._exchange_stats(self._clock())

    # -- coordinator role ------------------------------------------------------------------
    def _coordinate(self, now: float) -> None:
        if self.coordinator() != self.node_id:
            self._reports.clear()
            if self.view.own.guidance is not None:
                self._edit_own(True, guidance=None)  # lost the role: stop advertising old guidance
            return
        settings = self.settings
        node_stats: dict[NodeId, Mapping[str, bytes]] = {}
        user_usage: Counter[str] = Counter()
        variant_demand: Counter[str] = Counter()
        for sender, (_, received_at) in list(self._reports.items()):
            if now - received_at > settings.stats_report_ttl_s or not self.view.is_live(sender):
                del self._reports[sender]
        reports = [report for report, _ in self._reports.values()]
        if self._own_report is not None:
            reports.append(self._own_report)
        for report in reports:
            if report.stats:
                node_stats[report.sender] = report.stats
            user_usage.update(report.user_demand)
            variant_demand.update(report.variant_demand)
        seen_stats_version = max((m.guidance.stats_version for m in self.view.members.values() if m.guidance),
                                 default=0)
        merged = self._stats_merger(node_stats) if node_stats else {}
        fingerprint = stats_fingerprint(merged)
        if fingerprint != self._merged_fingerprint:
            self._merged_fingerprint = fingerprint
            self._merged = (max(self._merged[0], seen_stats_version) + 1, merged)
            for listener in self._stats_listeners:
                listener(*self._merged)
        # Epochs grow across coordinators: start above anything published before.
        self._epoch = max(self._epoch, max((m.guidance.epoch for m in self.view.members.values() if m.guidance),
                                           default=0))
        guidance = compute_guidance(self.view, dict(user_usage), self._merged[1], coordinator=self.node_id,
                                    epoch=self._epoch + 1, stats_version=self._merged[0],
                                    variant_demand=dict(variant_demand), settings=self.guidance_settings)
        current = self.view.own.guidance
        if (guidance_differs(current, guidance, self.guidance_settings.change_tolerance)
                or now - self._last_publish_at >= settings.guidance_refresh_s):
            self._epoch += 1
            self._last_publish_at = now
            self._edit_own(True, guidance=guidance)
            self.counters["guidance_published"] += 1

    async def _exchange_stats(self, now: float) -> None:
        if now - self._last_stats_at < self.settings.stats_interval_s:
            return
        leader = self.coordinator()
        if leader is None or leader == self.node_id:
            return
        guidance = self.guidance()
        behind = guidance is not None and guidance.stats_version > self._merged[0]
        if self._own_report is None and not behind:
            return
        self._last_stats_at = now
        report = self._own_report or StatsReport(sender=self.node_id)
        report = msgspec.structs.replace(report, have_version=self._merged[0])
        reply = await self._call(self.view.members[leader].address, leader, report, self._probe_timeout() * 4)
        if isinstance(reply, StatsReply) and reply.merged is not None and reply.stats_version > self._merged[0]:
            self._merged = (reply.stats_version, dict(reply.merged))
            self.counters["stats_pulled"] += 1
            for listener in self._stats_listeners:
                listener(*self._merged)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Run rounds every ``interval_s`` (jittered) until ``stop``; the first at once."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"gossip-{self.node_id}")

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:  # the protocol must outlive one bad round
                logger.exception("gossip round failed")
            self._round_done.set()
            spread = self.settings.jitter * (self._rng.random() - 0.5)
            await asyncio.sleep(self.settings.interval_s * (1.0 + spread))

    async def joined(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the first round after ``start``; raise
        ``NodeIdTaken`` if a peer refused this node's id in it, so a node that cannot join
        fails its start instead of serving under an id that is not its own."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._round_done.wait(), timeout_s)
        if self.identity_conflict is not None:
            raise self.identity_conflict

    async def stop(self, leave: bool = True) -> None:
        """Stop gossiping. With ``leave`` the node first tells ``fanout`` peers it is
        leaving (status ``left``), so nobody has to detect it as dead."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if leave and self.identity_conflict is None and self.view.own.status is not Status.LEFT:
            self._note(self.view.set_own(swim.leave(self.view.own)))
            peers = self._random_peers(self.settings.fanout, {self.node_id})
            await asyncio.gather(*(self._exchange(self.view.members[peer].address, peer, sync=False)
                                   for peer in peers))
