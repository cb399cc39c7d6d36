"""Delayed feedback is applied to the context and arm remembered for that request id."""

from __future__ import annotations

import numpy as np
import pytest

from selector import Arm, InvalidParameterError, QoEOutcome, make_policy

ARM_A, ARM_B = Arm("net-w1.0", 3), Arm("net-w0.5", 1)
LEARNING = ["linucb", "thompson", "mulinucb", "epsilon-greedy", "discounted-linucb"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("name", LEARNING)
def test_feedback_updates_the_remembered_arm_with_the_remembered_context(name):
    policy = make_policy(name, 3)
    first, second = np.array([1.0, 0.2, 0.7]), np.array([1.0, 0.9, 0.1])
    policy.remember("request-1", first, ARM_A)
    policy.remember("request-2", second, ARM_B)
    first[:] = 0.0  # the caller reusing its buffer must not change what was remembered
    assert policy.statistics(ARM_A).count == 0 and policy.statistics(ARM_B).count == 0

    assert policy.feedback("request-2", 0.25)
    statistics_b = policy.statistics(ARM_B)
    np.testing.assert_allclose(statistics_b.gram, np.outer(second, second), rtol=1e-12)
    np.testing.assert_allclose(statistics_b.moment, 0.25 * second, rtol=1e-12)
    assert statistics_b.count == 1
    assert policy.statistics(ARM_A).count == 0  # not applied to the other arm

    assert policy.feedback("request-1", -0.5)
    remembered = np.array([1.0, 0.2, 0.7])
    np.testing.assert_allclose(policy.statistics(ARM_A).moment, -0.5 * remembered, rtol=1e-12)
    np.testing.assert_allclose(policy.statistics(ARM_A).gram, np.outer(remembered, remembered), rtol=1e-12)


@pytest.mark.parametrize("name", LEARNING + ["fixed", "random"])
def test_unknown_or_repeated_request_ids_are_refused(name):
    policy = make_policy(name, 2, arm=ARM_A) if name == "fixed" else make_policy(name, 2)
    assert policy.feedback("never-seen", 1.0) is False
    policy.remember("once", np.ones(2), ARM_A)
    assert policy.feedback("once", 1.0) is True
    assert policy.feedback("once", 1.0) is False


def test_provisional_reward_is_replaced_not_added():
    policy = make_policy("linucb", 2)
    context = np.array([1.0, 0.5])
    outcome = QoEOutcome(accuracy=0.6, latency_ms=20.0, deadline_ms=50.0, deadline_met=True)
    policy.remember("r", context, ARM_A, provisional_reward=0.3, outcome=outcome)
    assert policy.statistics(ARM_A).count == 1
    np.testing.assert_allclose(policy.statistics(ARM_A).moment, 0.3 * context)
    assert policy.pending_decision("r").outcome == outcome
    assert policy.feedback("r", 0.9)
    statistics = policy.statistics(ARM_A)
    assert statistics.count == 1  # the request counts once
    np.testing.assert_allclose(statistics.moment, 0.9 * context, rtol=1e-12)
    np.testing.assert_allclose(statistics.gram, np.outer(context, context), rtol=1e-12)
    reference = make_policy("linucb", 2)
    reference.update(context, ARM_A, 0.9)
    np.testing.assert_allclose(policy.theta(ARM_A), reference.theta(ARM_A), atol=1e-12)


def test_discounted_correction_is_aged_like_the_original_observation():
    discount, arm_discount = 0.9, 0.8
    policy = make_policy("linucb", 2, discount=discount, arm_discount=arm_discount)
    context = np.array([1.0, 0.5])
    policy.remember("r", context, ARM_A, provisional_reward=0.0)
    for _ in range(5):
        policy.update(np.array([1.0, 0.1]), ARM_B, 0.2)
    for _ in range(2):
        policy.update(np.array([0.0, 1.0]), ARM_A, 0.0)  # zero reward: moment only holds the correction
    assert policy.feedback("r", 1.0)
    np.testing.assert_allclose(policy.statistics(ARM_A).moment, discount ** 7 * arm_discount ** 2 * context,
                               rtol=1e-10)


def test_pending_decisions_expire_and_are_bounded():
    clock = FakeClock()
    policy = make_policy("linucb", 2, max_pending=3, pending_ttl_s=60.0, clock=clock)
    for index in range(4):
        policy.remember(f"r{index}", np.ones(2), ARM_A)
    assert policy.pending.evicted == 1
    assert policy.feedback("r0", 1.0) is False  # the oldest was dropped to stay within max_pending
    clock.now += 61.0
    assert policy.feedback("r1", 1.0) is False  # expired
    assert len(policy.pending) == 0 and policy.pending.expired == 3  # r1, r2, r3
    assert policy.statistics(ARM_A).count == 0


def test_invalid_feedback_is_refused_and_keeps_the_decision():
    policy = make_policy("linucb", 2)
    policy.remember("r", np.ones(2), ARM_A)
    with pytest.raises(InvalidParameterError):
        policy.feedback("r", float("nan"))
    assert policy.feedback("r", 0.5)
    with pytest.raises(InvalidParameterError):
        policy.remember("", np.ones(2), ARM_A)
