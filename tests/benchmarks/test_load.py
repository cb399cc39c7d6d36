"""The arrival schedule: the same seed gives the same workload for every policy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.load import Activity, build_schedule, closed_loop_items, make_users, sample_deadline
from benchmarks.scenario import DeadlineDistribution, load_scenario, parse_scenario

IMAGES = 540


def small_document(seed: int = 3, **users) -> dict:
    group = {"group": "g", "count": 3, "rate_per_s": 5.0, "deadline": {"kind": "uniform", "low_ms": 20, "high_ms": 80}}
    group.update(users)
    return {"duration_s": 10, "seed": seed, "feedback_share": 0.3,
            "cluster": {"nodes": [{"name": "a"}, {"name": "b"}]}, "users": [group]}


def test_same_seed_same_arrivals():
    scenario = parse_scenario(small_document(seed=3))
    first, second = build_schedule(scenario, IMAGES), build_schedule(scenario, IMAGES)
    assert first.arrivals == second.arrivals
    assert len(first.arrivals) > 50
    other = build_schedule(parse_scenario(small_document(seed=4)), IMAGES)
    assert [arrival.at_s for arrival in other.arrivals] != [arrival.at_s for arrival in first.arrivals]


def test_arrivals_are_sorted_bounded_and_look_poisson():
    schedule = build_schedule(parse_scenario(small_document()), IMAGES)
    times = [arrival.at_s for arrival in schedule.arrivals]
    assert times == sorted(times) and times[0] > 0 and times[-1] < 10
    assert 100 < len(times) < 200  # 3 users x 5/s x 10 s = 150 expected
    assert all(0 <= arrival.image_index < IMAGES for arrival in schedule.arrivals)
    assert all(20 <= arrival.deadline_ms <= 80 for arrival in schedule.arrivals)
    assert 0.15 < sum(arrival.feedback for arrival in schedule.arrivals) / len(times) < 0.45
    assert len({arrival.key for arrival in schedule.arrivals}) == len(times)


def test_a_load_swing_never_shifts_other_streams():
    document = small_document()
    document["users"].append({"group": "burst", "count": 0, "rate_per_s": 5.0})
    document["events"] = [{"at_s": 3, "kind": "users", "args": {"group": "burst", "count": 2}},
                          {"at_s": 6, "kind": "users", "args": {"group": "burst", "count": 0}}]
    with_swing = build_schedule(parse_scenario(document), IMAGES)
    without = build_schedule(parse_scenario(small_document()), IMAGES)
    steady = [arrival for arrival in with_swing.arrivals if arrival.user.startswith("g-")]
    assert steady == without.arrivals
    burst = [arrival for arrival in with_swing.arrivals if arrival.user.startswith("burst-")]
    assert burst and all(3 <= arrival.at_s < 6 for arrival in burst)
    assert {arrival.user for arrival in burst} == {"burst-0", "burst-1"}
    activity = Activity(parse_scenario(document))
    assert activity.count("burst", 2.9) == 0 and activity.count("burst", 3.0) == 2 and activity.count("burst", 7) == 0


def test_users_spread_over_nodes_with_failover():
    scenario = parse_scenario(small_document())
    users = make_users(scenario)
    assert {user.entry for user in users} == {"a", "b"}
    assert all(user.failover[0] == user.entry and sorted(user.failover) == ["a", "b"] for user in users)
    pinned = make_users(parse_scenario(small_document(entry=["b"])))
    assert {user.entry for user in pinned} == {"b"}


def test_closed_loop_items_are_deterministic():
    document = small_document(think_ms=50)
    del document["users"][0]["rate_per_s"]
    scenario = parse_scenario(document)
    user = make_users(scenario)[0]
    first = [item for _, item in zip(range(20), closed_loop_items(scenario, user, IMAGES), strict=False)]
    second = [item for _, item in zip(range(20), closed_loop_items(scenario, user, IMAGES), strict=False)]
    assert first == second and all(item.think_s >= 0 for item in first)
    assert build_schedule(scenario, IMAGES).arrivals == []


def test_deadline_distributions_stay_in_bounds():
    import numpy as np

    rng = np.random.default_rng(1)
    lognormal = DeadlineDistribution(kind="lognormal", median_ms=100, sigma=1.0, min_ms=30, max_ms=400)
    values = [sample_deadline(lognormal, rng) for _ in range(2000)]
    assert min(values) >= 30 and max(values) <= 400
    assert 80 < float(np.median(values)) < 125
    assert sample_deadline(DeadlineDistribution(kind="fixed", ms=42), rng) == 42


@pytest.mark.parametrize("name", ["steady", "bandwidth-trace", "thermal", "load-swing", "node-failure", "fairness",
                                  "demo"])
def test_bundled_scenarios_schedule(name):
    scenario = load_scenario(name)
    schedule = build_schedule(scenario, IMAGES)
    assert schedule.arrivals or schedule.closed_loop_users
    assert build_schedule(replace(scenario), IMAGES).arrivals == schedule.arrivals
