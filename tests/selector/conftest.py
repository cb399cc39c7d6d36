"""Shared pieces of the selector tests: a crafted linear bandit where one arm is clearly best."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from selector import Arm, Policy


class CraftedEnvironment:
    """Contexts ``[1, u1..u4]`` with ``u ~ U(0, 1)``; arm rewards linear in ``u`` plus noise.

    Arm ``best_index`` beats every other arm by at least 0.2 in every context, so any policy
    whose updates and exploration work must settle on it; a policy that never learns picks
    by its tie-breaking (index 0) and fails.
    """

    dimension = 5
    best_index = 3

    def __init__(self, seed: int = 0, noise: float = 0.05) -> None:
        self.generator = np.random.default_rng(seed)
        self.noise = noise
        self.arms: list[Arm] = [Arm(f"variant-{i}", i % 3, None if i % 2 else 1) for i in range(6)]
        bases = np.array([0.30, 0.40, 0.20, 0.85, 0.45, 0.35])
        slopes = self.generator.uniform(-0.05, 0.05, size=(6, 4))
        self.coefficients = np.column_stack([bases, slopes])

    def context(self) -> np.ndarray:
        return np.concatenate([[1.0], self.generator.random(4)])

    def expected(self, context: np.ndarray) -> np.ndarray:
        return self.coefficients @ context

    def reward(self, context: np.ndarray, index: int) -> float:
        return float(self.expected(context)[index] + self.noise * self.generator.standard_normal())

    def run(self, policy: Policy, rounds: int, mask: np.ndarray | None = None) -> list[int]:
        """Play ``rounds`` rounds; returns the chosen arm indices."""
        chosen: list[int] = []
        for _ in range(rounds):
            context = self.context()
            arm = policy.select(context, self.arms, mask)
            index = self.arms.index(arm)
            policy.update(context, arm, self.reward(context, index))
            chosen.append(index)
        return chosen


@pytest.fixture
def crafted_environment() -> type[CraftedEnvironment]:
    return CraftedEnvironment


def observations(count: int, dimension: int, arms: Sequence[Arm], seed: int) -> list[tuple[np.ndarray, Arm, float]]:
    generator = np.random.default_rng(seed)
    return [(generator.random(dimension), arms[int(generator.integers(len(arms)))], float(generator.normal()))
            for _ in range(count)]


@pytest.fixture
def make_observations():
    """``make_observations(count, dimension, arms, seed)``: random (context, arm, reward) triples."""
    return observations
