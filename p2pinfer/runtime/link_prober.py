"""Keep link estimates fresh: measure a new peer's link at once, and probe the stalest link
to a peer before a request bets on it.

Until a transfer large enough to tell bandwidth has crossed a link, its estimate is the
default (gossip's small round trips teach only the RTT): a 10 Mbit/s link looked ten times
faster than it was, and the first requests a node planned after start bet tight deadlines on
it (bandwidth-trace: robots sent from the Pi to the Jetson at 0.2 s, 41 ms predicted, 63-74 ms
taken; the 16 KB input took 14 ms, priced at 1.3 ms). So every ``tick_s`` the prober sends a
probe to each live peer whose link bandwidth was never measured (at once and side by side; one
peer's probes one after the other: two empty ones for the RTT, then one with a payload for the
bandwidth) — and every ``period_s`` it picks the live peer whose link was
measured longest ago (more than ``stale_s``): a link the planner stopped using (it looked slow)
gets no more samples, so its estimate would stay as bad as it once was; a link not used for a
while may have dropped. A probe carries ``payload_bytes`` — enough to measure bandwidth — so
the cost stays at about ``payload_bytes / period_s`` per node once every link is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from p2pinfer.errors import P2PError
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerDirectory, PeerView
from p2pinfer.runtime.transport import PeerTransport
from p2pinfer.types import NodeId

PROBE_PERIOD_S = 1.0
PROBE_TICK_S = 0.1
STALE_AFTER_S = 2.0
PROBE_PAYLOAD_BYTES = 32 * 1024
PROBE_TIMEOUT_S = 5.0
RTT_PROBES = 2


def _probe_candidates(directory: PeerDirectory) -> list[PeerView]:
    """Live peers other than this node that host blocks (the only ones a plan sends work to)."""
    self_id = directory.self_id
    return [peer for peer in directory.peers() if peer.alive and peer.node_id != self_id and peer.hosted]


def stalest_peer(directory: PeerDirectory, link_model: LinkLatencyModel, stale_s: float) -> PeerView | None:
    """The live peer hosting blocks whose link from this node is the oldest beyond ``stale_s``."""
    self_id = directory.self_id
    candidates = [(link_model.age_s(self_id, peer.node_id), peer) for peer in _probe_candidates(directory)]
    stale = [(age, peer) for age, peer in candidates if age > stale_s]
    return max(stale, key=lambda item: item[0])[1] if stale else None


def unmeasured_peers(directory: PeerDirectory, link_model: LinkLatencyModel,
                     candidates: list[PeerView] | None = None) -> list[PeerView]:
    """Live peers hosting blocks whose link bandwidth from this node was never measured
    (among ``candidates``, the directory's probe candidates when not given)."""
    self_id = directory.self_id
    peers = _probe_candidates(directory) if candidates is None else candidates
    return [peer for peer in peers if not link_model.bandwidth_measured(self_id, peer.node_id)]


async def _probe(transport: PeerTransport, peer: PeerView, payload_bytes: int) -> None:
    with contextlib.suppress(P2PError):  # a failed probe already taught the link model (a time-out)
        await transport.probe(peer, timeout_s=PROBE_TIMEOUT_S, payload_bytes=payload_bytes)


async def _measure_new_link(transport: PeerTransport, peer: PeerView, payload_bytes: int) -> None:
    """RTT first (``RTT_PROBES`` empty probes), then the bandwidth: a large probe's time is
    ``rtt + bytes / bandwidth``, and with the RTT still unknown (the default 1 ms) the whole of
    it counts as serialization — a 10 ms link measured at 10 Mbit/s, its RTT left at 1 ms,
    priced the first request to the edge at 10 ms where it took 30. The first probe opens the
    connection and is not a sample (``transport._ExchangeTrace``): the second gives the RTT."""
    for _ in range(RTT_PROBES):
        await _probe(transport, peer, 0)
    await _probe(transport, peer, payload_bytes)


async def run_link_prober(directory: PeerDirectory, transport: PeerTransport, link_model: LinkLatencyModel, *,
                          period_s: float = PROBE_PERIOD_S, stale_s: float = STALE_AFTER_S,
                          payload_bytes: int = PROBE_PAYLOAD_BYTES, tick_s: float = PROBE_TICK_S) -> None:
    """Probe new peers' links at once and the stalest link every ``period_s`` (module
    docstring; a new link's RTT before its bandwidth), until cancelled; probes still under way are cancelled with it."""
    probing: dict[NodeId, asyncio.Task[None]] = {}
    # once per appearance: a link whose probes give no bandwidth sample (too fast to tell) is not probed in a loop
    measured_on_sight: set[NodeId] = set()
    next_stale_probe = time.monotonic() + period_s
    try:
        while True:
            for node_id in [node for node, task in probing.items() if task.done()]:
                del probing[node_id]
            candidates = _probe_candidates(directory)  # one view of the cluster per tick
            measured_on_sight &= {peer.node_id for peer in candidates}  # gone: new on return
            for peer in unmeasured_peers(directory, link_model, candidates):
                if peer.node_id not in probing and peer.node_id not in measured_on_sight:
                    measured_on_sight.add(peer.node_id)
                    probing[peer.node_id] = asyncio.create_task(_measure_new_link(transport, peer, payload_bytes),
                                                                name=f"probe-{peer.node_id}")
            if time.monotonic() >= next_stale_probe:
                next_stale_probe = time.monotonic() + period_s
                stalest = stalest_peer(directory, link_model, stale_s)
                if stalest is not None and stalest.node_id not in probing:
                    await _probe(transport, stalest, payload_bytes)
            await asyncio.sleep(tick_s)
    finally:
        for task in probing.values():
            task.cancel()


__all__ = ["run_link_prober", "stalest_peer", "unmeasured_peers"]
