"""The scikit-learn digits, split once (seeded, stratified) into train and held-out sets.

Pixels are scaled to [0, 1] (raw value / 16). ``digits-resnet`` sees them upsampled to
64x64 (bilinear). The held-out split is what the manifest's accuracies, the tests and the
benchmarks' load generator use, so accuracy is always measured on images never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as functional

from zoo.manifest import VariantInfo

SPLIT_SEED = 20261124
HELD_OUT_FRACTION = 0.3


@dataclass(frozen=True)
class DigitsSplit:
    train_images: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    train_labels: torch.Tensor  # (N,) int64
    held_out_images: torch.Tensor
    held_out_labels: torch.Tensor


@lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return DigitsSplit(torch.from_numpy(train_x), torch.from_numpy(train_y),
                       torch.from_numpy(test_x), torch.from_numpy(test_y))


def resize_for(input_shape: tuple[int, ...], images: torch.Tensor) -> torch.Tensor:
    """Bring (N, 1, 8, 8) digits to a family's input shape (identity for 8x8)."""
    height, width = input_shape[-2], input_shape[-1]
    if images.shape[-2:] == (height, width):
        return images
    return functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


def held_out(input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out images already shaped for a family, with their labels."""
    split = digits_split()
    return resize_for(input_shape, split.held_out_images), split.held_out_labels


def held_out_of(variant: VariantInfo, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A variant's held-out inputs (the first ``count``) and labels: rendered text pages at its
    resolution for a family that takes images (its manifest has preprocessing: text-orientation),
    digits shaped for it otherwise. The one place that knows which family reads which data."""
    if variant.preprocessing:
        from zoo import orientation_data

        return orientation_data.held_out(variant.input_shape[-1], count)
    images, labels = held_out(tuple(variant.input_shape))
    return (images[:count], labels[:count]) if count else (images, labels)
