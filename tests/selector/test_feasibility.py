"""Masked arms are never chosen; when every arm is masked, the cheapest one is."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selector import (
    AccuracyFloorError,
    Arm,
    FixedPolicy,
    InvalidParameterError,
    MaskError,
    NoArmsError,
    NoFeasibleArmError,
    accuracy_mask,
    check_min_accuracy,
    feasibility_mask,
    make_policy,
    plausible_arms,
    policy_names,
    select_feasible,
    select_feasible_with_details,
    undominated_arms,
)

ARMS = [Arm(f"variant-{i}", i % 4, None if i % 3 else i % 2) for i in range(12)]
NAMES = [name for name in policy_names() if name != "fixed"]


def build(name: str):
    options = {} if name in ("linucb", "discounted-linucb", "adaptive-linucb") else {"seed": 11}
    return make_policy(name, 4, **options)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_masked_arms_are_never_chosen(name, data):
    policy = build(name)
    generator = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    best = ARMS[5]
    for _ in range(30):  # make arm 5 look like the best arm, so that a mask must overrule the policy
        context = generator.random(4)
        policy.update(context, best, 1.0)
        policy.update(context, ARMS[int(generator.integers(12))], 0.0)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=12, max_size=12).filter(any)))
    for _ in range(20):
        arm = policy.select(generator.random(4), ARMS, mask)
        assert mask[ARMS.index(arm)], (arm, mask)


def test_fixed_policy_respects_the_mask():
    policy = FixedPolicy(4, arm=ARMS[0])
    mask = np.ones(12, dtype=bool)
    mask[0] = False
    assert policy.select(np.zeros(4), ARMS, mask) == ARMS[1]


def latency_of(arm: Arm) -> float:
    return 10.0 * (ARMS.index(arm) + 1)  # arm i needs 10 (i + 1) ms


def test_feasibility_mask_applies_the_margin():
    mask = feasibility_mask(ARMS, latency_of, budget_ms=50.0, margin=0.9)  # 45 ms usable
    assert mask.tolist() == [True] * 4 + [False] * 8
    assert feasibility_mask(ARMS, latency_of, budget_ms=50.0, margin=1.0).sum() == 5


def test_bad_predictions_are_infeasible():
    predictions = {ARMS[0]: math.nan, ARMS[1]: -1.0, ARMS[2]: math.inf, ARMS[3]: 1.0}
    mask = feasibility_mask(ARMS[:4], predictions.__getitem__, budget_ms=100.0)
    assert mask.tolist() == [False, False, False, True]


@pytest.mark.parametrize("name", policy_names())
def test_select_feasible_only_returns_feasible_arms(name):
    policy = make_policy(name, 4, arm=ARMS[11]) if name == "fixed" else build(name)
    generator = np.random.default_rng(0)
    for _ in range(50):
        context = generator.random(4)
        arm = select_feasible(policy, context, ARMS, latency_of, budget_ms=35.0)  # 31.5 ms usable: arms 0..2
        assert ARMS.index(arm) <= 2
        policy.update(context, arm, float(generator.random()))


@pytest.mark.parametrize("name", policy_names())
def test_all_masked_degrades_to_the_cheapest_arm(name):
    policy = make_policy(name, 4, arm=ARMS[0]) if name == "fixed" else build(name)
    shuffled = [ARMS[i] for i in (7, 3, 9, 1, 4)]
    selection = select_feasible_with_details(policy, np.ones(4), shuffled, latency_of, budget_ms=5.0)
    assert selection.arm == ARMS[1] and selection.degraded and selection.feasible_count == 0
    assert selection.predicted_latency_ms == 20.0
    assert select_feasible(policy, np.ones(4), shuffled, latency_of, budget_ms=5.0) == ARMS[1]


def test_select_refuses_an_all_false_or_malformed_mask():
    policy = make_policy("linucb", 4)
    with pytest.raises(NoFeasibleArmError):
        policy.select(np.ones(4), ARMS, np.zeros(12, dtype=bool))
    with pytest.raises(MaskError):
        policy.select(np.ones(4), ARMS, np.ones(11, dtype=bool))
    with pytest.raises(MaskError):
        policy.select(np.ones(4), ARMS, np.ones(12, dtype=int))
    with pytest.raises(NoArmsError):
        policy.select(np.ones(4), [])
    with pytest.raises(NoArmsError):
        select_feasible(policy, np.ones(4), [], latency_of, 10.0)


# ---- min_accuracy: a hard floor beside the deadline ------------------------------------------------------------------

ACCURACY = {arm: 0.1 + 0.075 * index for index, arm in enumerate(ARMS)}  # 0.1 .. 0.925, rising with the index


@pytest.mark.parametrize("name", NAMES)
def test_min_accuracy_masks_every_arm_below_it(name):
    policy = build(name)
    context = np.ones(4) / 2.0
    for _ in range(30):
        selection = select_feasible_with_details(policy, context, ARMS, lambda arm: 10.0, budget_ms=100.0,
                                                 accuracy_of=ACCURACY.__getitem__, min_accuracy=0.6)
        assert ACCURACY[selection.arm] >= 0.6 and not selection.degraded
        policy.update(context, selection.arm, 1.0)


def test_accuracy_mask_is_true_at_and_above_the_floor_only():
    mask = accuracy_mask(ARMS, ACCURACY.__getitem__, 0.55)
    assert mask.tolist() == [ACCURACY[arm] >= 0.55 for arm in ARMS]
    assert accuracy_mask(ARMS, None, None).all()


def test_no_arm_reaching_the_floor_is_an_error_naming_the_best_accuracy():
    with pytest.raises(AccuracyFloorError) as caught:
        select_feasible(FixedPolicy(4, arm=ARMS[0]), np.ones(4), ARMS, lambda arm: 1.0, 100.0,
                        accuracy_of=ACCURACY.__getitem__, min_accuracy=0.99)
    assert caught.value.best == pytest.approx(max(ACCURACY.values()))


def test_when_no_accurate_arm_fits_the_budget_the_fastest_accurate_one_is_taken_not_the_fastest():
    latency = {arm: 500.0 - 10 * index for index, arm in enumerate(ARMS)}  # the least accurate is the slowest...
    latency[ARMS[0]] = 1.0  # ...except the 10 %-accurate arm, by far the fastest
    selection = select_feasible_with_details(build("linucb"), np.ones(4), ARMS, latency.__getitem__, 50.0,
                                             accuracy_of=ACCURACY.__getitem__, min_accuracy=0.5)
    assert selection.degraded and ACCURACY[selection.arm] >= 0.5
    assert selection.arm == min((a for a in ARMS if ACCURACY[a] >= 0.5), key=latency.__getitem__)


@pytest.mark.parametrize("floor", [math.nan, math.inf, -0.1, 1.5])
def test_min_accuracy_must_be_finite_and_in_the_unit_interval(floor):
    with pytest.raises(InvalidParameterError):
        check_min_accuracy(floor)
    with pytest.raises(InvalidParameterError):
        select_feasible(build("linucb"), np.ones(4), ARMS, lambda arm: 1.0, 100.0,
                        accuracy_of=ACCURACY.__getitem__, min_accuracy=floor)


# ---- dominated arms --------------------------------------------------------------------------

def test_an_arm_beaten_on_accuracy_latency_and_cost_is_dropped_and_ties_stay() -> None:
    arms = [Arm("fast", 3), Arm("fast", 2), Arm("wide", 2), Arm("wide", 3), Arm("twin", 3)]
    accuracy = {"fast@3": 0.97, "fast@2": 0.90, "wide@2": 0.92, "wide@3": 0.98, "twin@3": 0.97}
    latency = {"fast@3": 10.0, "fast@2": 8.0, "wide@2": 20.0, "wide@3": 30.0, "twin@3": 10.0}
    cost = {"fast@3": 80.0, "fast@2": 60.0, "wide@2": 260.0, "wide@3": 350.0, "twin@3": 80.0}
    kept = undominated_arms(arms, lambda arm: latency[arm.key], lambda arm: accuracy[arm.key],
                            lambda arm: cost[arm.key])
    # wide@2 is less accurate, slower and costlier than fast@3; fast@2 is faster, wide@3 more
    # accurate; twin@3 equals fast@3 on every count, so neither dominates the other
    assert kept == [Arm("fast", 3), Arm("fast", 2), Arm("wide", 3), Arm("twin", 3)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100), st.floats(0, 10)), min_size=1, max_size=12),
       st.floats(1, 100), st.floats(0, 1))
def test_dropping_dominated_arms_keeps_what_the_masks_and_any_qoe_weights_would_pick(points, budget_ms, floor):
    """Whatever the deadline, the accuracy floor and the user's weights, the best arm by expected
    reward among those that pass the masks is still there, and so is the degraded fallback."""
    arms = [Arm(f"v{index}", 0) for index in range(len(points))]
    of = {arm.key: point for arm, point in zip(arms, points, strict=True)}
    kept = undominated_arms(arms, lambda arm: of[arm.key][1], lambda arm: of[arm.key][0], lambda arm: of[arm.key][2])
    assert kept
    for weights in ((1.0, 0.5, 0.1), (0.5, 1.0, 0.1), (1.0, 0.0, 0.0), (0.0, 1.0, 1.0)):
        def reward(arm: Arm, weights=weights) -> float:
            accuracy, latency, cost = of[arm.key]
            return weights[0] * accuracy - weights[1] * latency / budget_ms - weights[2] * cost

        eligible = [arm for arm in arms if of[arm.key][0] >= floor and of[arm.key][1] <= budget_ms]
        if eligible:
            best = max(reward(arm) for arm in eligible)
            assert any(reward(arm) == best for arm in kept if arm in eligible)
    accurate = [arm for arm in arms if of[arm.key][0] >= floor]
    if accurate:
        fastest = min(of[arm.key][1] for arm in accurate)
        assert any(of[arm.key][1] == fastest for arm in kept if of[arm.key][0] >= floor)


# ---- plausible arms ----------------------------------------------------------------------------

def test_arms_predicted_far_below_the_best_are_dropped_in_order() -> None:
    arms = [Arm("a", 0), Arm("b", 1), Arm("c", 2), Arm("d", 3), Arm("e", 3)]
    predicted = {"a@0": 0.30, "b@1": 0.41, "c@2": 0.45, "d@3": -math.inf, "e@3": 0.39}
    assert plausible_arms(arms, lambda arm: predicted[arm.key], 0.05) == [Arm("b", 1), Arm("c", 2)]
    assert plausible_arms(arms, lambda arm: predicted[arm.key], 0.0) == [Arm("c", 2)]
    assert plausible_arms(arms, lambda arm: predicted[arm.key], 1.0) == [Arm("a", 0), Arm("b", 1), Arm("c", 2),
                                                                         Arm("e", 3)]


def test_with_no_finite_prediction_every_arm_stays() -> None:
    arms = [Arm("a", 0), Arm("b", 1)]
    assert plausible_arms(arms, lambda arm: -math.inf, 0.05) == arms


@pytest.mark.parametrize("margin", [-0.01, math.nan])
def test_the_margin_must_be_non_negative(margin) -> None:
    with pytest.raises(InvalidParameterError):
        plausible_arms([Arm("a", 0)], lambda arm: 0.0, margin)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-2, 2), st.just(-math.inf)), min_size=1, max_size=12), st.floats(0, 1))
def test_the_best_predicted_arm_always_stays(scores, margin) -> None:
    arms = [Arm(f"v{index}", 0) for index in range(len(scores))]
    of = {arm.key: score for arm, score in zip(arms, scores, strict=True)}
    kept = plausible_arms(arms, lambda arm: of[arm.key], margin)
    finite = [score for score in scores if math.isfinite(score)]
    if finite:
        assert max(of[arm.key] for arm in kept) == max(finite)
        assert all(of[arm.key] >= max(finite) - margin for arm in kept)
    else:
        assert kept == arms
