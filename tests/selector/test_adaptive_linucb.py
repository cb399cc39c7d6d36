"""adaptive-linucb: recovers after a swap of arm rewards (plain LinUCB does not), raises no alarm
when only the context distribution moves, predicts never-played arms from their features, and an
alarm relearns an arm's level but keeps its context slopes."""

from __future__ import annotations

import numpy as np
import pytest

from selector import AdaptiveLinUCBPolicy, Arm, InvalidParameterError, Policy, load, make_policy, save

ARMS = [Arm(f"variant-{i}", 2, None if i % 2 else 1) for i in range(6)]
MEANS = np.array([0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
SHIFT = 600
WINDOW = (SHIFT + 300, SHIFT + 600)


def play(policy: Policy, rounds: int, seed: int, swap_at: int | None = None, shift_context_at: int | None = None,
         features: dict[Arm, np.ndarray] | None = None) -> np.ndarray:
    """Contexts ``[1, u1, u2, u3]``; arm rewards ``MEANS + 0.1 (u1 - 0.5)`` plus noise 0.05. From
    ``swap_at`` arms 0 and 2 swap rewards; from ``shift_context_at`` u moves from U(0, .5) to U(.5, 1)."""
    generator = np.random.default_rng(seed)
    chosen = np.empty(rounds, dtype=int)
    for t in range(rounds):
        low = 0.5 if shift_context_at is not None and t >= shift_context_at else 0.0
        context = np.concatenate([[1.0], generator.uniform(low, low + 0.5, 3)])
        means = MEANS.copy()
        if swap_at is not None and t >= swap_at:
            means[[0, 2]] = means[[2, 0]]
        index = ARMS.index(policy.select(context, ARMS))
        reward = means[index] + 0.1 * (context[1] - 0.5) + 0.05 * generator.standard_normal()
        policy.update(context, ARMS[index], float(reward))
        chosen[t] = index
    return chosen


@pytest.mark.parametrize("seed", [1, 2])
def test_recovers_after_a_swap_and_plain_linucb_does_not(seed):
    adaptive = play(make_policy("adaptive-linucb", 4, arm_feature_dimension=0), WINDOW[1], seed, swap_at=SHIFT)
    plain = play(make_policy("linucb", 4), WINDOW[1], seed, swap_at=SHIFT)
    assert (adaptive[SHIFT - 200:SHIFT] == 0).mean() >= 0.9  # it had learned the first best arm
    recovered = (adaptive[WINDOW[0]:WINDOW[1]] == 2).mean()
    stale = (plain[WINDOW[0]:WINDOW[1]] == 2).mean()
    assert recovered >= 0.85, recovered
    assert stale < 0.85, stale  # the bound fails for plain LinUCB (it keeps the old best)


def test_no_reset_when_only_the_context_distribution_moves():
    policy = make_policy("adaptive-linucb", 4, arm_feature_dimension=0)
    assert isinstance(policy, AdaptiveLinUCBPolicy)
    chosen = play(policy, 1500, seed=3, shift_context_at=600)
    assert policy.alarms == 0 and policy.forgettings == 0
    assert (chosen[1000:] == 0).mean() >= 0.9


def test_a_never_played_arm_is_chosen_once_its_features_predict_it_best():
    """Reward = 0.2 + 0.6 * accuracy feature: what the shared model learns from five arms carries
    over to a new arm, which is chosen at once (and a new poor arm is never tried)."""
    generator = np.random.default_rng(4)
    known = [Arm(f"known-{i}", 1) for i in range(5)]
    accuracy = {arm: 0.1 * (i + 1) for i, arm in enumerate(known)}
    policy = make_policy("adaptive-linucb", 3, arm_feature_dimension=1)
    assert isinstance(policy, AdaptiveLinUCBPolicy)
    policy.set_arm_features({arm: [value] for arm, value in accuracy.items()})

    def run(arms: list[Arm], rounds: int) -> list[Arm]:
        picks = []
        for _ in range(rounds):
            context = np.concatenate([[1.0], generator.random(2)])
            arm = policy.select(context, arms)
            policy.update(context, arm, 0.2 + 0.6 * accuracy[arm] + 0.02 * generator.standard_normal())
            picks.append(arm)
        return picks

    assert run(known, 400)[-50:].count(known[4]) >= 45
    better, worse = Arm("new-good", 1), Arm("new-poor", 1)
    accuracy.update({better: 0.9, worse: 0.0})
    policy.set_arm_features({better: [0.9], worse: [0.0]})
    assert policy.arm_observations(better) == 0
    picks = run([*known, worse, better], 100)
    assert picks[0] == better  # never played, predicted best from its features
    assert picks.count(better) >= 95 and worse not in picks


def test_arm_features_are_checked():
    policy = make_policy("adaptive-linucb", 3)
    with pytest.raises(InvalidParameterError):
        policy.set_arm_features({ARMS[0]: [0.1, 0.2]})  # three features expected
    with pytest.raises(InvalidParameterError):
        policy.set_arm_features({ARMS[0]: [0.1, np.nan, 0.2]})
    with pytest.raises(InvalidParameterError):
        make_policy("adaptive-linucb", 3, arm_discount=0.99)  # it forgets on alarms, not by discount


def test_merged_statistics_and_persistence_carry_the_shared_model(tmp_path):
    features = {arm: [i / 5, 0.5, 1 - i / 5] for i, arm in enumerate(ARMS)}
    trained = make_policy("adaptive-linucb", 4, arm_features=features)
    play(trained, 300, seed=5)
    fresh = make_policy("adaptive-linucb", 4, arm_features=features)
    assert fresh.merge(trained.export_delta())
    context = np.array([1.0, 0.2, 0.4, 0.3])
    assert trained.alarms == 0  # no forgetting: the merge must reproduce the same estimates
    np.testing.assert_allclose(fresh.estimates(context, ARMS), trained.estimates(context, ARMS), atol=1e-8)
    restored = load(save(trained, tmp_path / "adaptive.npz"))
    assert isinstance(restored, AdaptiveLinUCBPolicy)
    np.testing.assert_array_equal(restored.estimates(context, ARMS), trained.estimates(context, ARMS))
    np.testing.assert_array_equal(restored.arm_features(ARMS[1]), trained.arm_features(ARMS[1]))


def test_an_alarm_relearns_the_arm_level_and_keeps_its_context_slopes():
    """Arm 0 pays 0.8 + 0.3 u, then 0.5 + 0.3 u: after the alarm its estimate is the new level
    (from the observations since the change point), its slope is kept and it is not as uncertain
    as an arm never played."""
    arms = [Arm("local", 2), Arm("offload", 2, split=1)]
    policy = make_policy("adaptive-linucb", 2, arm_feature_dimension=0)
    generator = np.random.default_rng(7)
    for t in range(460):
        u = generator.random()
        level = 0.8 if t < 400 else 0.5
        policy.update(np.array([1.0, u]), arms[0], level + 0.3 * u + 0.05 * generator.standard_normal())
    assert policy.alarms >= 1
    probe = np.array([1.0, 0.5])
    estimate = float(policy.estimates(probe, arms[:1])[0])
    assert abs(estimate - 0.65) < 0.03, estimate
    assert abs(float(policy.theta(arms[0])[1]) - 0.3) < 0.1  # the slope survived the alarm
    row = policy.models.row(arms[0].key)
    width = float(np.sqrt(probe @ policy.models.inverse[row] @ probe))
    assert width < 0.5 * np.sqrt(probe @ probe / policy.regularization)  # narrower than a fresh arm
