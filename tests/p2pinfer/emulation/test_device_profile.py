"""Device profiles: the named set, slowdown padding, unknown names."""

from __future__ import annotations

import pytest

from p2pinfer.emulation.device_profile import PROFILES, DeviceProfile, get_profile
from p2pinfer.emulation.thermal import ThermalModel
from p2pinfer.errors import P2PError, UnknownProfile


def test_the_named_profiles_exist() -> None:
    assert {"native", "jetson-nano", "jetson-orin-nano", "rpi4", "edge-server"} <= set(PROFILES)
    assert get_profile("jetson-orin-nano").compute_units == ("cpu", "cuda:0")
    assert get_profile("rpi4").compute_units == ("cpu",)
    assert get_profile("native").compute_units == () and get_profile("native").thermal is None
    assert get_profile("jetson-nano").memory_mb == 4096


def test_unknown_profile_lists_the_known_names() -> None:
    with pytest.raises(UnknownProfile, match="jetson-nano") as caught:
        get_profile("cray-1")
    assert isinstance(caught.value, P2PError) and isinstance(caught.value, LookupError)
    assert "cray-1" in str(caught.value)


def test_padded_duration_stretches_to_the_profile_speed() -> None:
    nano = get_profile("jetson-nano")
    assert nano.padded_duration(0.010) == pytest.approx(0.080)
    assert nano.padded_duration(0.010, unit="cuda:0") == pytest.approx(0.040)
    assert nano.padded_duration(0.010, throttle_factor=0.5) == pytest.approx(0.160)
    assert nano.padding_s(0.010) == pytest.approx(0.070)
    assert get_profile("native").padded_duration(0.010) == 0.010
    assert get_profile("rpi4").padded_duration(0.01, unit="cuda:0") == 0.01  # a real GPU runs as is
    with pytest.raises(ValueError):
        nano.padded_duration(0.01, throttle_factor=0.0)


def test_profiles_cannot_be_faster_than_the_host() -> None:
    with pytest.raises(ValueError):
        DeviceProfile(name="magic", description="", unit_slowdowns={"cpu": 0.5}, memory_mb=1)


@pytest.mark.parametrize("name", [name for name, profile in PROFILES.items() if profile.thermal is not None])
def test_every_emulated_profile_heats_and_stays_sane(name: str) -> None:
    profile = get_profile(name)
    model = ThermalModel.for_profile(profile, clock=lambda: 0.0)
    reading = model.update(1.0, now_s=3600.0)
    assert profile.thermal is not None
    assert profile.thermal.ambient_c < reading.temperature_c < 110.0
    assert 0 < reading.throttle_factor <= 1.0


def test_profiles_compose_with_the_hosts_real_units() -> None:
    """Issue 17: ``--units cuda:0 --device-profile edge-server`` refused to start. A profile's
    named units are emulated, a real accelerator it does not name runs as is, a second CPU
    unit is emulated like the first, a Jetson's GPU keeps its named slowdown."""
    edge, rpi4, orin = get_profile("edge-server"), get_profile("rpi4"), get_profile("jetson-orin-nano")
    assert edge.slowdown("cuda:0") == 1.0 and edge.slowdown("cuda:1") == 1.0
    assert rpi4.slowdown("cpu") == rpi4.slowdown("cpu:1") == 10.0
    assert orin.slowdown("cuda:0") == 1.5 and orin.slowdown("cuda:1") == 1.5
    assert "real" in edge.unit_speed("cuda:0") and "x10" in rpi4.unit_speed("cpu")
    assert "x1.5" in orin.unit_speed("cuda:0")
    no_cpu = DeviceProfile(name="gpu-only", description="", unit_slowdowns={"cuda:0": 2.0}, memory_mb=1)
    with pytest.raises(UnknownProfile, match="no compute unit 'cpu'"):
        no_cpu.slowdown("cpu")
