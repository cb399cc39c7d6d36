"""The common base of the policies that learn a ridge regression per arm.

LinUCB, linear Thompson sampling, muLinUCB and epsilon-greedy differ only in how they turn the
per-arm estimates into a choice; learning, delayed corrections, statistics sharing and
persistence are the same and live here.

Non-stationary option: ``discount < 1`` (forget per observation to any arm) and/or
``arm_discount < 1`` (forget per observation of the same arm) switch the statistics to the
exactly discounted form of ``selector.ridge``, so the policy tracks changes. The two differ in
what they cost: a global ``discount`` makes unplayed arms uncertain again (they get re-explored,
which finds an arm that became good) but every arm's effective sample shrinks with the number of
arms, while ``arm_discount`` lets a played arm adapt within ~``1 / (1 - arm_discount)`` of its
own observations whatever the number of arms (but never re-explores an arm left alone). The
``discounted-*`` policy names use ``arm_discount=0.995``; ``selector.registry`` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.pending import DEFAULT_MAX_PENDING, DEFAULT_PENDING_TTL_S
from selector.policy import Policy, check_reward
from selector.ridge import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REGULARIZATION,
    DiscountedRidgeModels,
    InverseRidgeModels,
    RidgeModels,
)
from selector.statistics import SufficientStatistics


class LinearPolicy(Policy):
    """A policy over disjoint per-arm ridge regressions; subclasses implement :meth:`_choose`."""

    has_discounted_variant: ClassVar[bool] = True  # the registry offers "discounted-<name>"

    def __init__(self, dimension: int, *, regularization: float = DEFAULT_REGULARIZATION, discount: float = 1.0,
                 arm_discount: float = 1.0, refresh_interval: int = DEFAULT_REFRESH_INTERVAL, origin: str | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING, pending_ttl_s: float = DEFAULT_PENDING_TTL_S,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(dimension, origin=origin, max_pending=max_pending, pending_ttl_s=pending_ttl_s,
                         clock=clock)
        for name, value in (("discount", discount), ("arm_discount", arm_discount)):
            if not 0.0 < float(value) <= 1.0:
                raise InvalidParameterError(f"{name} must be in (0, 1], got {value}")
        self.discount = float(discount)
        self.arm_discount = float(arm_discount)
        self.refresh_interval = int(refresh_interval)
        self.models: RidgeModels
        if self.discount < 1.0 or self.arm_discount < 1.0:
            self.models = DiscountedRidgeModels(dimension, regularization, self.discount, self.arm_discount)
        else:
            self.models = InverseRidgeModels(dimension, regularization, self.refresh_interval)

    @property
    def regularization(self) -> float:
        return self.models.regularization

    @property
    def observations(self) -> int:
        return self.models.observations

    def select(self, context: np.ndarray, arms: Sequence[Arm], mask: np.ndarray | None = None) -> Arm:
        vector = self._check_context(context)
        allowed = self._check_arms_and_mask(arms, mask)
        rows = self.models.rows_for(arms)
        chosen = self._untried(rows, allowed)
        if chosen is None:
            chosen = self._choose(vector, arms, rows, allowed)
        self.selections += 1
        return arms[chosen]

    def _choose(self, context: np.ndarray, arms: Sequence[Arm], rows: list[int] | slice,
                allowed: np.ndarray | None) -> int:
        """Index of the chosen arm among ``arms`` (model rows ``rows``); must respect ``allowed``."""
        raise NotImplementedError

    def _untried(self, rows: list[int] | slice, allowed: np.ndarray | None) -> int | None:
        """The first allowed arm this policy has no data about (own or merged), if any.

        Every arm is tried once before estimates are compared, as in UCB1's initialisation: an
        arm that appears later (a peer joined with a new variant) would otherwise never be tried
        by a greedy or narrowly sampling policy while the known arms earn positive rewards."""
        unseen = self.models.count[rows] == 0
        if allowed is not None:
            unseen &= allowed
        return int(np.argmax(unseen)) if unseen.any() else None

    def update(self, context: np.ndarray, arm: Arm, reward: float) -> None:
        vector = self._check_context(context)
        value = check_reward(reward)
        self.models.update(self.models.row(arm.key), vector, value)

    def arm_observations(self, arm: Arm) -> int:
        row = self.models.index.get(arm.key)
        return 0 if row is None else int(self.models.updates[row])

    def _correct(self, context: np.ndarray, arm: Arm, reward_change: float, observations_ago: int,
                 arm_observations_ago: int) -> None:
        self.models.correct(self.models.row(arm.key), context, reward_change, observations_ago,
                            arm_observations_ago)

    def _take_delta(self) -> dict[str, SufficientStatistics]:
        return self.models.take_delta()

    def _merge_statistics(self, arms: dict[str, SufficientStatistics]) -> None:
        for key, statistics in arms.items():
            self.models.add_statistics(self.models.row(key), statistics)

    def statistics(self, arm: Arm) -> SufficientStatistics:
        row = self.models.index.get(arm.key)
        if row is None:
            return SufficientStatistics.zeros(self.dimension)
        return self.models.statistics(row)

    def theta(self, arm: Arm) -> np.ndarray:
        """The ridge estimate of ``arm``'s reward coefficients (zeros for an unseen arm)."""
        row = self.models.index.get(arm.key)
        return np.zeros(self.dimension) if row is None else self.models.theta(row)

    def estimates(self, context: np.ndarray, arms: Sequence[Arm]) -> np.ndarray:
        """Estimated mean reward of each arm in ``context`` (for inspection and dashboards)."""
        vector = self._check_context(context)
        return self.models.means(vector, self.models.rows_for(arms)).copy()

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "regularization": self.regularization, "discount": self.discount,
                "arm_discount": self.arm_discount, "refresh_interval": self.refresh_interval}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), **self.models.state()}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().restore(values, arrays)
        self.models.restore(arrays)
