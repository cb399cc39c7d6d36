"""``digits-resnet``: a ResNet-style multi-exit network (4 stages, an exit after each) on
digits upsampled to 64x64 — heavy enough that splitting and early exit matter.

Stage *k* is block *k*; stage 0 carries the stem. Every residual unit's first convolution
(``conv_a``) has prunable "mid" channels: removing them never changes a residual shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.digits_cnn import PooledHead
from zoo.family import ArchitectureConfig, Family, register_family

BASE_CHANNELS = (36, 72, 144, 288)
UNITS_PER_STAGE = 2


class ResidualUnit(nn.Module):
    """A basic residual unit (two 3x3 convolutions) with a 1x1 projection when shapes change."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(mid_channels)
        self.conv_b = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        return torch.relu(out + self.shortcut(x))


class Stage(nn.Module):
    def __init__(self, in_channels: int, mid_channels: list[int], out_channels: int, stride: int,
                 stem: bool) -> None:
        super().__init__()
        self.stem: nn.Module = nn.Identity()
        if stem:
            self.stem = nn.Sequential(
                nn.Conv2d(1, in_channels, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(),
            )
        units = []
        for position, mid in enumerate(mid_channels):
            units.append(ResidualUnit(in_channels if position == 0 else out_channels, mid, out_channels,
                                      stride if position == 0 else 1))
        self.units = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(self.stem(x))


def width_config(width: float) -> dict[str, Any]:
    # even channel counts: odd ones (9 at width 0.25) crashed oneDNN's backward pass here
    channels = [max(4, 2 * round(c * width / 2)) for c in BASE_CHANNELS]
    return {"width": width, "channels": channels,
            "mid_channels": [[c] * UNITS_PER_STAGE for c in channels]}


def _block(config: ArchitectureConfig, index: int) -> nn.Module:
    channels = config["channels"]
    if index == 0:
        return Stage(channels[0], config["mid_channels"][0], channels[0], stride=1, stem=True)
    return Stage(channels[index - 1], config["mid_channels"][index], channels[index], stride=2, stem=False)


def _head(config: ArchitectureConfig, index: int) -> nn.Module:
    return PooledHead(config["channels"][index], 10)


FAMILY = register_family(
    Family(
        name="digits-resnet",
        description="4-stage multi-exit ResNet on scikit-learn digits upsampled to 64x64",
        input_shape=(1, 64, 64),
        num_classes=10,
        dataset="sklearn-digits-64x64",
        block_count=lambda config: len(config["channels"]),
        exits=lambda config: list(range(len(config["channels"]))),
        build_block=_block,
        build_head=_head,
        width_config=width_config,
    )
)
