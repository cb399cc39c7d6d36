"""QoE rewards: the documented formula and range, feedback replacing the accuracy term, typed errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector import InvalidParameterError, QoEOutcome, QoEWeights, feedback_reward, qoe_reward

unit = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


def test_qoe_reward_follows_the_documented_formula():
    weights = QoEWeights(accuracy=1.0, latency=0.5, energy=0.1)
    reward = qoe_reward(weights, 0.9, latency_ms=40, deadline_ms=100, deadline_met=True, energy=0.5)
    assert reward == pytest.approx((1.0 * 0.9 - 0.5 * 0.4 - 0.1 * 0.5) / 1.6)
    missed = qoe_reward(weights, 0.9, latency_ms=140, deadline_ms=100, deadline_met=False, energy=0.5)
    assert missed == pytest.approx((0.9 - 0.5 * 1.0 - 0.05) / 1.6 - 1.0)
    assert qoe_reward(QoEWeights(2, 1, 0.2), 0.9, 40, 100, True, 0.5) == pytest.approx(reward)  # ratios only
    # faster is better, more accurate is better, a miss is worse than any hit
    assert qoe_reward(weights, 0.9, 20, 100, True) > qoe_reward(weights, 0.9, 60, 100, True)
    assert qoe_reward(weights, 0.95, 60, 100, True) > qoe_reward(weights, 0.7, 60, 100, True)
    assert qoe_reward(weights, 1.0, 100, 100, False) < qoe_reward(weights, 0.0, 100, 100, True, energy=10)


@settings(max_examples=200, deadline=None)
@given(accuracy=st.floats(-1, 2), latency=st.floats(0, 1e5), deadline=st.floats(0.01, 1e5), met=st.booleans(),
       energy=st.floats(0, 1e3), weights=st.tuples(unit, unit, unit).filter(lambda w: sum(w) > 0))
def test_qoe_reward_stays_in_its_range(accuracy, latency, deadline, met, energy, weights):
    reward = qoe_reward(QoEWeights(*weights), accuracy, latency, deadline, met, energy)
    assert -2.0 <= reward <= 1.0


def test_feedback_reward_replaces_the_accuracy_term():
    weights = QoEWeights()
    outcome = QoEOutcome(accuracy=0.6, latency_ms=30, deadline_ms=100, deadline_met=True, energy=0.2)
    right = feedback_reward(weights, outcome, correct=True)
    wrong = feedback_reward(weights, outcome, correct=False)
    assert right == pytest.approx(qoe_reward(weights, 1.0, 30, 100, True, 0.2))
    assert right - wrong == pytest.approx(weights.shares()[0])
    assert feedback_reward(weights, outcome, user_score=0.5) == pytest.approx(qoe_reward(weights, 0.5, 30, 100, True,
                                                                                         0.2))
    with pytest.raises(InvalidParameterError):
        feedback_reward(weights, outcome)
    with pytest.raises(InvalidParameterError):
        feedback_reward(weights, outcome, correct=True, user_score=1.0)
    with pytest.raises(InvalidParameterError):
        feedback_reward(weights, outcome, user_score=1.5)


def test_bad_weights_and_measurements_raise_typed_errors():
    with pytest.raises(InvalidParameterError):
        QoEWeights(accuracy=-1)
    with pytest.raises(InvalidParameterError):
        QoEWeights(0, 0, 0)
    with pytest.raises(InvalidParameterError):
        QoEWeights.from_mapping({"acuracy": 1.0})
    assert QoEWeights.from_mapping({"latency": 2}) == QoEWeights(latency=2.0)
    with pytest.raises(InvalidParameterError):
        qoe_reward(QoEWeights(), 0.5, 10, 0, True)
    with pytest.raises(InvalidParameterError):
        qoe_reward(QoEWeights(), math.nan, 10, 10, True)
