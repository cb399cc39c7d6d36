"""The node's heartbeat of measurements: utilisation and heat, its own gossip record, its
measured links, per-user demand and the bandit statistics it shares.

Why periodic and off the request path: heat and utilisation change over seconds, and
publishing them per request would cost every request; the planner reads the cached values.
"""

from __future__ import annotations

import asyncio
import time

from p2pinfer.membership import GossipAgent
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.runtime.device_state import DeviceState
from p2pinfer.runtime.learning_exchange import StatisticsSharing

TELEMETRY_PERIOD_S = 0.25
STATISTICS_PERIOD_S = 2.0
MAX_REPORTED_USERS = 256
"""Users in one statistics report to the coordinator (by demand): 256 ids of <= 128 bytes."""


async def run_telemetry(device: DeviceState, agent: GossipAgent, link_model: LinkLatencyModel,
                        sharing: StatisticsSharing | None, period_s: float = TELEMETRY_PERIOD_S) -> None:
    """Heat from utilisation, own record into gossip, link estimates and bandit statistics."""
    last_busy, last_time, last_stats = device.busy_seconds(), time.monotonic(), 0.0
    user_counts: dict[str, float] = {}
    while True:
        await asyncio.sleep(period_s)
        now = time.monotonic()
        busy = device.busy_seconds()
        device.utilisation = min(1.0, max(0.0, (busy - last_busy) / max(now - last_time, 1e-6)))
        last_busy, last_time = busy, now
        await asyncio.to_thread(device.advance_thermal, device.utilisation)
        agent.update_self(load=device.load(), thermal=device.thermal_record())
        if now - last_stats >= STATISTICS_PERIOD_S:
            for (source, destination), estimate in link_model.estimates().items():
                if source == device.node_id:
                    agent.record_link(destination, estimate.rtt_ms, estimate.bandwidth_mbps)
            elapsed = now - last_stats if last_stats else STATISTICS_PERIOD_S
            demand = {user: (count - user_counts.get(user, 0.0)) / elapsed
                      for user, count in device.user_usage.items()}
            user_counts = dict(device.user_usage)
            if len(demand) > MAX_REPORTED_USERS:  # the busiest users: the report stays under the body limit
                demand = dict(sorted(demand.items(), key=lambda item: -item[1])[:MAX_REPORTED_USERS])
            agent.publish_stats(sharing.publishable() if sharing else {}, user_demand=demand)
            last_stats = now


__all__ = ["MAX_REPORTED_USERS", "run_telemetry"]
