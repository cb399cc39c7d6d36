"""The linear policies' discounted option switches to the new best arm after an abrupt shift; the
plain one lags."""

from __future__ import annotations

import numpy as np
import pytest

from selector import Arm, make_policy

ARMS = [Arm("local", 2), Arm("offload", 2, split=1)]
SHIFT = 800
WINDOW = (SHIFT + 100, SHIFT + 200)


def run_shift(policy, seed: int) -> np.ndarray:
    """Arm 0 pays 0.8 and arm 1 0.3 until SHIFT, then 0.2 and 0.7; returns the chosen indices."""
    generator = np.random.default_rng(seed)
    chosen = np.empty(WINDOW[1], dtype=int)
    for t in range(WINDOW[1]):
        context = np.array([1.0, generator.random()])
        means = (0.8, 0.3) if t < SHIFT else (0.2, 0.7)
        arm = policy.select(context, ARMS)
        index = ARMS.index(arm)
        policy.update(context, arm, means[index] + 0.05 * generator.standard_normal())
        chosen[t] = index
    return chosen


OPTIONS = {
    "linucb": {},
    "thompson": {"seed": 5},
    "mulinucb": {"seed": 5},
    # greedy only finds the new best arm by random exploration: keep enough of it
    "epsilon-greedy": {"seed": 5, "epsilon": 0.3, "minimum_epsilon": 0.1},
}


@pytest.mark.parametrize("forgetting", [{"discount": 0.95}, {"arm_discount": 0.95}])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_discounted_recovers_within_100_rounds_and_plain_does_not(name, forgetting):
    options = OPTIONS[name]
    discounted = run_shift(make_policy(name, 2, **forgetting, **options), seed=1)
    plain = run_shift(make_policy(name, 2, **options), seed=1)
    assert (discounted[SHIFT - 200:SHIFT] == 0).mean() >= 0.8  # it had learned the first best arm
    new_best_discounted = (discounted[WINDOW[0]:WINDOW[1]] == 1).mean()
    new_best_plain = (plain[WINDOW[0]:WINDOW[1]] == 1).mean()
    threshold = 0.8 if name == "epsilon-greedy" else 0.85  # greedy keeps exploring 10% at random
    assert new_best_discounted >= threshold, new_best_discounted
    if name != "epsilon-greedy":  # greedy switches as soon as the old arm's mean falls below the stale one
        assert new_best_plain <= 0.5, new_best_plain
    assert new_best_discounted > new_best_plain or name == "epsilon-greedy"
