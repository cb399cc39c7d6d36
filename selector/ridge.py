"""Per-arm ridge regressions, stacked so that one decision scores every arm in a few numpy calls.

Every linear policy (LinUCB, Thompson sampling, muLinUCB, epsilon-greedy) models the reward of
arm ``a`` in context ``x`` as ``theta_a . x`` with the ridge estimate
``theta_a = A_a^-1 b_a``, ``A_a = lambda I + sum x x^T``, ``b_a = sum r x`` (disjoint arms: no
parameter is shared between arms, so arms can be added at any time, one row each).

A decision needs, for every candidate arm, the mean ``theta_a . x`` and the width
``sqrt(x^T A_a^-1 x)`` (UCB) or a draw from ``N(theta_a . x, x^T A_a^-1 x)`` (Thompson). Per-arm
state lives in arrays of shape ``(arms, ...)`` so those come from batched matmuls; inverting a
matrix per decision would cost more than the whole decision budget (p50 <= 100 us for 30 arms of
dimension 16).

Two implementations share one interface:

:class:`InverseRidgeModels` (stationary)
    keeps ``A^-1`` up to date with the Sherman-Morrison rank-one formula (O(d^2) per update, no
    inverse), and ``theta``. Thompson sampling also needs a square root of ``A^-1``; its Cholesky
    factor is recomputed lazily for the arms updated since the last draw (one 16x16 Cholesky per
    update, off the hot path in practice). To bound floating-point drift, each arm's inverse is
    recomputed exactly from ``A`` every ``refresh_interval`` of its own updates.

:class:`DiscountedRidgeModels` (non-stationary)
    forgets old observations geometrically: each new observation (to any arm) multiplies every
    arm's past statistics by ``discount`` (gamma), while the prior stays ``lambda I``::

        A = lambda I + sum_s gamma^(n - s) x_s x_s^T,     b = sum_s gamma^(n - s) r_s x_s

    Unplayed arms therefore regain uncertainty and get re-explored after a change, which is what
    lets a policy notice that a long-abandoned arm became the best (the effective memory is about
    ``1 / (1 - gamma)`` observations). Sherman-Morrison cannot follow this exactly (discounting
    ``A`` while keeping ``lambda I`` is not a rank-one change), and recomputing inverses lazily
    every k updates would serve stale widths in between. Instead each arm stores the eigen
    decomposition ``G~ = U diag(e) U^T`` of its statistics in a global *inflated* scale: data
    added at step n is weighted by ``1 / s_n`` with ``s_n = gamma^n``, so discounting every arm
    costs one multiplication of the scalar ``s``, and for any ``s``::

        A^-1 = U diag(1 / (lambda + s e)) U^T   exactly.

    An update costs one 16x16 symmetric eigen decomposition (~20 us) for the updated arm only;
    a decision costs the same batched matmuls as the stationary case. When ``s`` gets small, the
    scale is folded back into every arm (an O(arms d^2) renormalisation, rare) so nothing
    overflows. A second, per-arm clock (``arm_discount``, forgetting per observation of the same
    arm) works the same way with one scale per arm; see :class:`DiscountedRidgeModels`.

Both keep, besides the learned totals, the *undiscounted* local deltas since the last export
(see ``selector.statistics``), which is what other nodes merge.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError, PersistenceError, StatisticsError
from selector.statistics import SufficientStatistics

DEFAULT_REGULARIZATION = 1.0
DEFAULT_REFRESH_INTERVAL = 1024
_RENORMALISE_BELOW = 1e-12  # fold the discount scale back into the arrays below this value


class RidgeModels(ABC):
    """Stacked per-arm ridge statistics with lazy arm rows; see the module docstring."""

    kind: str = ""
    # per-row arrays, created by _grow from _layout (declared for the type checker)
    count: np.ndarray
    updates: np.ndarray
    delta_gram: np.ndarray
    delta_moment: np.ndarray
    delta_count: np.ndarray

    def __init__(self, dimension: int, regularization: float = DEFAULT_REGULARIZATION) -> None:
        if int(dimension) <= 0:
            raise InvalidParameterError(f"dimension must be > 0, got {dimension}")
        if not float(regularization) > 0.0:
            raise InvalidParameterError(f"regularization must be > 0, got {regularization}")
        self.dimension = int(dimension)
        self.regularization = float(regularization)
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.observations = 0  # observations added through update(), over all arms
        self._every_row: list[int] = []
        self._capacity = 0
        self._arrays: dict[str, np.ndarray] = {}
        self._grow(8)

    # -- layout --------------------------------------------------------------------------------
    def _layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        """Per-row arrays: name -> (shape of one row, dtype). Subclasses extend it."""
        d = self.dimension
        return {
            "count": ((), np.int64),  # observations, own and merged
            "updates": ((), np.int64),  # own observations through update()
            "delta_gram": ((d, d), np.float64),
            "delta_moment": ((d,), np.float64),
            "delta_count": ((), np.int64),
        }

    def _initial_row(self, name: str) -> np.ndarray | float:
        """The value of a row for an arm that has seen no data."""
        return 0

    def _grow(self, capacity: int) -> None:
        size = len(self.keys)
        for name, (row_shape, dtype) in self._layout().items():
            grown: np.ndarray = np.empty((capacity, *row_shape), dtype=dtype)
            if name in self._arrays:
                grown[:size] = self._arrays[name][:size]
            grown[size:] = self._initial_row(name)
            self._arrays[name] = grown
            setattr(self, name, grown)
        self._capacity = capacity

    @property
    def size(self) -> int:
        return len(self.keys)

    def row(self, key: str) -> int:
        """The row of an arm key, created (with the prior only) the first time the arm is seen."""
        found = self.index.get(key)
        if found is not None:
            return found
        if len(self.keys) == self._capacity:
            self._grow(2 * self._capacity)
        row = len(self.keys)
        self.keys.append(key)
        self.index[key] = row
        self._every_row.append(row)
        return row

    def rows_for(self, arms: Sequence[Arm]) -> list[int] | slice:
        """Rows of ``arms`` in order; a full slice (array views, no copy) when they are all rows in order."""
        index = self.index
        try:
            rows = [index[arm.key] for arm in arms]
        except KeyError:
            rows = [self.row(arm.key) for arm in arms]
        return slice(None, len(rows)) if rows == self._every_row else rows

    # -- learning ------------------------------------------------------------------------------
    def update(self, row: int, context: np.ndarray, reward: float) -> None:
        """Add one observation ``(context, reward)`` to an arm."""
        outer = context[:, None] * context
        self.delta_gram[row] += outer
        self.delta_moment[row] += reward * context
        self.delta_count[row] += 1
        self.count[row] += 1
        self.updates[row] += 1
        self.observations += 1
        self._add_observation(row, context, outer, reward)

    def correct(self, row: int, context: np.ndarray, reward_change: float, observations_ago: int,
                arm_observations_ago: int) -> None:
        """Change the reward of an observation added ``observations_ago`` observations ago (over all
        arms), ``arm_observations_ago`` observations of this arm ago."""
        self.delta_moment[row] += reward_change * context
        self._add_reward_change(row, context, reward_change, observations_ago, arm_observations_ago)

    def add_statistics(self, row: int, statistics: SufficientStatistics) -> None:
        """Merge another node's data into an arm (it does not become part of this node's delta)."""
        if statistics.dimension != self.dimension:
            raise StatisticsError(f"cannot merge statistics of dimension {statistics.dimension} "
                                  f"into a policy of dimension {self.dimension}")
        self.count[row] += statistics.count
        self._add_data(row, statistics.gram, statistics.moment)

    def take_delta(self) -> dict[str, SufficientStatistics]:
        """The local statistics added since the previous call, per arm key; resets them."""
        delta: dict[str, SufficientStatistics] = {}
        for row, key in enumerate(self.keys):
            if self.delta_count[row] or self.delta_moment[row].any():
                delta[key] = SufficientStatistics(self.delta_gram[row].copy(), self.delta_moment[row].copy(),
                                                  int(self.delta_count[row]))
        size = self.size
        self.delta_gram[:size] = 0.0
        self.delta_moment[:size] = 0.0
        self.delta_count[:size] = 0
        return delta

    # -- reading -------------------------------------------------------------------------------
    def means(self, context: np.ndarray, rows: list[int] | slice) -> np.ndarray:
        """Estimated reward ``theta_a . x`` of each arm in ``rows``."""
        return self.means_and_widths(context, rows)[0]

    @abstractmethod
    def means_and_widths(self, context: np.ndarray, rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        """``(theta_a . x, sqrt(x^T A_a^-1 x))`` for each arm in ``rows``."""

    @abstractmethod
    def means_and_projections(self, context: np.ndarray,
                              rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        """``(theta_a . x, p_a)`` with ``p_a . p_a = x^T A_a^-1 x``: a draw of ``theta~_a . x`` with
        ``theta~_a ~ N(theta_a, v^2 A_a^-1)`` is ``theta_a . x + v p_a . z`` for ``z ~ N(0, I)``."""

    @abstractmethod
    def statistics(self, row: int) -> SufficientStatistics:
        """Everything this arm has learned (own data and merged data, discounted if discounting)."""

    @abstractmethod
    def theta(self, row: int) -> np.ndarray:
        """The ridge estimate ``A^-1 b`` of an arm."""

    @abstractmethod
    def _add_observation(self, row: int, context: np.ndarray, outer: np.ndarray, reward: float) -> None: ...

    @abstractmethod
    def _add_reward_change(self, row: int, context: np.ndarray, reward_change: float, observations_ago: int,
                           arm_observations_ago: int) -> None: ...

    @abstractmethod
    def _add_data(self, row: int, gram: np.ndarray, moment: np.ndarray) -> None: ...

    # -- persistence ---------------------------------------------------------------------------
    def parameters(self) -> dict[str, float | int | str]:
        return {"kind": self.kind, "dimension": self.dimension, "regularization": self.regularization}

    def state(self) -> dict[str, np.ndarray]:
        """Every array needed to continue bit-exactly (rows only, not the spare capacity)."""
        size = self.size
        arrays = {f"ridge.{name}": np.ascontiguousarray(array[:size]) for name, array in self._arrays.items()}
        arrays["ridge.arm_keys"] = np.array(self.keys, dtype=np.str_).reshape(size)
        arrays["ridge.observations"] = np.array(self.observations, dtype=np.int64)
        return arrays

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Load arrays produced by :meth:`state` into a freshly constructed instance."""
        try:
            keys = [str(key) for key in arrays["ridge.arm_keys"].reshape(-1)]
            loaded = {name: arrays[f"ridge.{name}"] for name in self._layout()}
            observations = int(arrays["ridge.observations"])
        except KeyError as error:
            raise PersistenceError(f"saved policy lacks array {error}") from error
        self.keys, self.index, self._every_row = [], {}, []
        self._arrays = {}
        self._grow(max(8, len(keys)))
        for key in keys:
            self.row(key)
        for name, (row_shape, dtype) in self._layout().items():
            array = np.asarray(loaded[name])
            if array.shape != (len(keys), *row_shape) or array.dtype != dtype:
                raise PersistenceError(f"saved array {name} has shape {array.shape} and dtype {array.dtype}, "
                                       f"expected {(len(keys), *row_shape)} and {np.dtype(dtype)}")
            self._arrays[name][: len(keys)] = array
        self.observations = observations


class InverseRidgeModels(RidgeModels):
    """Stationary ridge regressions with Sherman-Morrison updates of ``A^-1`` (no per-call inverse)."""

    kind = "inverse"
    gram: np.ndarray
    moment: np.ndarray
    inverse: np.ndarray
    coefficients: np.ndarray
    factor: np.ndarray
    factor_fresh: np.ndarray
    updates_since_refresh: np.ndarray

    def __init__(self, dimension: int, regularization: float = DEFAULT_REGULARIZATION,
                 refresh_interval: int = DEFAULT_REFRESH_INTERVAL) -> None:
        if int(refresh_interval) <= 0:
            raise InvalidParameterError(f"refresh_interval must be > 0, got {refresh_interval}")
        self.refresh_interval = int(refresh_interval)
        super().__init__(dimension, regularization)
        self._prior = self.regularization * np.eye(self.dimension)

    def _layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        d = self.dimension
        layout = super()._layout()
        layout.update({
            "gram": ((d, d), np.float64),
            "moment": ((d,), np.float64),
            "inverse": ((d, d), np.float64),
            "coefficients": ((d,), np.float64),
            "factor": ((d, d), np.float64),
            "factor_fresh": ((), np.bool_),
            "updates_since_refresh": ((), np.int64),
        })
        return layout

    def _initial_row(self, name: str) -> np.ndarray | float:
        if name == "inverse":
            return np.eye(self.dimension) / self.regularization
        if name == "factor":
            return np.eye(self.dimension) / math.sqrt(self.regularization)
        if name == "factor_fresh":
            return True
        return 0

    def parameters(self) -> dict[str, float | int | str]:
        return {**super().parameters(), "refresh_interval": self.refresh_interval}

    def _add_observation(self, row: int, context: np.ndarray, outer: np.ndarray, reward: float) -> None:
        self.gram[row] += outer
        self.moment[row] += reward * context
        self.updates_since_refresh[row] += 1
        if self.updates_since_refresh[row] >= self.refresh_interval:
            self._refresh(row)
            return
        inverse = self.inverse[row]
        projected = inverse @ context
        inverse -= (projected[:, None] * projected) / (1.0 + context @ projected)
        self.coefficients[row] = inverse @ self.moment[row]
        self.factor_fresh[row] = False

    def _add_reward_change(self, row: int, context: np.ndarray, reward_change: float, observations_ago: int,
                           arm_observations_ago: int) -> None:
        self.moment[row] += reward_change * context
        self.coefficients[row] = self.inverse[row] @ self.moment[row]

    def _add_data(self, row: int, gram: np.ndarray, moment: np.ndarray) -> None:
        self.gram[row] += gram
        self.moment[row] += moment
        self._refresh(row)

    def _refresh(self, row: int) -> None:
        """Recompute an arm's inverse exactly from ``A`` (after a merge, and every refresh_interval)."""
        inverse = np.linalg.inv(self._prior + self.gram[row])
        self.inverse[row] = 0.5 * (inverse + inverse.T)
        self.coefficients[row] = self.inverse[row] @ self.moment[row]
        self.factor_fresh[row] = False
        self.updates_since_refresh[row] = 0

    def means_and_widths(self, context: np.ndarray, rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        means = self.coefficients[rows] @ context
        squared = (self.inverse[rows] @ context) @ context
        return means, np.sqrt(np.maximum(squared, 0.0))

    def means_and_projections(self, context: np.ndarray,
                              rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        fresh = self.factor_fresh[rows]
        if not fresh.all():
            self._refresh_factors(np.arange(self.size)[rows][~fresh])
        return self.coefficients[rows] @ context, context @ self.factor[rows]

    def _refresh_factors(self, rows: np.ndarray) -> None:
        try:
            self.factor[rows] = np.linalg.cholesky(self.inverse[rows])
        except np.linalg.LinAlgError:  # rounding made an inverse indefinite: rebuild them exactly
            for row in rows:
                self._refresh(int(row))
            self.factor[rows] = np.linalg.cholesky(self.inverse[rows])
        self.factor_fresh[rows] = True

    def statistics(self, row: int) -> SufficientStatistics:
        return SufficientStatistics(self.gram[row].copy(), self.moment[row].copy(), int(self.count[row]))

    def theta(self, row: int) -> np.ndarray:
        return np.array(self.coefficients[row], dtype=np.float64)


class DiscountedRidgeModels(RidgeModels):
    """Ridge regressions that forget geometrically, exactly; see the module docstring.

    Two clocks age the data, both optional: ``discount`` per observation to any arm (all arms
    forget, so arms left unplayed regain uncertainty and get re-explored) and ``arm_discount`` per
    observation of the same arm (a much-played arm adapts after a change within about
    ``1 / (1 - arm_discount)`` of its own observations, however many arms there are, while arms
    that are rarely played keep what they know). Data added to arm ``a`` when the global scale is
    ``s`` and its own scale ``s_a`` is weighted ``1 / (s s_a)``; its effective weight now is that
    times the current ``s s_a``.
    """

    kind = "discounted"
    scaled_gram: np.ndarray
    scaled_moment: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    projected_moment: np.ndarray
    arm_scale: np.ndarray

    def __init__(self, dimension: int, regularization: float = DEFAULT_REGULARIZATION,
                 discount: float = 0.99, arm_discount: float = 1.0) -> None:
        if not 0.0 < float(discount) <= 1.0:
            raise InvalidParameterError(f"discount must be in (0, 1], got {discount}")
        if not 0.0 < float(arm_discount) <= 1.0:
            raise InvalidParameterError(f"arm_discount must be in (0, 1], got {arm_discount}")
        self.discount = float(discount)
        self.arm_discount = float(arm_discount)
        self.scale = 1.0  # s = discount ** observations, up to renormalisations
        super().__init__(dimension, regularization)

    def _layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        d = self.dimension
        layout = super()._layout()
        layout.update({
            "scaled_gram": ((d, d), np.float64),
            "scaled_moment": ((d,), np.float64),
            "eigenvalues": ((d,), np.float64),
            "eigenvectors": ((d, d), np.float64),
            "projected_moment": ((d,), np.float64),
            "arm_scale": ((), np.float64),  # s_a = arm_discount ** (own observations), up to renormalisations
        })
        return layout

    def _initial_row(self, name: str) -> np.ndarray | float:
        if name == "eigenvectors":
            return np.eye(self.dimension)
        return 1.0 if name == "arm_scale" else 0

    def parameters(self) -> dict[str, float | int | str]:
        return {**super().parameters(), "discount": self.discount, "arm_discount": self.arm_discount}

    def _add_observation(self, row: int, context: np.ndarray, outer: np.ndarray, reward: float) -> None:
        self.scale *= self.discount
        self.arm_scale[row] *= self.arm_discount
        weight = 1.0 / (self.scale * self.arm_scale[row])
        self.scaled_gram[row] += weight * outer
        self.scaled_moment[row] += (weight * reward) * context
        if self.arm_scale[row] < _RENORMALISE_BELOW:
            self._renormalise_rows(np.array([row]), self.arm_scale[row : row + 1].copy())
            self.arm_scale[row] = 1.0
        self._decompose(row)
        if self.scale < _RENORMALISE_BELOW:
            self._renormalise_rows(np.arange(self.size), np.full(self.size, self.scale), decomposed=True)
            self.scale = 1.0

    def _add_reward_change(self, row: int, context: np.ndarray, reward_change: float, observations_ago: int,
                           arm_observations_ago: int) -> None:
        aging = self.discount ** max(int(observations_ago), 0) * self.arm_discount ** max(int(arm_observations_ago), 0)
        weight = aging / (self.scale * self.arm_scale[row])
        self.scaled_moment[row] += (weight * reward_change) * context
        self.projected_moment[row] = self.scaled_moment[row] @ self.eigenvectors[row]

    def _add_data(self, row: int, gram: np.ndarray, moment: np.ndarray) -> None:
        factor = self.scale * self.arm_scale[row]
        self.scaled_gram[row] += gram / factor
        self.scaled_moment[row] += moment / factor
        self._decompose(row)

    def _decompose(self, row: int) -> None:
        eigenvalues, eigenvectors = np.linalg.eigh(self.scaled_gram[row])
        self.eigenvalues[row] = np.maximum(eigenvalues, 0.0)
        self.eigenvectors[row] = eigenvectors
        self.projected_moment[row] = self.scaled_moment[row] @ eigenvectors

    def _renormalise_rows(self, rows: np.ndarray, factors: np.ndarray, decomposed: bool = False) -> None:
        """Fold a scale into the rows' arrays (exact up to rounding), so weights never overflow."""
        self.scaled_gram[rows] *= factors[:, None, None]
        self.scaled_moment[rows] *= factors[:, None]
        if decomposed:
            self.eigenvalues[rows] *= factors[:, None]
            self.projected_moment[rows] *= factors[:, None]

    def _factors(self, rows: list[int] | slice) -> np.ndarray:
        return self.scale * self.arm_scale[rows]

    def means_and_widths(self, context: np.ndarray, rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        factors = self._factors(rows)
        projected = context @ self.eigenvectors[rows]  # U^T x per arm
        inverse_spectrum = 1.0 / (self.regularization + factors[:, None] * self.eigenvalues[rows])
        means = (projected * self.projected_moment[rows] * inverse_spectrum).sum(axis=1) * factors
        widths = np.sqrt((projected * projected * inverse_spectrum).sum(axis=1))
        return means, widths

    def means_and_projections(self, context: np.ndarray,
                              rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        factors = self._factors(rows)
        projected = context @ self.eigenvectors[rows]
        inverse_spectrum = 1.0 / (self.regularization + factors[:, None] * self.eigenvalues[rows])
        means = (projected * self.projected_moment[rows] * inverse_spectrum).sum(axis=1) * factors
        return means, projected * np.sqrt(inverse_spectrum)

    def statistics(self, row: int) -> SufficientStatistics:
        factor = self.scale * self.arm_scale[row]
        return SufficientStatistics(factor * self.scaled_gram[row], factor * self.scaled_moment[row],
                                    int(self.count[row]))

    def theta(self, row: int) -> np.ndarray:
        factor = self.scale * self.arm_scale[row]
        inverse_spectrum = 1.0 / (self.regularization + factor * self.eigenvalues[row])
        return np.asarray(self.eigenvectors[row] @ (inverse_spectrum * self.projected_moment[row]) * factor)

    def state(self) -> dict[str, np.ndarray]:
        arrays = super().state()
        arrays["ridge.scale"] = np.array(self.scale, dtype=np.float64)
        return arrays

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        super().restore(arrays)
        try:
            self.scale = float(arrays["ridge.scale"])
        except KeyError as error:
            raise PersistenceError(f"saved policy lacks array {error}") from error
