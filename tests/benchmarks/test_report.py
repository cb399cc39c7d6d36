"""Percentiles, Jain's index and the QoE of a request: the arithmetic the report rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.report import error_qoe, jain_index, latency_summary, local_qoe_reward, percentile, qoe_value

finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=200), st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_linear(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


def test_percentile_edges():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    summary = latency_summary([1.0, 2.0, 3.0])
    assert summary["p50"] == 2.0 and summary["mean"] == 2.0 and summary["max"] == 3.0


def test_jain_index_known_values():
    assert jain_index([]) is None
    assert jain_index([3, 3, 3, 3]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([0, 0]) == 1.0
    assert jain_index([1, 2]) == pytest.approx(9 / 10)
    with pytest.raises(ValueError):
        jain_index([1, -1])


@given(st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), min_size=1, max_size=50))
def test_jain_index_bounds(values):
    index = jain_index(values)
    assert 1 / len(values) - 1e-9 <= index <= 1 + 1e-9


def test_qoe_prefers_the_selector_formula_and_the_local_copy_agrees():
    weights = {"accuracy": 1.0, "latency": 0.5, "energy": 0.1}
    for accuracy, latency, deadline, met, energy in [(1.0, 20, 100, True, 0.3), (0.0, 150, 100, False, 1.0),
                                                     (1.0, 0, 50, True, 0.0)]:
        assert qoe_value(weights, accuracy, latency, deadline, met, energy) == pytest.approx(
            local_qoe_reward(weights, accuracy, latency, deadline, met, energy))
    on_time = qoe_value(weights, 1.0, 10, 100, True)
    late = qoe_value(weights, 1.0, 110, 100, False)
    assert on_time > late and error_qoe(weights, 100) <= late
    assert math.isfinite(error_qoe(weights, 100))


def test_issue_targets_compare_best_adaptive_static_and_oracle():
    from benchmarks.report import issue_targets, targets_markdown

    def entry(qoe: float, miss: float) -> dict:
        return {"status": "ran", "mean_qoe": qoe, "deadline_miss_rate": miss}

    report = {"policies": {"edgent": entry(-0.2, 0.1), "local-only": entry(-1.0, 0.7), "random": entry(0.5, 0.0),
                           "linucb": entry(0.1, 0.03), "thompson": entry(0.05, 0.01),
                           "fixed": {"status": "unavailable"}},
              "oracle": {"mean_qoe": 0.3}}
    targets = issue_targets(report)
    assert targets["best_adaptive"] == "linucb" and targets["best_static"] == "edgent"  # random is neither
    assert targets["beats_static_by_10pct"] and not targets["miss_rate_at_most_2pct"]
    assert not targets["within_10pct_of_oracle"] and targets["share_of_oracle_gap_closed"] == 0.6
    assert targets["lowest_adaptive_miss_rate"] == (0.01, "thompson")
    assert any("FAIL" in line for line in targets_markdown(targets))
    assert issue_targets({"policies": {"linucb": entry(0.1, 0.0)}, "oracle": {}}) is None
