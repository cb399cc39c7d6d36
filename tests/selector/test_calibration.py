"""Calibrated accuracy: monotone in confidence, bounded, faithful to what was measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector import CalibrationTable, InvalidParameterError, calibrated_accuracy


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(1, 400), bins=st.integers(1, 20))
def test_a_fitted_table_is_monotone_in_confidence_and_bounded(seed, size, bins):
    generator = np.random.default_rng(seed)
    confidence = generator.uniform(0.0, 1.0, size)
    correct = generator.uniform(0.0, 1.0, size) < generator.uniform(0.0, 1.0, size)  # any relation at all
    table = CalibrationTable.fit(confidence, correct, bins=bins)
    grid = np.linspace(0.0, 1.0, 201)
    values = [table.expected_accuracy(c) for c in grid]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))


def test_an_overconfident_exit_is_believed_only_as_far_as_it_was_right():
    confidence = np.full(100, 0.9)  # always 90 % sure ...
    correct = np.arange(100) < 10  # ... right one time in ten
    table = CalibrationTable.fit(confidence, correct)
    assert table.expected_accuracy(0.9) == pytest.approx(0.1)


def test_isotonic_pooling_flattens_a_dip_and_keeps_the_mean_accuracy():
    confidence = np.repeat([0.2, 0.4, 0.6, 0.8], 50)
    correct = np.concatenate([np.arange(50) < n for n in (10, 30, 20, 45)])  # 0.2, 0.6, 0.4, 0.9
    table = CalibrationTable.fit(confidence, correct, bins=4)
    assert table.accuracy == pytest.approx((0.2, 0.5, 0.5, 0.9))
    assert np.mean(table.accuracy) == pytest.approx(correct.mean())


def test_without_a_table_the_exit_accuracy_stands_in_never_a_nan():
    assert calibrated_accuracy(None, 0.95, fallback=0.1) == pytest.approx(0.1)
    assert calibrated_accuracy(None, 0.7) == pytest.approx(0.7)
    with pytest.raises(InvalidParameterError):
        CalibrationTable((0.5,), (0.5,)).expected_accuracy(math.nan)


@pytest.mark.parametrize("confidence, accuracy", [((0.2, 0.1), (0.5, 0.6)), ((0.1, 0.2), (0.6, 0.5)),
                                                  ((0.1,), (1.5,)), ((), ()), ((0.1, 0.2), (0.5,))])
def test_a_malformed_table_is_refused(confidence, accuracy):
    with pytest.raises(InvalidParameterError):
        CalibrationTable(confidence, accuracy)


def test_expected_accuracy_equals_numpy_interp_everywhere_including_tied_points():
    """The per-answer lookup is plain Python for speed; it must read the table exactly as
    ``numpy.interp`` does: flat beyond the ends, linear between, the last of tied points."""
    rng = np.random.default_rng(7)
    for _ in range(500):
        size = int(rng.integers(1, 9))
        confidence = tuple(sorted(float(value) for value in np.round(rng.random(size), 1)))
        accuracy = tuple(sorted(float(value) for value in rng.random(size)))
        table = CalibrationTable(confidence, accuracy)
        for value in [*rng.random(10).tolist(), *confidence, 0.0, 1.0, -0.5, 1.5]:
            expected = float(np.interp(min(max(value, 0.0), 1.0), confidence, accuracy))
            assert table.expected_accuracy(value) == pytest.approx(expected, abs=1e-12)
