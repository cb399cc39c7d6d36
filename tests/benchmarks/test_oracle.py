"""The oracle in hindsight on hand-made measurements: a bound, never worse than a policy."""

from __future__ import annotations

import pytest

from benchmarks.load import RequestRecord
from benchmarks.oracle import ComponentSeries, compute_oracle, floor_summary
from benchmarks.report import EnergyModel, score

WEIGHTS = {"accuracy": 1.0, "latency": 0.5, "energy": 0.1}


def record(policy: str, key: str, at_s: float, timings: list[dict] | None, latency_ms: float | None,
           correct: bool = True, exit_block: int = 2, deadline_ms: float = 50.0,
           min_accuracy: float | None = None) -> RequestRecord:
    ok = timings is not None
    return RequestRecord(
        key=key, policy=policy, user="u-0", group="u", family="digits-cnn", sequence=0, scheduled_s=at_s,
        sent_s=at_s, done_s=at_s, outcome="ok" if ok else "overloaded", latency_ms=latency_ms,
        deadline_ms=deadline_ms, deadline_met=ok and latency_ms is not None and latency_ms <= deadline_ms,
        image_index=0, true_label=3, label=3 if correct else 4, correct=correct if ok else None,
        variant="digits-cnn-w1" if ok else "", exit=exit_block if ok else None,
        arm=f"digits-cnn-w1@{exit_block}" if ok else "", entry_node="a" if ok else "", assigned_entry="a",
        timings=timings or [], qoe_weights=WEIGHTS, min_accuracy=min_accuracy)


def segment(node: str, first: int, last: int, compute: float, queue: float = 0.0, transfer: float = 0.0) -> dict:
    return {"node": node, "unit": "cpu", "first_block": first, "last_block": last, "compute_ms": compute,
            "queue_ms": queue, "transfer_ms": transfer}


def test_component_series_uses_the_window_then_the_nearest():
    series = ComponentSeries()
    series.add(1.0, 5.0)
    series.add(1.2, 3.0)
    series.add(10.0, 1.0)
    assert series.lowest_near(1.1, 2.0) == 3.0
    assert series.lowest_near(9.0, 2.0) == 1.0
    assert series.lowest_near(5.0, 0.5) == 3.0  # nearest in time: the bin at 1.2 s
    assert ComponentSeries().lowest_near(0, 1) is None


def test_oracle_composes_measured_hops_and_bounds_every_policy():
    records = [
        # local-only: slow compute on "a"
        record("local", "k1", 1.0, [segment("a", 0, 2, 30.0, queue=2.0)], 35.0),
        record("local", "k2", 1.5, None, None),
        # a split that sends blocks 1-2 to "b"
        record("split", "k1", 1.0, [segment("a", 0, 0, 4.0), segment("b", 1, 2, 3.0, queue=1.0, transfer=2.0)], 14.0),
        record("split", "k2", 1.5, [segment("a", 0, 0, 5.0), segment("b", 1, 2, 2.0, queue=0.5, transfer=3.0)], 13.0,
               correct=False),
    ]
    score(records, EnergyModel.from_manifest())
    oracle = compute_oracle(records, duration_s=10.0)
    assert oracle.no_estimate == 0 and set(oracle.choices) == {"k1", "k2"}
    for item in records:
        if item.ok:
            assert oracle.floors[(item.policy, item.key)] <= item.latency_ms
        assert oracle.qoe_by_key[item.key] >= item.qoe - 1e-9
    # the split's parts at their best: a[0] 4 + b[1-2] (2 + 0.5 + 2) + overhead min(14-10, 13-10.5=2.5) = 11
    assert oracle.floors[("split", "k1")] == pytest.approx(11.0, abs=1e-3)
    # the local run's floor: its compute (30) + the least queueing seen at "a" in any run (0) + the
    # overhead of a plan ending on "a" (35 - 32 = 3)
    assert oracle.floors[("local", "k1")] == pytest.approx(33.0, abs=1e-3)
    # k2 errored under "local" but the oracle still estimates it from measured components
    assert oracle.choices["k2"].latency_ms <= 13.0
    assert floor_summary(oracle, "split")["p50"] <= 13.5
    assert oracle.summary["requests"] == 2 and oracle.summary["mean_qoe"] >= max(
        sum(item.qoe for item in records if item.policy == policy) / 2 for policy in ("local", "split"))


def test_the_oracle_takes_no_arm_below_the_users_min_accuracy():
    """digits-cnn-w1's exit 0 is right 76 % of the time, exit 2 99 %: with a floor of 0.9 the
    oracle may not answer from the fast exit 0 that a policy without the floor used, however
    much better its QoE looks; without the floor it does."""
    def runs(floor: float | None) -> list[RequestRecord]:
        return [record("fast", "k1", 1.0, [segment("a", 0, 0, 1.0)], 3.0, exit_block=0, min_accuracy=floor),
                record("slow", "k1", 1.0, [segment("a", 0, 2, 30.0)], 33.0, exit_block=2, min_accuracy=floor)]

    for floor, wanted in ((None, 0), (0.9, 2)):
        records = runs(floor)
        score(records, EnergyModel.from_manifest())
        oracle = compute_oracle(records, duration_s=10.0)
        assert oracle.choices["k1"].exit == wanted, (floor, oracle.choices["k1"])
