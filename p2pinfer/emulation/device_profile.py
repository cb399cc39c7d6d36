"""Device profiles: how an emulated edge device differs from the machine that runs it.

A node started with ``--profile jetson-nano`` computes for real on the host, then pads
each block's time to what the profiled device would need (``padded_duration``). This keeps
the emulation honest about everything but speed: the same tensors, the same code, the same
scheduling, only stretched in time. The slowdowns are rough, order-of-magnitude ratios to
one modern x86 core running the same PyTorch CPU code; a benchmark that needs exact figures
should measure the real boards. A profile can never be faster than the host (padding cannot
remove time), so "native" and "edge-server" use the host's own speed.

Thermal time constants are shortened (one to two minutes rather than the ten or more of a
real heat sink) so that a benchmark sees a device heat up and throttle within its run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from p2pinfer.errors import UnknownProfile


@dataclass(frozen=True)
class ThermalParameters:
    """First-order RC thermal model of a device (see ``p2pinfer.thermal``).

    Power drawn is ``idle_power_w + utilisation * (max_power_w - idle_power_w) * throttle``
    (a throttled device runs at lower clocks and draws less), the die sits
    ``power * resistance`` above ambient at equilibrium, and ``resistance * capacitance``
    is the time constant. Above ``trip_points_c[i]`` the device runs at
    ``throttle_factors[i]`` of full speed; it steps back up only once it has cooled
    ``hysteresis_c`` below that trip point.
    """

    ambient_c: float
    idle_power_w: float
    max_power_w: float
    resistance_c_per_w: float
    capacitance_j_per_c: float
    trip_points_c: tuple[float, ...]
    throttle_factors: tuple[float, ...]
    hysteresis_c: float = 5.0

    def __post_init__(self) -> None:
        if len(self.trip_points_c) != len(self.throttle_factors):
            raise ValueError("one throttle factor per trip point")
        if list(self.trip_points_c) != sorted(set(self.trip_points_c)):
            raise ValueError("trip points must rise strictly")
        if not all(0 < factor <= 1 for factor in self.throttle_factors) or list(self.throttle_factors) != sorted(
                self.throttle_factors, reverse=True):
            raise ValueError("throttle factors must be in (0, 1] and fall as the trip points rise")
        if not (self.resistance_c_per_w > 0 and self.capacitance_j_per_c > 0):
            raise ValueError("thermal resistance and capacitance must be > 0")
        if not 0 <= self.idle_power_w <= self.max_power_w:
            raise ValueError("need 0 <= idle_power_w <= max_power_w")
        if self.hysteresis_c < 0:
            raise ValueError("hysteresis_c must be >= 0")

    @property
    def time_constant_s(self) -> float:
        return self.resistance_c_per_w * self.capacitance_j_per_c

    @property
    def full_load_equilibrium_c(self) -> float:
        """Temperature reached at full utilisation if the device never throttled."""
        return self.ambient_c + self.max_power_w * self.resistance_c_per_w


@dataclass(frozen=True)
class DeviceProfile:
    """An emulated device: per compute unit slowdown, memory, heat.

    ``unit_slowdowns`` maps each compute unit the device exposes (``"cpu"``, ``"cuda:0"``)
    to how many times slower than the host it computes. Empty means "the host's own units,
    as discovered" (the native profile). ``memory_mb=None`` means the host's memory;
    ``thermal=None`` means no emulated heat (real sensors may still be read).
    """

    name: str
    description: str
    unit_slowdowns: Mapping[str, float]
    memory_mb: int | None
    thermal: ThermalParameters | None = None
    default_slowdown: float = field(default=1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit_slowdowns", MappingProxyType(dict(self.unit_slowdowns)))
        if not all(slowdown >= 1.0 for slowdown in (*self.unit_slowdowns.values(), self.default_slowdown)):
            raise ValueError(f"{self.name}: slowdowns must be >= 1 (padding cannot make the host faster)")

    @property
    def compute_units(self) -> tuple[str, ...]:
        """Names of the compute units the device exposes (empty: discover the host's)."""
        return tuple(self.unit_slowdowns)

    def slowdown(self, unit: str = "cpu") -> float:
        """How many times slower than the host ``unit`` computes.

        Profiles compose with the host's real units: a unit the profile names gets its
        emulated slowdown (``cpu`` x10 on an rpi4, ``cuda:0`` x1.5 on a Jetson Orin Nano); a
        further unit of a named kind (``cpu:1``) gets that kind's; an accelerator the profile
        does not name (``cuda:0`` on ``edge-server``) is a real GPU and runs as is. Only a CPU
        unit on a profile that names no CPU is refused: every emulated device has its CPU."""
        if not self.unit_slowdowns:
            return self.default_slowdown
        named = self.unit_slowdowns.get(unit)
        if named is not None:
            return named
        kind = unit.split(":", 1)[0]
        same_kind = [value for name, value in self.unit_slowdowns.items() if name.split(":", 1)[0] == kind]
        if same_kind:
            return same_kind[0]
        if kind != "cpu":
            return 1.0
        raise UnknownProfile(f"profile {self.name!r} has no compute unit {unit!r}; "
                             f"it has {list(self.unit_slowdowns)}")

    def unit_speed(self, unit: str) -> str:
        """How ``unit`` runs under this profile, for ``/v1/health``: emulated or real."""
        factor = self.slowdown(unit)
        if unit in self.unit_slowdowns or factor != 1.0:
            return f"emulated {self.name} {unit.split(':', 1)[0]}: x{factor:g} slower than the host"
        return "real: the host's own speed"

    def padded_duration(self, real_s: float, unit: str = "cpu", throttle_factor: float = 1.0) -> float:
        """How long work that really took ``real_s`` must appear to take on this device.

        ``throttle_factor`` in (0, 1] is the fraction of full speed left by thermal
        throttling. Never less than ``real_s``: padding only adds time.
        """
        if not 0 < throttle_factor <= 1:
            raise ValueError(f"throttle_factor must be in (0, 1], got {throttle_factor}")
        return max(real_s * self.slowdown(unit) / throttle_factor, real_s)

    def padding_s(self, real_s: float, unit: str = "cpu", throttle_factor: float = 1.0) -> float:
        """Seconds to wait after real work of ``real_s`` to match the device."""
        return self.padded_duration(real_s, unit, throttle_factor) - real_s


def _profiles() -> dict[str, DeviceProfile]:
    profiles = [
        DeviceProfile(
            name="native", description="the host itself: no slowdown, no emulated heat",
            unit_slowdowns={}, memory_mb=None, thermal=None),
        DeviceProfile(
            name="edge-server", description="an edge server as fast as the host, with ample cooling",
            unit_slowdowns={"cpu": 1.0}, memory_mb=32768,
            thermal=ThermalParameters(ambient_c=25.0, idle_power_w=60.0, max_power_w=250.0,
                                      resistance_c_per_w=0.2, capacitance_j_per_c=600.0,
                                      trip_points_c=(90.0,), throttle_factors=(0.8,))),
        DeviceProfile(
            name="jetson-orin-nano", description="NVIDIA Jetson Orin Nano 8GB: 6-core A78AE, Ampere GPU, 15 W",
            unit_slowdowns={"cpu": 3.0, "cuda:0": 1.5}, memory_mb=8192,
            thermal=ThermalParameters(ambient_c=25.0, idle_power_w=3.0, max_power_w=15.0,
                                      resistance_c_per_w=4.5, capacitance_j_per_c=20.0,
                                      trip_points_c=(75.0, 85.0), throttle_factors=(0.75, 0.5))),
        DeviceProfile(
            name="jetson-nano", description="NVIDIA Jetson Nano 4GB: 4-core A57, Maxwell GPU, 10 W",
            unit_slowdowns={"cpu": 8.0, "cuda:0": 4.0}, memory_mb=4096,
            thermal=ThermalParameters(ambient_c=25.0, idle_power_w=2.0, max_power_w=10.0,
                                      resistance_c_per_w=6.5, capacitance_j_per_c=9.0,
                                      trip_points_c=(70.0, 80.0), throttle_factors=(0.7, 0.5))),
        DeviceProfile(
            name="rpi4", description="Raspberry Pi 4 Model B 4GB: 4-core A72, passive cooling",
            unit_slowdowns={"cpu": 10.0}, memory_mb=4096,
            thermal=ThermalParameters(ambient_c=25.0, idle_power_w=2.7, max_power_w=6.4,
                                      resistance_c_per_w=9.0, capacitance_j_per_c=8.0,
                                      trip_points_c=(80.0, 85.0), throttle_factors=(0.75, 0.5))),
        DeviceProfile(
            name="rpi-zero2w", description="Raspberry Pi Zero 2 W: 4-core A53 at 1 GHz, 512 MB, no heat sink "
                                           "(slow enough that eight emulated nodes fit on two host cores)",
            unit_slowdowns={"cpu": 40.0}, memory_mb=512,
            thermal=None),
        DeviceProfile(
            name="bench-slow", description="not a real board: x150 sleep-padded compute, so that eight emulated "
                                           "nodes and the load they serve use a small part of two shared host "
                                           "cores (the scale-out benchmarks measure the cluster, not the host)",
            unit_slowdowns={"cpu": 150.0}, memory_mb=512,
            thermal=None),
    ]
    return {profile.name: profile for profile in profiles}


PROFILES: Mapping[str, DeviceProfile] = MappingProxyType(_profiles())


def profile_names() -> tuple[str, ...]:
    return tuple(PROFILES)


def get_profile(name: str) -> DeviceProfile:
    """The profile called ``name``; ``UnknownProfile`` lists the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}") from None
