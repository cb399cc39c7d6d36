"""Every policy does what it is for on a crafted bandit where one arm is clearly best."""

from __future__ import annotations

import numpy as np
import pytest

from selector import Arm, FixedPolicy, MuLinUCBPolicy, RandomPolicy, make_policy

LEARNING = ["linucb", "thompson", "mulinucb", "epsilon-greedy", "discounted-linucb", "discounted-thompson",
            "discounted-mulinucb", "discounted-epsilon-greedy"]


@pytest.mark.parametrize("name", LEARNING)
def test_learning_policy_settles_on_the_best_arm(name, crafted_environment):
    environment = crafted_environment(seed=1)
    options = {} if name in ("linucb", "discounted-linucb") else {"seed": 7}
    policy = make_policy(name, environment.dimension, **options)
    chosen = environment.run(policy, 900)
    late = np.array(chosen[-300:])
    assert (late == environment.best_index).mean() >= 0.85, np.bincount(late, minlength=6)
    # it did explore: more than one arm was tried early on
    assert len(set(chosen[:100])) >= 3


def test_learning_policies_track_context_dependent_best_arm():
    """Arm 0 is best when u > 0.5, arm 1 otherwise: the context must matter, not only the mean."""
    generator = np.random.default_rng(3)
    arms = [Arm("small", 0), Arm("large", 1)]
    for name in ("linucb", "thompson", "epsilon-greedy"):
        policy = make_policy(name, 2, **({} if name == "linucb" else {"seed": 2}))
        correct = []
        for _ in range(1200):
            u = generator.random()
            context = np.array([1.0, u])
            expected = np.array([u, 1.0 - u])
            arm = policy.select(context, arms)
            index = arms.index(arm)
            policy.update(context, arm, float(expected[index] + 0.05 * generator.standard_normal()))
            correct.append(index == int(np.argmax(expected)) or abs(u - 0.5) < 0.05)
        assert np.mean(correct[-400:]) >= 0.85, name


def test_random_policy_is_uniform_and_does_not_learn(crafted_environment):
    environment = crafted_environment(seed=2)
    policy = RandomPolicy(environment.dimension, seed=5)
    counts = np.bincount(environment.run(policy, 3000), minlength=6)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected, ~22 standard deviation
    assert policy.export_delta().is_empty


def test_fixed_policy_always_plays_its_arm_and_falls_back_when_masked(crafted_environment):
    environment = crafted_environment(seed=2)
    policy = FixedPolicy(environment.dimension, arm=environment.arms[2])
    assert set(environment.run(policy, 50)) == {2}
    mask = np.array([False, False, False, True, True, False])
    assert set(environment.run(policy, 20, mask)) == {3}
    assert FixedPolicy(environment.dimension, arm=environment.arms[2].key).arm == environment.arms[2]


def test_mulinucb_key_frames_exploit_and_forced_sampling_decays(crafted_environment):
    environment = crafted_environment(seed=4)
    policy = MuLinUCBPolicy(environment.dimension, seed=3, forced_sampling=1.0)
    environment.run(policy, 400)
    forced_early = policy.forced_selections
    assert 0 < forced_early < 80  # ~2 sqrt(400) = 40 expected
    assert policy.forced_sampling_rate() < 0.06
    # key frames are never forced and go to the best-known arm
    before = policy.ordinary_selections
    for _ in range(100):
        arm = policy.select(environment.context(), environment.arms, key_frame=True)
        assert environment.arms.index(arm) == environment.best_index
    assert policy.ordinary_selections == before
    assert policy.forced_selections == forced_early


def test_mulinucb_forces_offloading_arms_only():
    arms = [Arm("net", 2), Arm("net", 2, split=0), Arm("net", 2, split=1)]
    policy = MuLinUCBPolicy(1, seed=0, forced_sampling=1e9)  # every non-key decision is forced
    for arm in arms:  # once every arm has been tried, forcing only ever picks offloading arms
        policy.update(np.ones(1), arm, 1.0 if arm.split is None else 0.0)
    chosen = {policy.select(np.ones(1), arms) for _ in range(200)}
    assert chosen == {arms[1], arms[2]}


@pytest.mark.parametrize("name", ["linucb", "thompson", "mulinucb", "epsilon-greedy"])
def test_an_arm_that_appears_later_is_tried(name):
    """A peer joins with a new variant: the policy tries it although known arms earn well."""
    policy = make_policy(name, 2, **({} if name == "linucb" else {"seed": 1}))
    known = [Arm("known", 1)]
    for _ in range(200):
        policy.update(np.array([1.0, 0.5]), known[0], 0.6)
    newcomer = Arm("newcomer", 1)
    assert policy.select(np.array([1.0, 0.5]), known + [newcomer]) == newcomer
    mask = np.array([True, False])
    assert policy.select(np.array([1.0, 0.5]), known + [newcomer], mask) == known[0]  # unless masked
