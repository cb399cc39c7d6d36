"""Linear Thompson sampling (Agrawal and Goyal, ICML 2013), disjoint arms.

Per decision, each arm draws ``theta~_a ~ N(theta_a, v^2 A_a^-1)`` and the arm with the highest
``theta~_a . x`` wins. Only the scalar ``theta~_a . x`` is needed, and it is
``theta_a . x + v * p_a . z`` with ``z ~ N(0, I)`` and ``p_a`` a square root of ``A_a^-1``
applied to ``x`` (a maintained Cholesky factor, or the eigen decomposition under discounting;
see ``selector.ridge``), so a decision costs one batched matmul and ``arms x d`` normal draws:
no factorisation on the decision path.

``posterior_scale`` is ``v``: the theory's value (which grows with ``sqrt(d log t)``) explores
far too much at this reward scale. The default 0.1 comes from a sweep over 0.1, 0.2 and 0.3 in
``benchmarks/selector_regret.py`` (0.1 had the lowest regret on both arm tables tried there). Draws come from a seeded
``numpy.random.Generator`` whose exact state is saved with the policy, so a restored policy
continues the same sequence of decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.linear_policy import LinearPolicy
from selector.policy import best_allowed, generator_state, restore_generator

DEFAULT_POSTERIOR_SCALE = 0.1


class ThompsonPolicy(LinearPolicy):
    """Linear Thompson sampling; ``discount < 1`` forgets old observations."""

    name = "thompson"

    def __init__(self, dimension: int, *, posterior_scale: float = DEFAULT_POSTERIOR_SCALE, seed: int | None = None,
                 **options: Any) -> None:
        super().__init__(dimension, **options)
        if not float(posterior_scale) >= 0.0:
            raise InvalidParameterError(f"posterior_scale must be >= 0, got {posterior_scale}")
        self.posterior_scale = float(posterior_scale)
        self.seed = seed
        self.generator = np.random.default_rng(seed)

    def _choose(self, context: np.ndarray, arms: Sequence[Arm], rows: list[int] | slice,
                allowed: np.ndarray | None) -> int:
        means, projections = self.models.means_and_projections(context, rows)
        noise = self.generator.standard_normal(projections.shape)
        return best_allowed(means + self.posterior_scale * (projections * noise).sum(axis=1), allowed)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "posterior_scale": self.posterior_scale, "seed": self.seed}

    def state_values(self) -> dict[str, Any]:
        return {**super().state_values(), "generator": generator_state(self.generator)}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().restore(values, arrays)
        restore_generator(self.generator, values.get("generator"))
