"""The rendered text-orientation images: a deterministic generator, disjoint splits, exact rotations."""

from __future__ import annotations

import numpy as np

from zoo import orientation_data


def test_generator_is_deterministic_and_splits_are_disjoint():
    first = orientation_data.split_pixels(orientation_data.HELD_OUT_SEED, [0, 5, 10])
    orientation_data._page.cache_clear()
    again = orientation_data.split_pixels(orientation_data.HELD_OUT_SEED, [0, 5, 10])
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert list(first[1]) == [0, 1, 2]
    other = orientation_data.split_pixels(orientation_data.TRAINING_SEED, [0])
    assert not np.array_equal(other[0][0], first[0][0])


def test_rotations_of_one_page_are_exact_transposes():
    upright = orientation_data.sample(orientation_data.HELD_OUT_SEED, 8).image
    clockwise = orientation_data.sample(orientation_data.HELD_OUT_SEED, 9).image
    assert np.array_equal(np.rot90(np.asarray(upright), k=-1), np.asarray(clockwise))
