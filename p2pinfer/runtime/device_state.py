"""What this device is doing right now: its hosted slices and compute units, its load and
its heat, as the planner, the selector's context, gossip and admission read them.

Why a class of its own: the node wires services together, the routes speak HTTP; the live
state they all read (and the telemetry loop updates) belongs to neither.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence

from p2pinfer.emulation.device_profile import DeviceProfile
from p2pinfer.emulation.thermal import ThermalModel, ThermalReading
from p2pinfer.membership import GossipAgent, Load, Thermal
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView
from p2pinfer.planning.selection import NodeState
from p2pinfer.runtime.cluster_view import UNIT_FACTOR_PREFIX, hosted_profile
from p2pinfer.runtime.executor import Executor
from p2pinfer.runtime.model_host import ModelHost
from p2pinfer.runtime.request_gate import RequestGate
from p2pinfer.types import NodeId

EXTREME_PRESSURE = 0.95
MAX_TRACKED_USERS = 1024
"""Users whose request counts a node keeps for the coordinator (the most recently seen)."""


class DeviceState:
    """The node's own live state; ``utilisation`` and heat are refreshed by the telemetry loop."""

    def __init__(self, node_id: str, url: str, profile: DeviceProfile, thermal: ThermalModel,
                 unit_hosts: dict[str, ModelHost], gate: RequestGate, queue_capacity: int) -> None:
        self.node_id = node_id
        self.url = url
        self.profile = profile
        self.thermal = thermal
        self.unit_hosts = unit_hosts
        self.host = next(iter(unit_hosts.values()))  # the first unit's host answers for the node
        self.gate = gate
        self.queue_capacity = queue_capacity
        self.executors: dict[str, Executor] = {}
        self.utilisation = 0.0
        self.user_usage: OrderedDict[str, float] = OrderedDict()
        gate.metrics.state_entries.labels(table="users").set_function(lambda: len(self.user_usage))
        self._thermal_slowdown = 1.0
        self._reading = ThermalReading(None, 1.0, "none")
        self.refresh_thermal()

    @property
    def executor(self) -> Executor:
        """The first compute unit's executor: its queue is the node's queue in health and gossip."""
        return next(iter(self.executors.values()))

    # ---- speed ----------------------------------------------------------------------------
    def observe_run(self, unit: str, variant: str, first: int, device_s: Sequence[float], batch_size: int) -> None:
        """After a run (in the executor's thread, or inline): its blocks' times at the device's full
        speed, in one call.

        ``device_s`` is what each block took on the device (padded, when emulated), divided
        here by the heat's slowdown. Not the host's real time x the profile's slowdown: on a
        shared host any stretch of the real compute, times 40 for a slow profile, made the
        estimate a third above what the emulated device then took (and admission refused
        jobs that would have fit)."""
        slowdown = max(self.thermal_slowdown(), 1e-9)
        self.unit_hosts[unit].observe_blocks(variant, first, [seconds / slowdown for seconds in device_s], batch_size)

    def thermal_slowdown(self) -> float:
        """The emulated heat's slowdown, refreshed by the telemetry loop: the executor asks
        before and after every block, and reading the thermal state costs ~20 µs."""
        return self._thermal_slowdown

    def refresh_thermal(self) -> None:
        """Read the heat once (a real sensor is a sysfs glob: never per request) and cache it."""
        self._apply(self.thermal.reading())

    def advance_thermal(self, utilisation: float) -> None:
        """The telemetry tick: advance the thermal model by the utilisation, one sensor read;
        safe off the event loop (it only swaps immutable readings)."""
        self._apply(self.thermal.update(utilisation))

    def _apply(self, reading: ThermalReading) -> None:
        self._reading = reading
        self._thermal_slowdown = 1.0 / max(reading.throttle_factor, 0.05) if reading.emulated else 1.0

    def pad_factor(self, unit: str = "cpu") -> float:
        """How much slower than this host the emulated device runs right now (profile x heat)."""
        return self.profile.slowdown(unit) * self.thermal_slowdown()

    def predict_seconds(self, variant: str, first: int, last: int, batch_size: int = 1, unit: str = "cpu", *,
                        tail: bool = False) -> float:
        """Blocks [first, last] on ``unit`` now (heat included): their mean, or their p90 (``tail``)."""
        host = self.unit_hosts.get(unit, self.host)
        return host.predict_seconds(variant, first, last, batch_size, tail=tail) * self.thermal_slowdown()

    def predict_block_seconds(self, variant: str, first: int, last: int, batch_size: int = 1,
                              unit: str = "cpu") -> list[float]:
        """``predict_seconds`` (the mean) of each block of [first, last], in one call."""
        host = self.unit_hosts.get(unit, self.host)
        slowdown = self.thermal_slowdown()
        return [seconds * slowdown for seconds in host.predict_block_seconds(variant, first, last, batch_size)]

    def busy_seconds(self) -> float:
        """Compute time of the busiest unit (heat and load follow the hardest-working unit)."""
        return max(executor.busy_seconds for executor in self.executors.values())

    def unit_factors(self) -> dict[str, float]:
        """Each compute unit's speed relative to the node's profile (gossiped with the profiles)."""
        base = self.host.mean_job_ms() or 1.0
        return {unit: round(host.mean_job_ms() / base, 4) for unit, host in self.unit_hosts.items()
                if host is not self.host}

    # ---- what others see -------------------------------------------------------------------
    def gossiped_profiles(self) -> dict[str, list[float]]:
        profiles = {name: hosted_profile(self.host.block_ms[name], hosted.first_block, hosted.last_block)
                    for name, hosted in self.host.ranges.items()}
        profiles.update({f"{UNIT_FACTOR_PREFIX}{unit}": [factor] for unit, factor in self.unit_factors().items()})
        return profiles

    def load(self) -> Load:
        # in flight = segments computing here now (not client requests this node forwarded):
        # peers price their wait here from it
        computing = sum(executor.in_flight for executor in self.executors.values())
        return Load(queue_depth=len(self.executor.queue), in_flight=computing,
                    utilisation=round(self.utilisation, 3), queue_capacity=self.queue_capacity)

    def jobs_now(self) -> int:
        """Jobs submitted here and not yet answered, said in each stage reply: read as a stage
        is answered, a worker's in-flight count may still hold the job just answered (its
        thread decrements it after handing the answer to the loop)."""
        return sum(executor.unanswered for executor in self.executors.values())

    def thermal_record(self) -> Thermal:
        reading = self._reading
        return Thermal(temperature_c=None if reading.temperature_c is None else round(reading.temperature_c, 2),
                       throttle=round(reading.speed_lost, 3))

    def self_view(self) -> PeerView:
        waiting = sum(len(e.queue) + e.in_flight for e in self.executors.values()) / len(self.executors)
        return PeerView(node_id=NodeId(self.node_id), url=self.url, alive=not self.gate.draining,
                        hosted={name: (r.first_block, r.last_block) for name, r in self.host.ranges.items()},
                        block_ms={name: self.host.tail_block_ms(name) for name in self.host.block_ms},
                        mean_block_ms={name: list(blocks) for name, blocks in self.host.block_ms.items()},
                        units=tuple(self.executors), queue_ms=waiting * self.host.mean_job_ms(),
                        slowdown=self.thermal_slowdown(), unit_factors=self.unit_factors())

    def node_state(self, agent: GossipAgent, link_model: LinkLatencyModel) -> NodeState:
        """The selector's view of this node and its cluster when a request arrives."""
        peers = [m for m in agent.live_members() if m.node_id != self.node_id]
        own_links = [link_model.estimate(NodeId(self.node_id), m.node_id) for m in peers]
        guidance = agent.guidance()
        fill = len(self.executor.queue) / max(self.queue_capacity, 1)
        return NodeState(
            own_load=min(1.0, max(fill, self.utilisation)), own_throttle=self._reading.speed_lost,
            peers_mean_load=sum(m.load.utilisation for m in peers) / len(peers) if peers else 0.0,
            peers_mean_throttle=sum(m.thermal.throttle for m in peers) / len(peers) if peers else 0.0,
            best_link_bandwidth_mbps=max((link.bandwidth_mbps for link in own_links), default=0.0),
            best_link_rtt_ms=min((link.rtt_ms for link in own_links), default=math.inf),
            pressure_level=guidance.pressure_level if guidance is not None else 0.0)

    def count_usage(self, user: str) -> None:
        """Count a request ``user`` asked for (answered or not): the coordinator's max-min fair
        shares divide the offered demand, in requests/s.

        Bounded (users are client-chosen): the least recently seen user goes first, so a
        flood of new ids never grows the table or the statistics report past its limit."""
        self.user_usage[user] = self.user_usage.get(user, 0.0) + 1.0
        self.user_usage.move_to_end(user)
        metrics = self.gate.metrics
        while len(self.user_usage) > MAX_TRACKED_USERS:
            self.user_usage.popitem(last=False)
            metrics.state_evictions.labels(table="users").inc()


def admit(agent: GossipAgent, user: str, request_id: str) -> bool:
    """The coordinator's guidance, applied at the entry: a user over its max-min fair share
    is served normally for ``admit_fraction`` of its requests and with the cheapest arm
    for the rest; under extreme cluster pressure everyone gets the cheapest arm, unless the
    coordinator is already throttling the users over their share (demand beyond capacity
    raises the pressure to 1 by itself: shedding everyone then would punish the light users
    for the heavy one's excess, the opposite of max-min fairness)."""
    guidance = agent.guidance()
    if guidance is None:
        return True
    fraction = guidance.admit_fraction.get(user, 1.0)
    throttling = any(value < 1.0 for value in guidance.admit_fraction.values())
    if guidance.pressure_level >= EXTREME_PRESSURE and not throttling:
        return False
    if fraction >= 1.0:
        return True
    # a stable pseudo-random draw per request id: the same request is always treated alike
    draw = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return draw < fraction


__all__ = ["MAX_TRACKED_USERS", "EXTREME_PRESSURE", "DeviceState", "admit"]
