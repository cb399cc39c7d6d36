"""Confidence calibration: how often an exit is right, given the confidence it answered with.

A softmax's maximum is not a probability of being right: an early exit that is right one time
in ten still answers with confidence 0.9 on many inputs. The reward must not believe it, or a
fast, wrong-nine-times-in-ten exit earns as much as a slow, correct one. So the accuracy term
of the QoE reward is read from a table measured on held-out data, per variant and exit:

* the held-out samples are sorted by their confidence (max softmax) at that exit and cut into
  ``bins`` groups of (nearly) equal size; each bin keeps its mean confidence and its accuracy;
* accuracies are made non-decreasing in confidence with pool-adjacent-violators (isotonic
  regression, weighted by bin size): more confidence never means less expected accuracy;
* :meth:`CalibrationTable.accuracy` interpolates linearly between bin mean confidences and
  is flat beyond the first and last bin.

The result is monotone in confidence by construction, bounded in [0, 1], and an exit's
calibrated accuracy averaged over held-out inputs is its measured accuracy.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from selector.errors import InvalidParameterError

DEFAULT_BINS = 10


def _non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted isotonic regression (pool adjacent violators) of ``values``."""
    blocks: list[list[float]] = []  # [value, weight, length]
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([value, weight, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            value_b, weight_b, length_b = blocks.pop()
            value_a, weight_a, length_a = blocks.pop()
            total = weight_a + weight_b
            blocks.append([(value_a * weight_a + value_b * weight_b) / total, total, length_a + length_b])
    return np.concatenate([np.full(int(length), value) for value, _, length in blocks])


@dataclass(frozen=True)
class CalibrationTable:
    """Per-bin mean confidence (increasing) and accuracy (non-decreasing), both in [0, 1]."""

    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]

    def __post_init__(self) -> None:
        confidence = np.asarray(self.confidence, dtype=float)
        accuracy = np.asarray(self.accuracy, dtype=float)
        if confidence.ndim != 1 or confidence.size == 0 or confidence.shape != accuracy.shape:
            raise InvalidParameterError("a calibration table needs as many accuracies as confidences (at least one)")
        if not (np.all(np.isfinite(confidence)) and np.all(np.isfinite(accuracy))):
            raise InvalidParameterError("calibration values must be finite")
        if np.any(confidence < 0) or np.any(confidence > 1) or np.any(accuracy < 0) or np.any(accuracy > 1):
            raise InvalidParameterError("calibration confidences and accuracies must be in [0, 1]")
        if np.any(np.diff(confidence) < 0) or np.any(np.diff(accuracy) < 0):
            raise InvalidParameterError("calibration confidences and accuracies must be non-decreasing")
        object.__setattr__(self, "confidence", tuple(float(c) for c in confidence))
        object.__setattr__(self, "accuracy", tuple(float(a) for a in accuracy))

    def expected_accuracy(self, confidence: float) -> float:
        """The probability that an answer given with ``confidence`` is right (clipped to [0, 1]
        first; NaN is refused)."""
        value = float(confidence)
        if math.isnan(value):
            raise InvalidParameterError("confidence is NaN")
        value = min(max(value, 0.0), 1.0)
        return _interpolate(value, self.confidence, self.accuracy)

    @classmethod
    def fit(cls, confidences: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
            bins: int = DEFAULT_BINS) -> CalibrationTable:
        """Measure the table from held-out answers: each one's confidence and whether it was right."""
        confidence = np.asarray(confidences, dtype=float)
        right = np.asarray(correct, dtype=float)
        if confidence.ndim != 1 or confidence.size == 0 or confidence.shape != right.shape:
            raise InvalidParameterError("fit() needs one correctness flag per confidence (at least one)")
        if bins < 1:
            raise InvalidParameterError(f"bins must be >= 1, got {bins}")
        order = np.argsort(confidence, kind="stable")
        groups = [group for group in np.array_split(order, min(bins, confidence.size)) if group.size]
        means = np.array([confidence[group].mean() for group in groups])
        accuracy = np.array([right[group].mean() for group in groups])
        sizes = np.array([float(group.size) for group in groups])
        return cls(tuple(np.clip(means, 0.0, 1.0).tolist()),
                   tuple(np.clip(_non_decreasing(accuracy, sizes), 0.0, 1.0).tolist()))


def _interpolate(value: float, points: tuple[float, ...], values: tuple[float, ...]) -> float:
    """``numpy.interp`` for one value in plain Python (flat beyond the ends; between equal
    points, the last one's value). Asked once per answer: numpy's call and its conversion of
    the two tuples to arrays cost ~10x this bisection."""
    if value >= points[-1]:
        return values[-1]
    if value < points[0]:
        return values[0]
    right = bisect.bisect_right(points, value)
    left = right - 1
    span = points[right] - points[left]
    share = (value - points[left]) / span if span > 0 else 0.0
    return values[left] + share * (values[right] - values[left])


def calibrated_accuracy(table: CalibrationTable | None, confidence: float, fallback: float | None = None) -> float:
    """The accuracy term of an answer: the table's expected accuracy at ``confidence``; without a
    table, ``fallback`` (the exit's held-out accuracy) when known, else the confidence itself."""
    if table is not None:
        return table.expected_accuracy(confidence)
    if fallback is not None and math.isfinite(fallback):
        return min(max(float(fallback), 0.0), 1.0)
    return min(max(float(confidence), 0.0), 1.0)
