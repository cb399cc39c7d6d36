"""The coordinator role: who holds it, and the guidance it computes. Pure functions.

The alive (or suspect) eligible node with the lowest id holds the role; every node computes
the same answer from its own view, so no election messages exist. The coordinator is never
on the data path: it aggregates the view and the nodes' stats reports and publishes
``Guidance`` in its own member record, which travels through gossip like any other record.

Guidance holds:

* a cluster pressure level in [0, 1]: the mean over live nodes of each node's worst of
  queue fill and thermal throttle (``queue_pressure``: work *waiting*, not a busy executor:
  one closed-loop client keeps a node busy without overloading it), raised to
  demand/capacity when users ask for more than the cluster can serve; controllers degrade
  to cheaper arms early as it rises;
* per-user max-min fair shares of cluster capacity (requests/s) and an admission fraction
  (share / demand, below 1 for users asking for more than their share);
* replica placement hints: a hot variant (its hosts are under pressure) should gain a
  replica on an underloaded node that does not host it;
* the version and arm keys of the merged bandit statistics (the blobs themselves are pulled
  from the coordinator with a stats exchange, as they are too large to piggyback).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from p2pinfer.membership.messages import LIVE_STATUSES, Guidance, Member, ReplicaHint
from p2pinfer.membership.view import View
from p2pinfer.types import NodeId

StatsMerger = Callable[[Mapping[NodeId, Mapping[str, bytes]]], dict[str, bytes]]
"""Merges each node's own statistics (arm key -> blob) into cluster statistics."""


@dataclass(frozen=True)
class GuidanceSettings:
    hot_pressure: float = 0.7
    """Mean pressure of a variant's hosts above which the variant is hot."""
    cool_pressure: float = 0.3
    """A node at or below this pressure may receive a replica."""
    max_replica_hints: int = 8
    max_users: int = 32
    """Fair shares published for at most this many users (the throttled ones first): the
    guidance rides in the coordinator's record, which is piggybacked on gossip, so it must
    stay small. Users left out are admitted in full."""
    queue_scale: int = 8
    """Queue depth that counts as full when a node does not advertise its queue capacity."""
    change_tolerance: float = 0.05
    """Pressure or share moves smaller than this do not publish a new epoch."""


def _members_of(view: View | Iterable[Member]) -> Iterable[Member]:
    if isinstance(view, View):
        members = view.members
        return (members[node_id] for node_id in view.live_ids)
    return view


def elect(view: View | Iterable[Member]) -> NodeId | None:
    """The coordinator: the lowest id among live (alive or suspect) eligible members."""
    candidates = [m.node_id for m in _members_of(view) if m.status in LIVE_STATUSES and m.eligible_coordinator]
    return min(candidates) if candidates else None


def node_pressure(member: Member, queue_scale: int = 8) -> float:
    """How close one node is to overload, in [0, 1]."""
    load = member.load
    if load.queue_capacity > 0:
        queue_fill = load.queue_depth / load.queue_capacity
    else:
        queue_fill = load.queue_depth / (load.queue_depth + queue_scale)
    return float(min(1.0, max(0.0, load.utilisation, queue_fill, member.thermal.throttle)))


def queue_pressure(member: Member, queue_scale: int = 8) -> float:
    """How much work waits at one node beyond what it runs now, in [0, 1], or its heat.

    Why not utilisation: a node that is busy but keeps up (an executor running one request
    after another, nothing queued) is not overloaded, and degrading every user's arm because
    of it costs accuracy for nothing. Overload shows as a queue that grows."""
    load = member.load
    if load.queue_capacity > 0:
        queue_fill = load.queue_depth / load.queue_capacity
    else:
        queue_fill = load.queue_depth / (load.queue_depth + queue_scale)
    return float(min(1.0, max(0.0, queue_fill, member.thermal.throttle)))


def hosts(member: Member, variant: str) -> bool:
    """Whether the member holds any block of ``variant``: a profile entry below zero marks
    a block the node does not host (the node's ``NOT_HOSTED`` convention)."""
    return any(ms >= 0 for ms in member.variants.get(variant, ()))


def node_capacity_rps(member: Member) -> float:
    """Requests/s the node can serve now: its advertised capacity, else the inverse of its
    cheapest run of a fully hosted variant (of its hosted blocks if it hosts no variant
    whole), scaled by the speed thermal throttling leaves it."""
    if member.capacity_rps > 0:
        nominal = member.capacity_rps
    else:
        whole = [sum(profile) for profile in member.variants.values() if profile and min(profile) >= 0]
        partial = [sum(ms for ms in profile if ms >= 0) for profile in member.variants.values()]
        runs = [run for run in (whole or partial) if run > 0]
        nominal = 1000.0 / min(runs) * max(1, len(member.compute_units)) if runs else 0.0
    return nominal * max(0.0, 1.0 - member.thermal.throttle)


def max_min_fair_shares(demands: Mapping[str, float], capacity: float) -> dict[str, float]:
    """Water-filling: every user gets min(demand, level), with the level chosen so the shares
    use the whole capacity (or satisfy every demand). The shares never sum above capacity."""
    shares = {user: 0.0 for user in demands}
    remaining = max(0.0, capacity)
    pending = sorted((max(0.0, demand), user) for user, demand in demands.items())
    while pending:
        level = remaining / len(pending)
        demand, user = pending[0]
        if demand <= level:
            shares[user] = demand
            remaining -= demand
            pending.pop(0)
            continue
        for _, other in pending:
            shares[other] = level
        remaining = 0.0
        break
    return shares


def replica_hints(members: list[Member], variant_demand: Mapping[str, float] | None,
                  settings: GuidanceSettings) -> list[ReplicaHint]:
    """Hot variants (hosts under pressure) paired with cool nodes that do not host them."""
    pressure = {m.node_id: node_pressure(m, settings.queue_scale) for m in members}
    hosting: dict[str, list[NodeId]] = {}
    for member in members:
        for variant in member.variants:
            if hosts(member, variant):
                hosting.setdefault(variant, []).append(member.node_id)
    hot: list[tuple[float, str]] = []
    for variant, variant_hosts in hosting.items():
        mean_pressure = sum(pressure[node] for node in variant_hosts) / len(variant_hosts)
        demand_per_host = (variant_demand or {}).get(variant, 0.0) / len(variant_hosts)
        if mean_pressure >= settings.hot_pressure:
            hot.append((mean_pressure + 1e-6 * demand_per_host, variant))
    hot.sort(reverse=True)
    cool = sorted((pressure[m.node_id], m.node_id) for m in members if pressure[m.node_id] <= settings.cool_pressure)
    hints: list[ReplicaHint] = []
    used: set[NodeId] = set()
    for score, variant in hot:
        for _, node in cool:
            if node in used or node in hosting[variant]:
                continue
            hints.append(ReplicaHint(variant=variant, node=node, score=round(score, 4)))
            used.add(node)
            break
        if len(hints) >= settings.max_replica_hints:
            break
    return hints


def compute_guidance(view: View | Iterable[Member], user_usage: Mapping[str, float],
                     merged_stats: Mapping[str, bytes] | None = None, *, coordinator: NodeId, epoch: int,
                     stats_version: int = 0, variant_demand: Mapping[str, float] | None = None,
                     settings: GuidanceSettings = GuidanceSettings()) -> Guidance:
    """The coordinator's guidance from its view and the aggregated usage (requests/s per user)."""
    members = [m for m in _members_of(view) if m.status in LIVE_STATUSES]
    capacity = sum(node_capacity_rps(m) for m in members)
    demand = sum(max(0.0, d) for d in user_usage.values())
    pressures = [queue_pressure(m, settings.queue_scale) for m in members]
    pressure = sum(pressures) / len(pressures) if pressures else 0.0
    if demand > 0:
        pressure = max(pressure, min(1.0, demand / capacity) if capacity > 0 else 1.0)
    shares = max_min_fair_shares(user_usage, capacity)
    admit = {user: (min(1.0, shares[user] / d) if d > 0 else 1.0) for user, d in user_usage.items()}
    if len(shares) > settings.max_users:
        keep = sorted(shares, key=lambda user: (admit[user], -user_usage[user], user))[:settings.max_users]
        shares = {user: shares[user] for user in keep}
        admit = {user: admit[user] for user in keep}
    return Guidance(
        epoch=epoch,
        coordinator=coordinator,
        pressure_level=round(min(1.0, max(0.0, pressure)), 4),
        capacity_rps=round(capacity, 3),
        demand_rps=round(demand, 3),
        fair_share_rps={user: round(share, 3) for user, share in shares.items()},
        admit_fraction={user: round(fraction, 4) for user, fraction in admit.items()},
        replica_hints=replica_hints(members, variant_demand, settings),
        stats_version=stats_version,
        stats_arms=sorted(merged_stats or ()),
    )


def guidance_differs(old: Guidance | None, new: Guidance, tolerance: float = 0.05) -> bool:
    """Whether ``new`` is worth a new epoch (small drifts are not gossiped)."""
    if old is None or old.coordinator != new.coordinator:
        return True
    if abs(old.pressure_level - new.pressure_level) > tolerance:
        return True
    if old.stats_version != new.stats_version or old.replica_hints != new.replica_hints:
        return True
    if old.fair_share_rps.keys() != new.fair_share_rps.keys():
        return True
    return any(abs(old.admit_fraction.get(user, 1.0) - fraction) > tolerance
               for user, fraction in new.admit_fraction.items())


def sum_float64_blobs(reports: Mapping[NodeId, Mapping[str, bytes]]) -> dict[str, bytes]:
    """Default merge: each blob is a little-endian float64 array of additive sufficient
    statistics (counts, reward sums, LinUCB's ``A - I`` and ``b``); merged = element-wise sum.
    A blob whose length differs from the first one seen for its arm is skipped."""
    sums: dict[str, np.ndarray] = {}
    for node_id in sorted(reports):
        for arm, blob in reports[node_id].items():
            if len(blob) % 8:
                continue
            values = np.frombuffer(blob, dtype="<f8")
            total = sums.get(arm)
            if total is None:
                sums[arm] = values.copy()
            elif total.shape == values.shape:
                total += values
    return {arm: total.astype("<f8").tobytes() for arm, total in sorted(sums.items())}


def stats_fingerprint(stats: Mapping[str, bytes]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for arm in sorted(stats):
        digest.update(arm.encode() + b"\x00")
        digest.update(hashlib.blake2b(stats[arm], digest_size=16).digest())
    return digest.digest()
