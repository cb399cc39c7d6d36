"""Arm features: what the runtime knows about an arm before playing it, as a vector.

A policy that shares learning across arms (``adaptive-linucb``) predicts an arm it has never
played from its features; the runtime supplies them, per arm, with
``policy.set_arm_features({arm: ArmTraits(...).vector(), ...})`` (any finite vector of the
policy's ``arm_feature_dimension`` works; :class:`ArmTraits` is the standard three). Features may
change (a peer got faster, so an offloading arm became cheaper): call ``set_arm_features`` again
and the next decision uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from selector.errors import InvalidParameterError

STANDARD_FEATURE_NAMES: tuple[str, ...] = ("relative_cost", "exit_depth", "accuracy_prior")


def _unit(value: float, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise InvalidParameterError(f"{name} must be finite, got {value!r}")
    return min(max(number, 0.0), 1.0)


@dataclass(frozen=True)
class ArmTraits:
    """The standard arm features, each scaled to [0, 1] (clipped) so no one dominates the ridge.

    ``relative_cost``: the arm's predicted latency (or compute) over the slowest arm's;
    ``exit_depth``: the exit's block index over the deepest exit's; ``accuracy_prior``: the exit's
    validation accuracy from the manifest."""

    relative_cost: float
    exit_depth: float
    accuracy_prior: float

    def vector(self) -> np.ndarray:
        return np.array([_unit(self.relative_cost, "relative_cost"), _unit(self.exit_depth, "exit_depth"),
                         _unit(self.accuracy_prior, "accuracy_prior")])
