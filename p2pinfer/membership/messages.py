"""Wire data of the membership protocol: member records, coordinator guidance, and the
messages of ``POST /v1/gossip``.

Everything is a msgspec Struct encoded as msgpack. Every message carries ``version`` (the
protocol version) and ``sender``; a receiver refuses versions it does not speak instead of
guessing. Records carry no wall-clock timestamps: edge devices have no common clock, so
freshness is ordered by the owner's own counters (incarnation, heartbeat, revision).

Compatibility rule: new fields are added with defaults only, and in the records encoded as
arrays (``Member``, ``Load``, ``Thermal``, ``LinkEstimate``: a record travels in almost
every message, so its field names would cost a quarter of the bytes) only at the end: an
older node then ignores the extra trailing elements and a newer node fills missing ones
with their defaults.
"""

from __future__ import annotations

import enum
from typing import NewType

import msgspec

from p2pinfer.errors import BadHeader, NestedTooDeeply, UnsupportedVersion
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

PROTOCOL_VERSION = 1
"""Bumped on an incompatible change of any message below."""

Address = NewType("Address", str)
"""``"host:port"`` where a node's HTTP server listens."""


class Status(enum.IntEnum):
    """A member's liveness as the cluster believes it (SWIM states plus ``left``).

    The value is also the precedence between records of the same incarnation: a later
    state of the failure detector beats an earlier one, and ``left`` is final for that
    incarnation. On the wire it is the small integer (one byte)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


LIVE_STATUSES = frozenset({Status.ALIVE, Status.SUSPECT})
"""Members that still count: a suspect may be alive and is probed, chosen and elected."""


class Load(msgspec.Struct, frozen=True, array_like=True):
    """The owner's work right now; ``queue_capacity`` (0 = unknown) lets others read
    ``queue_depth`` as a fill ratio."""

    queue_depth: int = 0
    in_flight: int = 0
    utilisation: float = 0.0
    queue_capacity: int = 0


class Thermal(msgspec.Struct, frozen=True, array_like=True):
    """Heat. ``throttle`` is the fraction of nominal speed lost to thermal throttling:
    0.0 runs at full speed, 0.5 at half speed (a planner multiplies block times by
    ``1 / (1 - throttle)``). ``temperature_c`` is None when the device has no sensor."""

    temperature_c: float | None = None
    throttle: float = 0.0


class ReplicaHint(msgspec.Struct, frozen=True, omit_defaults=True):
    """Coordinator advice: ``node`` (underloaded) should also host ``variant`` (hot)."""

    variant: str
    node: NodeId
    score: float = 0.0


class Guidance(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the coordinator publishes through gossip, off the data path.

    ``epoch`` grows monotonically across coordinators (a new coordinator starts above the
    highest epoch it has seen). ``admit_fraction[user]`` < 1 means the user asks for more
    than its max-min fair share: admit that fraction at normal priority, degrade or refuse
    the rest first. Merged bandit statistics are too large to piggyback on every gossip
    message, so guidance carries their ``stats_version`` and nodes pull the blobs from the
    coordinator with a stats exchange (see ``StatsReport``).
    """

    epoch: int
    coordinator: NodeId
    pressure_level: float = 0.0
    capacity_rps: float = 0.0
    demand_rps: float = 0.0
    fair_share_rps: dict[str, float] = {}
    admit_fraction: dict[str, float] = {}
    replica_hints: list[ReplicaHint] = []
    stats_version: int = 0
    stats_arms: list[str] = []


class Member(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One node as the cluster knows it.

    Ordering between two records of the same node (see ``view.supersedes``): higher
    ``incarnation`` wins; at the same incarnation the later failure-detector state wins
    (alive < suspect < dead < left); at the same state the higher ``heartbeat`` wins.
    Only the owner increments ``incarnation`` (at start, seeded from wall-clock ms so a
    restarted node outranks its previous life, and to refute a suspicion), ``heartbeat``
    (every gossip round and on every change of its own record) and ``revision`` (when
    content others should hear about soon changes: variants, address, eligibility,
    guidance) — revision changes are gossiped as news, heartbeat-only changes (load, heat)
    ride on direct exchanges and random refreshes.
    """

    node_id: NodeId
    incarnation: int
    heartbeat: int = 0
    revision: int = 0
    address: Address
    status: Status = Status.ALIVE
    suspected_by: NodeId | None = None
    load: Load = Load()
    thermal: Thermal = Thermal()
    variants: dict[str, list[float]] = {}
    """variant name -> measured milliseconds per block on this node."""
    compute_units: list[str] = []
    links: dict[str, LinkEstimate] = {}
    """peer node id -> link estimate; at most ``GossipSettings.max_links`` entries."""
    capacity_rps: float = 0.0
    """Measured requests/s at full speed (0 = unknown: the coordinator estimates)."""
    eligible_coordinator: bool = True
    guidance: Guidance | None = None


class Digest(msgspec.Struct, frozen=True, array_like=True):
    """A constant-size summary of a view: how many members, and an order-independent
    fingerprint of every (node, incarnation, status). Equal digests mean equal membership;
    unequal ones tell a node that a full sync page may be worth asking for."""

    members: int
    fingerprint: int


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, tag_field="kind"):
    """Fields every gossip message carries.

    Subclasses inherit ``frozen`` at run time; they repeat it because type checkers (the
    dataclass_transform rules) do not let a subclass of a frozen class be non-frozen."""

    version: int = PROTOCOL_VERSION
    sender: NodeId


class Exchange(Envelope, frozen=True, tag="exchange"):
    """Push half of a push-pull round; also SWIM's direct probe (a reply is the ack).

    ``sync_cursor`` asks for a page of the full view: ``""`` from the start, otherwise
    after that node id (pages are sorted by id, so paging works across peers)."""

    records: list[Member] = []
    digest: Digest | None = None
    sync_cursor: str | None = None


class ExchangeReply(Envelope, frozen=True, tag="exchange_reply"):
    """Pull half: the responder's news, corrections and (if asked) a sync page.
    ``sync_next`` is the cursor of the next page, None when the sync is complete."""

    records: list[Member] = []
    digest: Digest | None = None
    sync_next: str | None = None


class ProbeRequest(Envelope, frozen=True, tag="probe_request"):
    """SWIM ``ping-req``: please probe ``target`` for me (I could not reach it)."""

    target: NodeId
    target_address: Address
    records: list[Member] = []


class ProbeReply(Envelope, frozen=True, tag="probe_reply"):
    """Answer to ``ProbeRequest``: ``acked`` True if the target answered the helper, False
    is Lifeguard's nack (the helper is fine, the target did not answer)."""

    acked: bool
    records: list[Member] = []


class StatsReport(Envelope, frozen=True, tag="stats_report"):
    """A node's own learning, sent to the coordinator every stats interval.

    ``stats`` maps an arm key to an opaque blob of the selector's mergeable statistics
    (only what this node learned itself, never merged statistics it adopted, or merging
    would count them twice). ``user_demand`` and ``variant_demand`` are requests/s seen by
    this node. ``have_version`` is the merged-stats version the node already holds."""

    stats: dict[str, bytes] = {}
    user_demand: dict[str, float] = {}
    variant_demand: dict[str, float] = {}
    have_version: int = 0


class StatsReply(Envelope, frozen=True, tag="stats_reply"):
    """The coordinator's merged statistics, omitted (None) when ``have_version`` is current
    or the receiver is not the coordinator (then ``coordinator`` names who it believes is)."""

    stats_version: int = 0
    merged: dict[str, bytes] | None = None
    coordinator: NodeId | None = None


GossipMessage = Exchange | ExchangeReply | ProbeRequest | ProbeReply | StatsReport | StatsReply

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GossipMessage)
_member_decoder = msgspec.msgpack.Decoder(Member)


def encode_message(message: GossipMessage) -> bytes:
    """msgpack bytes of one message (the body of ``POST /v1/gossip`` and of its answer)."""
    return _encoder.encode(message)


def decode_message(body: bytes) -> GossipMessage:
    """Decode one message, refusing garbage and versions this node does not speak.

    Raises ``BadHeader`` (400) for anything that is not a well-formed message and
    ``UnsupportedVersion`` for a newer protocol version."""
    try:
        message = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BadHeader(f"malformed gossip message: {error}") from error
    except RecursionError:
        raise NestedTooDeeply("gossip message nested too deeply to decode") from None
    if message.version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"gossip protocol version {message.version} is not supported (this node speaks {PROTOCOL_VERSION})"
        )
    return message


def encode_member(member: Member) -> bytes:
    return _encoder.encode(member)


def decode_member(data: bytes) -> Member:
    return _member_decoder.decode(data)


def _named(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        return {name: _named(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, dict):
        return {key: _named(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_named(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return value


def member_as_json(member: Member) -> dict[str, object]:
    """A JSON-ready dict of a record with named fields (for ``GET /v1/peers`` and
    ``p2pinfer status``), although the wire encodes records as arrays."""
    return {name: _named(getattr(member, name)) for name in member.__struct_fields__}
