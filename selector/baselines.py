"""Baselines that do not learn: a fixed arm and a uniformly random arm.

They answer the question every learning policy must: is it better than always running one
configuration (what a static deployment does), or than choosing blindly? They implement the whole
policy interface (remember/feedback/merge are accepted and change nothing), so the node and the
benchmark can swap them in by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.policy import Policy, check_reward, generator_state, random_allowed, restore_generator


class FixedPolicy(Policy):
    """Always the same arm; if it is absent from ``arms`` or masked, the first allowed arm.

    The fallback keeps the baseline usable behind a feasibility mask (a static deployment would
    also have to do something when its configuration cannot meet the deadline)."""

    name = "fixed"

    def __init__(self, dimension: int, *, arm: Arm | str, **options: Any) -> None:
        super().__init__(dimension, **options)
        if isinstance(arm, str):
            arm = Arm.from_key(arm)
        if not isinstance(arm, Arm):
            raise InvalidParameterError(f"arm must be an Arm or an arm key, got {arm!r}")
        self.arm = arm

    def select(self, context: np.ndarray, arms: Sequence[Arm], mask: np.ndarray | None = None) -> Arm:
        self._check_context(context)
        allowed = self._check_arms_and_mask(arms, mask)
        self.selections += 1
        for index, arm in enumerate(arms):
            if arm == self.arm and (allowed is None or allowed[index]):
                return arm
        return arms[0] if allowed is None else arms[int(np.argmax(allowed))]

    def update(self, context: np.ndarray, arm: Arm, reward: float) -> None:
        self._check_context(context)
        check_reward(reward)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "arm": self.arm.key}


class RandomPolicy(Policy):
    """A uniformly random allowed arm, from a seeded generator (saved with the policy)."""

    name = "random"

    def __init__(self, dimension: int, *, seed: int | None = None, **options: Any) -> None:
        super().__init__(dimension, **options)
        self.seed = seed
        self.generator = np.random.default_rng(seed)

    def select(self, context: np.ndarray, arms: Sequence[Arm], mask: np.ndarray | None = None) -> Arm:
        self._check_context(context)
        allowed = self._check_arms_and_mask(arms, mask)
        self.selections += 1
        return arms[random_allowed(self.generator, len(arms), allowed)]

    def update(self, context: np.ndarray, arm: Arm, reward: float) -> None:
        self._check_context(context)
        check_reward(reward)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "seed": self.seed}

    def state_values(self) -> dict[str, Any]:
        return {**super().state_values(), "generator": generator_state(self.generator)}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().restore(values, arrays)
        restore_generator(self.generator, values.get("generator"))
