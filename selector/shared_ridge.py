"""One ridge regression shared by every arm, over context x arm-feature interactions.

Disjoint per-arm models know nothing about an arm they have not played; a shared model over
``z = kron(f_a, x)`` (``f_a`` = ``[1, arm features]``) predicts any arm from what *other* arms
with similar features earned in similar contexts (a more accurate variant pays off when accuracy
weighs more, a deeper exit costs more under a tight budget...). For a fixed arm the prediction
``beta . kron(f_a, x) = (B^T f_a) . x`` is linear in ``x`` with coefficients ``B^T f_a`` (``B`` =
``beta`` as a (features, d) matrix), which is what lets per-arm statistics from another node be
folded in exactly (``kron(f f^T, G)``, ``kron(f, m)``).

``A^-1`` is kept by Sherman-Morrison rank-one updates and recomputed exactly after a merge, a
forgetting step or every ``refresh_interval`` updates (drift bound), so a decision never inverts.
"""

from __future__ import annotations

import numpy as np

from selector.errors import InvalidParameterError, PersistenceError

DEFAULT_SHARED_REFRESH = 512


class SharedRidge:
    """Ridge regression on ``kron(f, x)``; ``forget(factor)`` scales every past observation."""

    def __init__(self, dimension: int, regularization: float, refresh_interval: int = DEFAULT_SHARED_REFRESH) -> None:
        if dimension <= 0 or not regularization > 0.0 or refresh_interval <= 0:
            raise InvalidParameterError(f"invalid shared ridge: dimension {dimension}, regularization "
                                        f"{regularization}, refresh_interval {refresh_interval}")
        self.dimension = dimension
        self.regularization = regularization
        self.refresh_interval = refresh_interval
        self.gram = np.zeros((dimension, dimension))
        self.moment = np.zeros(dimension)
        self.inverse = np.eye(dimension) / regularization
        self.beta = np.zeros(dimension)
        self._updates_since_refresh = 0

    def update(self, z: np.ndarray, reward: float) -> None:
        self.gram += z[:, None] * z
        self.moment += reward * z
        self._updates_since_refresh += 1
        if self._updates_since_refresh >= self.refresh_interval:
            self.refresh()
            return
        projected = self.inverse @ z
        self.inverse -= (projected[:, None] * projected) / (1.0 + z @ projected)
        self.beta = self.inverse @ self.moment

    def correct(self, z: np.ndarray, reward_change: float) -> None:
        self.moment += reward_change * z
        self.beta = self.inverse @ self.moment

    def add(self, gram: np.ndarray, moment: np.ndarray) -> None:
        """Add data statistics (a merge) and recompute the inverse exactly."""
        self.gram += gram
        self.moment += moment
        self.refresh()

    def forget(self, factor: float) -> None:
        """Multiply every past observation's weight by ``factor`` (after a detected change)."""
        self.gram *= factor
        self.moment *= factor
        self.refresh()

    def refresh(self) -> None:
        inverse = np.linalg.inv(self.regularization * np.eye(self.dimension) + self.gram)
        self.inverse = 0.5 * (inverse + inverse.T)
        self.beta = self.inverse @ self.moment
        self._updates_since_refresh = 0

    def means_and_widths(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(beta . z_a, sqrt(z_a^T A^-1 z_a))`` for the rows ``z_a`` of ``z``."""
        squared = ((z @ self.inverse) * z).sum(axis=1)
        return z @ self.beta, np.sqrt(np.maximum(squared, 0.0))

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Every array needed to continue bit-exactly (the inverse too: it is not recomputed on load)."""
        return {f"{prefix}.gram": self.gram.copy(), f"{prefix}.moment": self.moment.copy(),
                f"{prefix}.inverse": self.inverse.copy(), f"{prefix}.beta": self.beta.copy(),
                f"{prefix}.updates_since_refresh": np.array(self._updates_since_refresh, dtype=np.int64)}

    def restore(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        d = self.dimension
        expected = {"gram": (d, d), "moment": (d,), "inverse": (d, d), "beta": (d,)}
        try:
            loaded = {name: np.asarray(arrays[f"{prefix}.{name}"], dtype=np.float64) for name in expected}
            updates = int(arrays[f"{prefix}.updates_since_refresh"])
        except KeyError as error:
            raise PersistenceError(f"saved policy lacks array {error}") from error
        for name, shape in expected.items():
            if loaded[name].shape != shape:
                raise PersistenceError(f"saved shared model array {name} has shape {loaded[name].shape}, "
                                       f"expected {shape}")
        self.gram, self.moment = loaded["gram"].copy(), loaded["moment"].copy()
        self.inverse, self.beta = loaded["inverse"].copy(), loaded["beta"].copy()
        self._updates_since_refresh = updates
