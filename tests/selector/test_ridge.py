"""The per-arm regressions compute what ridge regression computes, without per-call inverses."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from selector import Arm, make_policy
from selector.ridge import DiscountedRidgeModels, InverseRidgeModels

ARM = Arm("net", 1)


def test_linucb_theta_matches_scikit_learn_ridge():
    generator = np.random.default_rng(0)
    contexts = generator.random((400, 6))
    rewards = contexts @ generator.normal(size=6) + 0.1 * generator.normal(size=400)
    policy = make_policy("linucb", 6, regularization=2.0, refresh_interval=10**9)  # pure Sherman-Morrison
    for context, reward in zip(contexts, rewards, strict=True):
        policy.update(context, ARM, reward)
    oracle = Ridge(alpha=2.0, fit_intercept=False, solver="cholesky").fit(contexts, rewards)
    np.testing.assert_allclose(policy.theta(ARM), oracle.coef_, atol=1e-9)


def test_sherman_morrison_inverse_and_widths_match_direct_computation():
    generator = np.random.default_rng(1)
    models = InverseRidgeModels(5, regularization=0.5, refresh_interval=10**9)
    row = models.row("a")
    contexts = generator.random((300, 5))
    for context in contexts:
        models.update(row, context, float(generator.normal()))
    design = 0.5 * np.eye(5) + contexts.T @ contexts
    np.testing.assert_allclose(models.inverse[row], np.linalg.inv(design), atol=1e-12)
    x = generator.random(5)
    means, widths = models.means_and_widths(x, [row])
    np.testing.assert_allclose(widths[0], np.sqrt(x @ np.linalg.solve(design, x)), rtol=1e-9)
    means_again, projections = models.means_and_projections(x, [row])
    np.testing.assert_allclose(projections[0] @ projections[0], widths[0] ** 2, rtol=1e-9)
    np.testing.assert_allclose(means_again, means)


def test_periodic_refresh_keeps_the_same_answer():
    generator = np.random.default_rng(2)
    refreshed, pure = InverseRidgeModels(4, refresh_interval=7), InverseRidgeModels(4, refresh_interval=10**9)
    for context in generator.random((100, 4)):
        reward = float(generator.normal())
        refreshed.update(refreshed.row("a"), context, reward)
        pure.update(pure.row("a"), context, reward)
    np.testing.assert_allclose(refreshed.theta(0), pure.theta(0), atol=1e-10)


# 0.5 renormalises the global scale every ~40 updates, 0.6 per arm every ~54 of its updates
@pytest.mark.parametrize(("discount", "arm_discount"), [(0.97, 1.0), (0.5, 1.0), (1.0, 0.9), (0.98, 0.6)])
def test_discounted_models_are_exactly_discounted_ridge(discount, arm_discount):
    generator = np.random.default_rng(3)
    dimension, regularization = 4, 0.7
    models = DiscountedRidgeModels(dimension, regularization, discount, arm_discount)
    history: list[tuple[int, np.ndarray, float]] = []
    for _ in range(250):
        row = models.row(str(int(generator.integers(3))))
        context, reward = generator.random(dimension), float(generator.normal())
        models.update(row, context, reward)
        history.append((row, context, reward))
    x = generator.random(dimension)
    for row in range(3):
        design = regularization * np.eye(dimension)
        moment = np.zeros(dimension)
        arm_age = 0
        for age, (seen_row, context, reward) in enumerate(reversed(history)):
            if seen_row == row:
                weight = discount ** age * arm_discount ** arm_age
                design += weight * np.outer(context, context)
                moment += weight * reward * context
                arm_age += 1
        theta = np.linalg.solve(design, moment)
        means, widths = models.means_and_widths(x, [row])
        np.testing.assert_allclose(models.theta(row), theta, atol=1e-9)
        np.testing.assert_allclose(means[0], x @ theta, atol=1e-9)
        np.testing.assert_allclose(widths[0], np.sqrt(x @ np.linalg.solve(design, x)), rtol=1e-8)
        statistics = models.statistics(row)
        np.testing.assert_allclose(statistics.gram, design - regularization * np.eye(dimension), atol=1e-9)


def test_unseen_arms_start_from_the_prior_and_rows_grow_lazily():
    policy = make_policy("linucb", 3, regularization=4.0)
    arms = [Arm(f"v{i}", 0) for i in range(40)]  # more than the initial capacity
    x = np.array([1.0, 0.0, 0.0])
    assert policy.select(x, arms) == arms[0]
    np.testing.assert_allclose(policy.estimates(x, arms), 0.0)
    assert policy.models.size == 40
    np.testing.assert_allclose(policy.theta(Arm("never", 0)), 0.0)
    assert policy.statistics(Arm("never", 0)).count == 0
