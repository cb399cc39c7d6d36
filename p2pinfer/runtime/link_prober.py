"""Keep link estimates fresh: probe the stalest link to a peer before a request bets on it.

A link the planner stopped using (it looked slow) gets no more samples, so its estimate
would stay as bad as it once was; a link not used for a while may have dropped. Every
``period_s`` the prober picks the live peer whose link was measured longest ago (more than
``stale_s``) and sends it a probe carrying ``payload_bytes`` — enough to measure bandwidth,
one probe at a time so the cost stays at about ``payload_bytes / period_s`` per node.
"""

from __future__ import annotations

import asyncio
import contextlib

from p2pinfer.errors import P2PError
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerDirectory, PeerView
from p2pinfer.runtime.transport import PeerTransport

PROBE_PERIOD_S = 1.0
STALE_AFTER_S = 2.0
PROBE_PAYLOAD_BYTES = 32 * 1024
PROBE_TIMEOUT_S = 5.0


def stalest_peer(directory: PeerDirectory, link_model: LinkLatencyModel, stale_s: float) -> PeerView | None:
    """The live peer hosting blocks whose link from this node is the oldest beyond ``stale_s``."""
    self_id = directory.self_id
    candidates = [(link_model.age_s(self_id, peer.node_id), peer) for peer in directory.peers()
                  if peer.alive and peer.node_id != self_id and peer.hosted]
    stale = [(age, peer) for age, peer in candidates if age > stale_s]
    return max(stale, key=lambda item: item[0])[1] if stale else None


async def run_link_prober(directory: PeerDirectory, transport: PeerTransport, link_model: LinkLatencyModel, *,
                          period_s: float = PROBE_PERIOD_S, stale_s: float = STALE_AFTER_S,
                          payload_bytes: int = PROBE_PAYLOAD_BYTES) -> None:
    while True:
        await asyncio.sleep(period_s)
        peer = stalest_peer(directory, link_model, stale_s)
        if peer is None:
            continue
        with contextlib.suppress(P2PError):  # a failed probe already taught the link model (a time-out)
            await transport.probe(peer, timeout_s=PROBE_TIMEOUT_S, payload_bytes=payload_bytes)


__all__ = ["run_link_prober", "stalest_peer"]
