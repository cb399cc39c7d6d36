"""Arms have stable keys; statistics deltas survive the wire format."""

from __future__ import annotations

import numpy as np
import pytest

from selector import Arm, InvalidArmError, StatisticsDelta, StatisticsError, SufficientStatistics


def test_arm_keys_round_trip_and_define_identity():
    plain, split = Arm("digits-resnet-w1.0", 3), Arm("digits-resnet-w1.0", 3, split=1)
    assert plain.key == "digits-resnet-w1.0@3" and split.key == "digits-resnet-w1.0@3#1"
    assert Arm.from_key(plain.key) == plain and Arm.from_key(split.key) == split
    assert Arm.from_key("odd@name@2#0") == Arm("odd@name", 2, 0)
    assert plain != split and len({plain, Arm("digits-resnet-w1.0", np.int64(3)), split}) == 2
    assert str(split) == split.key


@pytest.mark.parametrize("bad", [("", 1, None), ("v", -1, None), ("v", 1.5, None), ("v", True, None), ("v", 1, -2)])
def test_malformed_arms_are_refused(bad):
    with pytest.raises(InvalidArmError):
        Arm(*bad)


@pytest.mark.parametrize("key", ["no-at-sign", "v@", "v@x", "v@1#", "v@1#y", "v@²"])
def test_malformed_keys_are_refused(key):
    with pytest.raises(InvalidArmError):
        Arm.from_key(key)


def test_delta_round_trips_through_bytes():
    generator = np.random.default_rng(0)
    arms = {}
    for key in ("a@1", "b@2#0"):
        context = generator.random((10, 3))
        arms[key] = SufficientStatistics(context.T @ context, context.T @ generator.random(10), 10)
    delta = StatisticsDelta("node-7", 4, 3, arms)
    decoded = StatisticsDelta.from_bytes(delta.to_bytes())
    assert (decoded.origin, decoded.sequence, decoded.dimension) == ("node-7", 4, 3)
    for key, statistics in arms.items():
        assert np.array_equal(decoded.arms[key].gram, statistics.gram)
        assert np.array_equal(decoded.arms[key].moment, statistics.moment)
        assert decoded.arms[key].count == 10
    empty = StatisticsDelta.from_bytes(StatisticsDelta("n", 1, 3).to_bytes())
    assert empty.is_empty and empty.dimension == 3


def test_statistics_validate_their_shapes():
    with pytest.raises(StatisticsError):
        SufficientStatistics(np.zeros((2, 3)), np.zeros(2), 0)
    with pytest.raises(StatisticsError):
        SufficientStatistics(np.full((2, 2), np.nan), np.zeros(2), 0)
    with pytest.raises(StatisticsError):
        StatisticsDelta("n", 1, 3, {"a@1": SufficientStatistics.zeros(2)})
    total = SufficientStatistics.zeros(2) + SufficientStatistics(np.eye(2), np.ones(2), 1)
    assert total.count == 1 and np.array_equal(total.gram, np.eye(2))
