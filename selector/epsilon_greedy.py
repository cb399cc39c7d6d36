"""Epsilon-greedy on the per-arm ridge estimates, with a decaying epsilon.

With probability ``epsilon_t`` a uniformly random allowed arm, otherwise the arm with the best
estimated reward ``theta_a . x``. The exploration rate decays as

    epsilon_t = max(minimum_epsilon, epsilon * decay_rounds / (decay_rounds + t))

(``t`` = decisions so far): early decisions explore a lot, later ones rarely, and the floor keeps
a little exploration so the policy can still notice a change. It is the simplest baseline that
learns from context, and a check that the optimism of LinUCB / the sampling of Thompson pay off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.linear_policy import LinearPolicy
from selector.policy import best_allowed, generator_state, random_allowed, restore_generator


class EpsilonGreedyPolicy(LinearPolicy):
    """Greedy on ridge estimates, exploring uniformly with a decaying probability."""

    name = "epsilon-greedy"

    def __init__(self, dimension: int, *, epsilon: float = 0.2, decay_rounds: float = 200.0,
                 minimum_epsilon: float = 0.01, seed: int | None = None, **options: Any) -> None:
        super().__init__(dimension, **options)
        if not (0.0 <= float(minimum_epsilon) <= float(epsilon) <= 1.0):
            raise InvalidParameterError("need 0 <= minimum_epsilon <= epsilon <= 1")
        if not float(decay_rounds) > 0.0:
            raise InvalidParameterError(f"decay_rounds must be > 0, got {decay_rounds}")
        self.epsilon = float(epsilon)
        self.decay_rounds = float(decay_rounds)
        self.minimum_epsilon = float(minimum_epsilon)
        self.seed = seed
        self.generator = np.random.default_rng(seed)

    def exploration_rate(self) -> float:
        """The probability that the next decision explores."""
        decayed = self.epsilon * self.decay_rounds / (self.decay_rounds + self.selections)
        return max(self.minimum_epsilon, decayed)

    def _choose(self, context: np.ndarray, arms: Sequence[Arm], rows: list[int] | slice,
                allowed: np.ndarray | None) -> int:
        if self.generator.random() < self.exploration_rate():
            return random_allowed(self.generator, len(arms), allowed)
        return best_allowed(self.models.means(context, rows), allowed)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "epsilon": self.epsilon, "decay_rounds": self.decay_rounds,
                "minimum_epsilon": self.minimum_epsilon, "seed": self.seed}

    def state_values(self) -> dict[str, Any]:
        return {**super().state_values(), "generator": generator_state(self.generator)}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().restore(values, arrays)
        restore_generator(self.generator, values.get("generator"))
