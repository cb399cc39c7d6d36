"""Coordinator role and guidance: election, pressure, max-min fair shares, replica hints,
merged statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.membership.coordinator import (
    compute_guidance,
    elect,
    guidance_differs,
    max_min_fair_shares,
    node_capacity_rps,
    node_pressure,
    sum_float64_blobs,
)
from p2pinfer.membership.messages import Address, Load, Member, Status, Thermal
from p2pinfer.types import NodeId


def node(name: str, status: Status = Status.ALIVE, eligible: bool = True, utilisation: float = 0.0,
         queue: int = 0, throttle: float = 0.0, variants=None, capacity: float = 10.0) -> Member:
    return Member(node_id=NodeId(name), incarnation=1, address=Address(f"{name}:1"), status=status,
                  eligible_coordinator=eligible, load=Load(queue_depth=queue, utilisation=utilisation,
                                                           queue_capacity=16),
                  thermal=Thermal(temperature_c=50.0, throttle=throttle), variants=variants or {},
                  capacity_rps=capacity)


def test_lowest_live_eligible_id_is_elected():
    members = [node("c"), node("a", eligible=False), node("b", status=Status.DEAD), node("d"),
               node("b2", status=Status.SUSPECT)]
    assert elect(members) == "b2"
    assert elect([node("x", status=Status.LEFT)]) is None
    assert elect([]) is None


def test_pressure_rises_with_load_heat_and_demand():
    idle = [node(name) for name in "abcd"]
    busy = [node(name, utilisation=0.6, queue=4) for name in "abcd"]
    hot = [node(name, utilisation=0.6, queue=4, throttle=0.9) for name in "abcd"]
    levels = [compute_guidance(m, {}, coordinator=NodeId("a"), epoch=1).pressure_level for m in (idle, busy, hot)]
    assert levels[0] == 0.0 and levels[0] < levels[1] < levels[2] <= 1.0
    overloaded = compute_guidance(idle, {"u": 100.0}, coordinator=NodeId("a"), epoch=1)
    assert overloaded.pressure_level == 1.0  # 100 rps asked of 40 rps capacity
    assert node_pressure(node("q", queue=16)) == 1.0


def test_a_busy_node_that_keeps_up_is_not_under_pressure():
    # one closed-loop client keeps an executor busy all the time without a queue
    keeping_up = compute_guidance([node("a", utilisation=1.0)], {}, coordinator=NodeId("a"), epoch=1)
    assert keeping_up.pressure_level == 0.0
    backlog = compute_guidance([node("a", utilisation=1.0, queue=16)], {}, coordinator=NodeId("a"), epoch=1)
    assert backlog.pressure_level == 1.0


def test_capacity_from_advertised_rate_or_profile_scaled_by_throttle():
    assert node_capacity_rps(node("a", capacity=50.0, throttle=0.5)) == pytest.approx(25.0)
    profiled = node("b", capacity=0.0, variants={"big": [10.0, 10.0], "small": [2.0, 3.0]})
    assert node_capacity_rps(profiled) == pytest.approx(200.0)  # cheapest full run: 5 ms
    assert node_capacity_rps(node("c", capacity=0.0)) == 0.0


def test_max_min_fair_shares_water_filling():
    shares = max_min_fair_shares({"small": 2.0, "medium": 10.0, "large": 100.0}, capacity=30.0)
    assert shares == pytest.approx({"small": 2.0, "medium": 10.0, "large": 18.0})
    assert max_min_fair_shares({"a": 5.0, "b": 5.0}, capacity=100.0) == {"a": 5.0, "b": 5.0}
    assert max_min_fair_shares({"a": 5.0}, capacity=0.0) == {"a": 0.0}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=4), st.floats(0, 1e4), max_size=20), st.floats(0, 1e5))
def test_fair_shares_never_exceed_capacity_or_demand(demands, capacity):
    shares = max_min_fair_shares(demands, capacity)
    assert sum(shares.values()) <= capacity * (1 + 1e-9) + 1e-9
    for user, demand in demands.items():
        assert 0.0 <= shares[user] <= demand + 1e-9
    if sum(demands.values()) > capacity:  # work conserving: everything is handed out
        assert sum(shares.values()) == pytest.approx(capacity, rel=1e-6, abs=1e-6)


def test_guidance_admission_and_publication_threshold():
    members = [node(name) for name in "ab"]  # 20 rps
    guidance = compute_guidance(members, {"alice": 5.0, "bob": 45.0}, coordinator=NodeId("a"), epoch=3)
    assert guidance.epoch == 3 and guidance.coordinator == "a"
    assert guidance.fair_share_rps == {"alice": 5.0, "bob": 15.0}
    assert guidance.admit_fraction == {"alice": 1.0, "bob": pytest.approx(1 / 3, abs=1e-3)}
    assert sum(guidance.fair_share_rps.values()) <= guidance.capacity_rps
    same = compute_guidance(members, {"alice": 5.0, "bob": 45.5}, coordinator=NodeId("a"), epoch=4)
    assert not guidance_differs(guidance, same)
    calm = compute_guidance(members, {"alice": 2.0}, coordinator=NodeId("a"), epoch=5)
    busier = compute_guidance([node("a", queue=12), node("b")], {"alice": 2.0}, coordinator=NodeId("a"),
                              epoch=6)
    assert busier.pressure_level > calm.pressure_level and guidance_differs(calm, busier)


def test_replica_hints_move_hot_variants_to_cool_nodes():
    members = [node("a", utilisation=0.95, variants={"resnet-w1.0": [1.0]}),
               node("b", utilisation=0.9, variants={"resnet-w1.0": [1.0], "resnet-w0.5": [0.5]}),
               node("c", utilisation=0.1, variants={"resnet-w0.5": [0.5]}),
               node("d", utilisation=0.5)]
    guidance = compute_guidance(members, {}, coordinator=NodeId("a"), epoch=1)
    assert [(hint.variant, hint.node) for hint in guidance.replica_hints] == [("resnet-w1.0", "c")]


def test_merged_statistics_sum_and_skip_mismatched_blobs():
    merged = sum_float64_blobs({
        NodeId("a"): {"arm@1": np.array([1.0, 2.0]).tobytes(), "arm@2": np.array([5.0]).tobytes()},
        NodeId("b"): {"arm@1": np.array([10.0, 20.0]).tobytes(), "arm@2": np.array([1.0, 1.0]).tobytes()},
    })
    assert np.frombuffer(merged["arm@1"]).tolist() == [11.0, 22.0]
    assert np.frombuffer(merged["arm@2"]).tolist() == [5.0]
    guidance = compute_guidance([node("a")], {}, merged, coordinator=NodeId("a"), epoch=1, stats_version=7)
    assert guidance.stats_version == 7 and guidance.stats_arms == ["arm@1", "arm@2"]


def test_negative_profile_entries_mean_blocks_not_hosted():
    partial = node("p", capacity=0.0, variants={"resnet": [-1.0, -1.0, 4.0, 6.0]})
    assert node_capacity_rps(partial) == pytest.approx(100.0)  # only its hosted blocks: 10 ms
    whole = node("w", capacity=0.0, variants={"resnet": [-1.0, 5.0], "small": [2.0, 2.0]})
    assert node_capacity_rps(whole) == pytest.approx(250.0)  # the fully hosted variant counts
    members = [node("a", utilisation=0.95, variants={"resnet": [1.0, 1.0]}),
               node("b", utilisation=0.1, variants={"resnet": [-1.0, -1.0]}),
               node("c", utilisation=0.9, variants={"resnet": [-1.0, 1.0]})]
    hints = compute_guidance(members, {}, coordinator=NodeId("a"), epoch=1).replica_hints
    assert [(hint.variant, hint.node) for hint in hints] == [("resnet", "b")]
