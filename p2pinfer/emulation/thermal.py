"""Device heat: a first-order RC model, throttling with hysteresis, and real sensors.

The model is the textbook lumped one: ``C dT/dt = P(utilisation) - (T - ambient) / R``.
For a constant power over a step it has the closed form
``T(t + dt) = T_eq + (T - T_eq) exp(-dt / RC)`` with ``T_eq = ambient + P R``, which is exact
for any ``dt`` (an explicit Euler step would overshoot on the long, irregular intervals a
busy node updates at). Throttling changes the power (a throttled device runs slower and
draws less), so long steps are cut into sub-steps of a twentieth of the time constant.

Throttle steps use hysteresis: a device throttles at a trip point and recovers only once it
has cooled ``hysteresis_c`` below it, as real thermal governors do, so a node near a trip
point does not flap between speeds on every update.

Time is passed in explicitly (seconds on the caller's monotonic clock), so the model is a
pure function of its inputs and tests need no sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from p2pinfer.emulation.device_profile import DeviceProfile, ThermalParameters

SYSFS_THERMAL = Path("/sys/class/thermal")
# Zones that report a constant placeholder instead of a temperature (Jetson Nano's PMIC
# reports 100 °C for ever); taking them into the maximum would throttle a cool board.
IGNORED_ZONE_TYPES = frozenset({"PMIC-Die"})
_PLAUSIBLE_C = (-40.0, 150.0)
_MAX_SUBSTEPS = 2000


@dataclass(frozen=True)
class ThermalState:
    """Die temperature and throttle level (0: full speed; ``i``: ``throttle_factors[i-1]``)."""

    temperature_c: float
    level: int = 0


def initial_state(params: ThermalParameters) -> ThermalState:
    """A device that has been idle for a long time."""
    return ThermalState(temperature_c=params.ambient_c + params.idle_power_w * params.resistance_c_per_w)


def throttle_factor(params: ThermalParameters | None, level: int) -> float:
    """Fraction of full speed at a throttle level."""
    if params is None or level <= 0:
        return 1.0
    return params.throttle_factors[level - 1]


def throttle_level(params: ThermalParameters, temperature_c: float, current_level: int) -> int:
    """The throttle level after seeing ``temperature_c``, from ``current_level``, with hysteresis."""
    level = current_level
    trips = params.trip_points_c
    while level < len(trips) and temperature_c >= trips[level]:
        level += 1
    while level > 0 and temperature_c < trips[level - 1] - params.hysteresis_c:
        level -= 1
    return level


def power_w(params: ThermalParameters, utilisation: float, factor: float = 1.0) -> float:
    """Power drawn at ``utilisation`` in [0, 1] while running at ``factor`` of full speed."""
    utilisation = min(max(utilisation, 0.0), 1.0)
    return params.idle_power_w + utilisation * (params.max_power_w - params.idle_power_w) * factor


def step(params: ThermalParameters, state: ThermalState, utilisation: float, dt_s: float) -> ThermalState:
    """Advance the model by ``dt_s`` seconds at a constant ``utilisation``."""
    if dt_s <= 0:
        return ThermalState(state.temperature_c, throttle_level(params, state.temperature_c, state.level))
    tau = params.time_constant_s
    substeps = min(max(math.ceil(dt_s / (tau / 20.0)), 1), _MAX_SUBSTEPS)
    dt = dt_s / substeps
    decay = math.exp(-dt / tau)
    temperature, level = state.temperature_c, state.level
    for _ in range(substeps):
        power = power_w(params, utilisation, throttle_factor(params, level))
        equilibrium = params.ambient_c + power * params.resistance_c_per_w
        temperature = equilibrium + (temperature - equilibrium) * decay
        level = throttle_level(params, temperature, level)
    return ThermalState(temperature, level)


def read_sensor(sysfs_root: Path | str = SYSFS_THERMAL,
                ignored_types: Collection[str] = IGNORED_ZONE_TYPES) -> float | None:
    """Hottest plausible ``thermal_zone*/temp`` under ``sysfs_root`` in °C, or None if none.

    Files hold millidegrees Celsius. Zones that cannot be read, do not parse, report an
    implausible value, or whose ``type`` is in ``ignored_types`` are skipped.
    """
    root = Path(sysfs_root)
    hottest: float | None = None
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    for zone in zones:
        try:
            zone_type = (zone / "type").read_text().strip() if (zone / "type").exists() else ""
            if zone_type in ignored_types:
                continue
            celsius = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1] and (hottest is None or celsius > hottest):
            hottest = celsius
    return hottest


Source = Literal["model", "sensor", "injected", "none"]


@dataclass(frozen=True)
class ThermalReading:
    """What a node gossips about its heat.

    ``emulated`` says whether the throttle must be applied by padding compute (model or
    injected temperature); a real sensor's device throttles itself, so its measured block
    times already include the slowdown.
    """

    temperature_c: float | None
    throttle_factor: float
    source: Source

    @property
    def emulated(self) -> bool:
        return self.source in ("model", "injected")

    @property
    def speed_lost(self) -> float:
        """``1 - throttle_factor``: the convention of gossip's ``Thermal.throttle`` (0 = full speed)."""
        return 1.0 - self.throttle_factor


class ThermalModel:
    """A node's heat: the real sensor if present and enabled, else the emulated RC model.

    ``update(utilisation)`` advances the emulated model by the time since the previous
    update (the caller passes the mean utilisation over that interval). ``inject`` forces
    a temperature, either once (the model evolves from there) or held until ``release``;
    a held temperature also overrides a real sensor.
    """

    def __init__(self, params: ThermalParameters | None, *, use_sensor: bool = False,
                 sysfs_root: Path | str = SYSFS_THERMAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.params = params
        self.use_sensor = use_sensor
        self.sysfs_root = Path(sysfs_root)
        self._clock = clock
        self._last_s = clock()
        self._state = initial_state(params) if params is not None else None
        self._held: float | None = None
        self._sensor_level = 0

    @classmethod
    def for_profile(cls, profile: DeviceProfile, *, use_sensor: bool | None = None,
                    sysfs_root: Path | str = SYSFS_THERMAL,
                    clock: Callable[[], float] = time.monotonic) -> ThermalModel:
        """The model for a device profile; real sensors by default only for the native profile."""
        if use_sensor is None:
            use_sensor = profile.thermal is None
        return cls(profile.thermal, use_sensor=use_sensor, sysfs_root=sysfs_root, clock=clock)

    def update(self, utilisation: float, now_s: float | None = None) -> ThermalReading:
        now = self._clock() if now_s is None else now_s
        dt = now - self._last_s
        self._last_s = max(now, self._last_s)
        if self._state is not None and self.params is not None:
            if self._held is not None:
                self._state = ThermalState(self._held, throttle_level(self.params, self._held, self._state.level))
            else:
                self._state = step(self.params, self._state, utilisation, dt)
        return self.reading()

    def inject(self, temperature_c: float, *, hold: bool = False) -> None:
        """Force the temperature (thermal scenarios, tests); ``hold`` pins it until ``release``."""
        if self.params is None:
            raise ValueError("no thermal parameters: nothing to inject into (the profile has no emulated heat)")
        level = throttle_level(self.params, temperature_c, self._state.level if self._state else 0)
        self._state = ThermalState(temperature_c, level)
        self._held = temperature_c if hold else None

    def release(self) -> None:
        """Let a held temperature evolve again."""
        self._held = None

    def reading(self) -> ThermalReading:
        if self._held is not None and self._state is not None:
            return ThermalReading(self._state.temperature_c, throttle_factor(self.params, self._state.level),
                                  "injected")
        if self.use_sensor:
            sensed = read_sensor(self.sysfs_root)
            if sensed is not None:
                if self.params is not None:
                    self._sensor_level = throttle_level(self.params, sensed, self._sensor_level)
                return ThermalReading(sensed, throttle_factor(self.params, self._sensor_level), "sensor")
        if self._state is not None:
            return ThermalReading(self._state.temperature_c, throttle_factor(self.params, self._state.level),
                                  "model")
        return ThermalReading(None, 1.0, "none")

    @property
    def temperature_c(self) -> float | None:
        return self.reading().temperature_c

    @property
    def throttle_factor(self) -> float:
        return self.reading().throttle_factor
