"""Sufficient statistics: merging two nodes' deltas into a fresh policy equals training one policy on
the union; deltas survive the wire format; malformed statistics are refused."""

from __future__ import annotations

import numpy as np
import pytest

from selector import Arm, StatisticsDelta, StatisticsError, SufficientStatistics, make_policy

ARMS = [Arm(f"variant-{i}", i, None if i % 2 else 2) for i in range(5)]
LINEAR = ["linucb", "thompson", "mulinucb", "epsilon-greedy"]


def feed(policy, data):
    for context, arm, reward in data:
        policy.update(context, arm, reward)


def assert_same_knowledge(left, right, arms, context):
    for arm in arms:
        a, b = left.statistics(arm), right.statistics(arm)
        assert a.count == b.count
        np.testing.assert_allclose(a.gram, b.gram, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(a.moment, b.moment, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(left.theta(arm), right.theta(arm), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(left.estimates(context, arms), right.estimates(context, arms), atol=1e-9)


@pytest.mark.parametrize("name", LINEAR)
def test_merge_of_two_nodes_equals_training_on_the_union(name, make_observations):
    data_a = make_observations(300, 6, ARMS, seed=1)
    data_b = make_observations(200, 6, ARMS[1:], seed=2)  # node b never saw arm 0
    node_a, node_b = make_policy(name, 6, origin="node-a"), make_policy(name, 6, origin="node-b")
    feed(node_a, data_a)
    feed(node_b, data_b)
    union = make_policy(name, 6)
    feed(union, data_a + data_b)

    fresh = make_policy(name, 6, origin="coordinator")
    assert fresh.merge(node_a.export_delta()) and fresh.merge(node_b.export_delta())
    assert_same_knowledge(fresh, union, ARMS, np.linspace(0, 1, 6))

    # each node merging the other's delta also ends up with the union
    node_c = make_policy(name, 6, origin="node-c")
    feed(node_c, data_a)
    node_c.export_delta()  # what it exported before is not exported again
    feed(node_c, data_b[:50])
    delta_c = node_c.export_delta()
    assert delta_c.count == 50


def test_merge_with_corrected_rewards_equals_union_of_final_rewards(make_observations):
    data = make_observations(100, 4, ARMS, seed=3)
    node = make_policy("linucb", 4, origin="node")
    for index, (context, arm, reward) in enumerate(data):
        node.remember(f"r{index}", context, arm, provisional_reward=0.0)
        node.feedback(f"r{index}", reward)
    union = make_policy("linucb", 4)
    feed(union, data)
    fresh = make_policy("linucb", 4)
    fresh.merge(StatisticsDelta.from_bytes(node.export_delta().to_bytes()))  # through the wire format
    assert_same_knowledge(fresh, union, ARMS, np.full(4, 0.5))


def test_merge_ignores_own_and_duplicate_deltas_and_does_not_reexport(make_observations):
    node_a, node_b = make_policy("linucb", 4, origin="a"), make_policy("linucb", 4, origin="b")
    feed(node_a, make_observations(40, 4, ARMS, seed=4))
    delta = node_a.export_delta()
    assert node_a.merge(delta) is False  # its own delta echoed back by the coordinator
    assert node_b.merge(delta) is True
    assert node_b.merge(delta) is False  # delivered twice by gossip
    assert node_b.statistics(ARMS[0]).count == node_a.statistics(ARMS[0]).count
    assert node_b.export_delta().is_empty  # merged knowledge is not sent on again
    assert node_a.export_delta().is_empty and node_a.sequence == 2


def test_merge_refuses_other_dimensions_and_bad_payloads():
    policy = make_policy("linucb", 4)
    other = make_policy("linucb", 3, origin="x")
    other.update(np.ones(3), ARMS[0], 1.0)
    with pytest.raises(StatisticsError):
        policy.merge(other.export_delta())
    with pytest.raises(StatisticsError):
        StatisticsDelta.from_bytes(b"definitely not npz")


def test_discounted_policy_merges_deltas_as_fresh_data(make_observations):
    node = make_policy("linucb", 4, origin="n")
    feed(node, make_observations(50, 4, ARMS, seed=5))
    delta = node.export_delta()
    discounted = make_policy("discounted-linucb", 4)
    discounted.merge(delta)
    for arm in ARMS:
        np.testing.assert_allclose(discounted.statistics(arm).gram, delta.arms[arm.key].gram, rtol=1e-10)
        np.testing.assert_allclose(discounted.theta(arm), node.theta(arm), atol=1e-9)
    # a discounted node exports its raw, undiscounted local observations
    data = make_observations(30, 4, ARMS, seed=6)
    feed(discounted, data)
    exported = discounted.export_delta()
    plain = make_policy("linucb", 4)
    feed(plain, data)
    for key, statistics in exported.arms.items():
        np.testing.assert_allclose(statistics.gram, plain.statistics(Arm.from_key(key)).gram, rtol=1e-12)


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
