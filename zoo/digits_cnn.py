"""``digits-cnn``: a small three-block multi-exit CNN for 8x8 scikit-learn digits (fast, for tests).

Each block is a prunable channel pair (``conv_a`` → ``conv_b``); structured pruning removes
``conv_a``'s output channels (the "mid" channels), which only ``conv_b`` consumes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.family import ArchitectureConfig, Family, register_family

BASE_CHANNELS = (16, 32, 64)


class ConvPair(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv_a = nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(mid_channels)
        self.conv_b = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        x = torch.relu(self.bn_a(self.conv_a(x)))
        return torch.relu(self.bn_b(self.conv_b(x)))


class PooledHead(nn.Module):
    """Global average pool then a linear classifier: a cheap exit after any block."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def width_config(width: float) -> dict[str, Any]:
    channels = [max(2, round(c * width)) for c in BASE_CHANNELS]
    return {"width": width, "channels": channels, "mid_channels": [[c] for c in channels]}


def _block(config: ArchitectureConfig, index: int) -> nn.Module:
    channels = config["channels"]
    in_channels = 1 if index == 0 else channels[index - 1]
    return ConvPair(in_channels, config["mid_channels"][index][0], channels[index], pool=index > 0)


def _head(config: ArchitectureConfig, index: int) -> nn.Module:
    return PooledHead(config["channels"][index], 10)


FAMILY = register_family(
    Family(
        name="digits-cnn",
        description="3-block multi-exit CNN on 8x8 scikit-learn digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        dataset="sklearn-digits-8x8",
        block_count=lambda config: len(config["channels"]),
        exits=lambda config: list(range(len(config["channels"]))),
        build_block=_block,
        build_head=_head,
        width_config=width_config,
    )
)
