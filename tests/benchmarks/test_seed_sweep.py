"""The seed sweep's report: median and spread of every figure, targets and host CPU per seed."""

from __future__ import annotations

import pytest

from benchmarks.seed_sweep import aggregate, spread, sweep_table


def report(miss: float, qoe: float, gap: float | None, host: float) -> dict:
    policy = {"status": "ran", "deadline_miss_rate": miss, "mean_qoe": qoe, "mean_accuracy": 0.9, "goodput_rps": 5.0,
              "error_count": 1, "requests": 100, "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0}}
    return {"scenario": {"name": "s"}, "duration_s": 10, "policies": {"linucb": policy},
            "oracle": {"deadline_miss_rate": 0.0, "mean_qoe": 0.5, "mean_accuracy": 0.95},
            "targets": {"best_adaptive": "linucb", "best_adaptive_miss_rate": miss,
                        "lowest_adaptive_miss_rate": [miss, "linucb"], "share_of_oracle_gap_closed": gap},
            "host": {"host_cpu": host, "host_cpu_max": 2.0, "run_cpu": 0.4, "cpu_count": 2},
            "invariants": {"ok": True}}


def test_spread_is_the_median_and_range_of_the_known_values():
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [3.0, None, 1.0, 2.0]}
    assert spread([None])["median"] is None


def test_aggregate_gives_median_and_spread_per_policy_target_and_host():
    sweep = aggregate({12: report(0.10, 0.2, 0.5, 1.0), 11: report(0.02, 0.4, 0.9, 2.0),
                       13: report(0.05, 0.3, None, 1.5)})
    assert sweep["seeds"] == [11, 12, 13]
    miss = sweep["policies"]["linucb"]["deadline_miss_rate"]
    assert (miss["median"], miss["min"], miss["max"], miss["values"]) == (0.05, 0.02, 0.10, [0.02, 0.10, 0.05])
    assert sweep["policies"]["linucb"]["p95"]["median"] == 20.0
    assert sweep["targets"]["share_of_oracle_gap_closed"]["median"] == pytest.approx(0.7)
    assert sweep["targets"]["lowest_adaptive_miss"]["max"] == 0.10
    assert sweep["host"]["host_cpu"]["median"] == 1.5 and sweep["host"]["cpu_count"] == 2
    assert sweep["invariants_ok"] == [True, True, True]
    assert "5.0% [2.0, 10.0]" in sweep_table(sweep)
