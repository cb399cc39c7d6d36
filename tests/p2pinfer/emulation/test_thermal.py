"""Thermal model: heating, throttling with hysteresis, cooling, sensors, injection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from p2pinfer.emulation.device_profile import ThermalParameters, get_profile
from p2pinfer.emulation.thermal import ThermalModel, ThermalState, initial_state, read_sensor, step, throttle_level

PARAMS = ThermalParameters(ambient_c=25.0, idle_power_w=2.0, max_power_w=10.0, resistance_c_per_w=6.5,
                           capacitance_j_per_c=9.0, trip_points_c=(70.0, 80.0), throttle_factors=(0.7, 0.5),
                           hysteresis_c=5.0)


def run(state: ThermalState, utilisation: float, seconds: float, dt_s: float = 1.0) -> list[ThermalState]:
    history = []
    for _ in range(int(seconds / dt_s)):
        state = step(PARAMS, state, utilisation, dt_s)
        history.append(state)
    return history


def test_full_load_heats_past_the_trip_point_and_throttles() -> None:
    start = initial_state(PARAMS)
    assert start.temperature_c == pytest.approx(25.0 + 2.0 * 6.5) and start.level == 0
    history = run(start, 1.0, seconds=600)
    assert max(state.temperature_c for state in history) >= PARAMS.trip_points_c[0]
    assert history[-1].level >= 1
    # Throttling cuts power: the device settles below its unthrottled full-load equilibrium.
    assert history[-1].temperature_c < PARAMS.full_load_equilibrium_c - 5.0


def test_cooling_recovers_only_below_the_hysteresis_band() -> None:
    hot = ThermalState(temperature_c=72.0, level=1)
    history = run(hot, 0.0, seconds=300, dt_s=0.5)
    in_band = [state for state in history if 65.0 <= state.temperature_c < 70.0]
    assert in_band and all(state.level == 1 for state in in_band), "still throttled inside the band"
    below = [state for state in history if state.temperature_c < 65.0]
    assert below and all(state.level == 0 for state in below)
    assert history[-1].temperature_c == pytest.approx(initial_state(PARAMS).temperature_c, abs=0.5)


def test_throttle_levels_with_hysteresis() -> None:
    assert throttle_level(PARAMS, 69.9, 0) == 0
    assert throttle_level(PARAMS, 70.0, 0) == 1
    assert throttle_level(PARAMS, 85.0, 0) == 2
    assert throttle_level(PARAMS, 76.0, 2) == 2  # above 80 - 5
    assert throttle_level(PARAMS, 74.0, 2) == 1
    assert throttle_level(PARAMS, 66.0, 1) == 1
    assert throttle_level(PARAMS, 50.0, 2) == 0


def test_step_is_the_exact_solution_between_throttle_changes() -> None:
    state = ThermalState(30.0)
    one = step(PARAMS, state, 0.3, 20.0)
    many = state
    for _ in range(200):
        many = step(PARAMS, many, 0.3, 0.1)
    equilibrium = 25.0 + (2.0 + 0.3 * 8.0) * 6.5
    exact = equilibrium + (30.0 - equilibrium) * math.exp(-20.0 / PARAMS.time_constant_s)
    assert one.temperature_c == pytest.approx(exact) and many.temperature_c == pytest.approx(exact)
    assert step(PARAMS, state, 1.0, 0.0).temperature_c == 30.0


def write_zone(root: Path, name: str, temp: str, zone_type: str | None = None) -> None:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "temp").write_text(temp)
    if zone_type is not None:
        (zone / "type").write_text(zone_type + "\n")


def test_read_sensor_parses_millidegrees_and_skips_junk(tmp_path: Path) -> None:
    assert read_sensor(tmp_path / "absent") is None
    assert read_sensor(tmp_path) is None
    write_zone(tmp_path, "thermal_zone0", "45500\n", "CPU-therm")
    write_zone(tmp_path, "thermal_zone1", "51000\n", "GPU-therm")
    write_zone(tmp_path, "thermal_zone2", "100000\n", "PMIC-Die")  # a constant placeholder
    write_zone(tmp_path, "thermal_zone3", "garbage\n")
    write_zone(tmp_path, "thermal_zone4", "-273000\n")
    assert read_sensor(tmp_path) == 51.0


def test_model_prefers_an_enabled_sensor(tmp_path: Path) -> None:
    write_zone(tmp_path, "thermal_zone0", "82000")
    sensed = ThermalModel(PARAMS, use_sensor=True, sysfs_root=tmp_path, clock=lambda: 0.0)
    reading = sensed.update(0.5, now_s=1.0)
    assert reading.source == "sensor" and reading.temperature_c == 82.0 and not reading.emulated
    assert reading.throttle_factor == 0.5 and reading.speed_lost == 0.5  # above both trip points
    disabled = ThermalModel(PARAMS, use_sensor=False, sysfs_root=tmp_path, clock=lambda: 0.0)
    assert disabled.reading().source == "model" and disabled.reading().emulated
    absent = ThermalModel(PARAMS, use_sensor=True, sysfs_root=tmp_path / "none", clock=lambda: 0.0)
    assert absent.reading().source == "model"
    nothing = ThermalModel(None, use_sensor=True, sysfs_root=tmp_path / "none", clock=lambda: 0.0)
    assert nothing.reading().source == "none" and nothing.throttle_factor == 1.0


def test_model_integrates_real_elapsed_time() -> None:
    now = [0.0]
    model = ThermalModel(PARAMS, clock=lambda: now[0])
    for second in range(1, 601):
        now[0] = float(second)
        model.update(1.0)
    assert model.throttle_factor < 1.0
    for second in range(601, 1201):
        now[0] = float(second)
        model.update(0.0)
    assert model.throttle_factor == 1.0


def test_inject_forces_a_temperature_once_or_held(tmp_path: Path) -> None:
    model = ThermalModel(PARAMS, clock=lambda: 0.0)
    model.inject(90.0)
    assert model.reading().source == "model" and model.throttle_factor == 0.5
    model.update(0.0, now_s=600.0)
    assert model.throttle_factor == 1.0  # evolved from the injected value and cooled

    write_zone(tmp_path, "thermal_zone0", "40000")
    held = ThermalModel(PARAMS, use_sensor=True, sysfs_root=tmp_path, clock=lambda: 0.0)
    held.inject(75.0, hold=True)
    for now in (100.0, 200.0, 300.0):
        held.update(0.0, now_s=now)
        assert held.reading().source == "injected" and held.temperature_c == 75.0 and held.throttle_factor == 0.7
    held.release()
    assert held.reading().source == "sensor" and held.temperature_c == 40.0
    with pytest.raises(ValueError):
        ThermalModel(None).inject(80.0)


def test_for_profile_uses_sensors_only_for_native(tmp_path: Path) -> None:
    write_zone(tmp_path, "thermal_zone0", "40000")
    native = ThermalModel.for_profile(get_profile("native"), sysfs_root=tmp_path)
    assert native.reading().source == "sensor"
    nano = ThermalModel.for_profile(get_profile("jetson-nano"), sysfs_root=tmp_path)
    assert nano.reading().source == "model"
