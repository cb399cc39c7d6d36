"""A link's estimate: what the planner prices transfers with and what gossip carries.

One type for both: a node measures its links from real transfers, gossips them
(``array_like``: two floats on the wire), and every planner prices hops with them.
"""

from __future__ import annotations

import math

import msgspec

from p2pinfer.errors import InvalidPlanningProblem

MS_PER_BYTE_AT_ONE_MBPS = 8.0 / 1000.0  # bytes * 8 bits / (Mbit/s * 1e6) s * 1e3 ms


class LinkEstimate(msgspec.Struct, frozen=True, array_like=True):
    """A link's predicted bandwidth (Mbit/s, 0 when down) and round-trip time (ms)."""

    bandwidth_mbps: float
    rtt_ms: float

    def __post_init__(self) -> None:
        if not (self.bandwidth_mbps >= 0 and self.rtt_ms >= 0):
            raise InvalidPlanningProblem(f"link needs bandwidth >= 0 and rtt >= 0, got {self}")

    def transfer_ms(self, nbytes: int) -> float:
        """One-way time to deliver ``nbytes``: serialization plus half the round trip."""
        if self.bandwidth_mbps <= 0:
            return math.inf
        return nbytes * MS_PER_BYTE_AT_ONE_MBPS / self.bandwidth_mbps + self.rtt_ms / 2.0
