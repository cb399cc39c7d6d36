"""Early-exit heads and how they are trained on a frozen backbone (BranchyNet-style).

Shared by the text-orientation family (``zoo.lcnet``, ``zoo.orientation_train``) and the
exits of imported families (``zoo.imported_exits``), so both use one head design and one
training loop. A head's first op is parameter-free pooling: training caches the pooled
features of one backbone pass and fits the heads on them in seconds.

An imported variant has no family code, so its heads are described by an ``ExitHeadSpec``
in the manifest and rebuilt here from it (``build_exit_head``): plain integers, no pickle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as functional
from torch import nn

from zoo.errors import ExitTrainingError
from zoo.manifest import ExitHeadSpec

EXIT_POOL = 7  # early exits pool to at most 7x7 first: keeps the coarse spatial layout
EXIT_CHANNELS = 32
HEAD_KINDS = ("pool-conv-linear", "linear")
_LARGEST_DIMENSION = 1 << 16  # a head spec beyond this is not a small exit head: refused before allocating


class ConvBNHardswish(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ExitHead(nn.Module):
    """An early exit: pool to ``pool`` x ``pool`` (parameter-free, so training can cache it), 1x1 conv, fc."""

    def __init__(self, in_channels: int, pool: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.conv = ConvBNHardswish(in_channels, channels, 1, 1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(channels * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.conv(self.pool(x)).flatten(1)))


def exit_head_spec(feature_shape: Sequence[int], num_classes: int, channels: int = EXIT_CHANNELS) -> ExitHeadSpec:
    """The head design for one sample's features of ``feature_shape``.

    (C, H, W): pool to the largest size <= ``EXIT_POOL`` that divides H and W (an exact
    average of whole windows, which ONNX Runtime can run too), then ``ExitHead``. (F,): one
    linear layer. Other ranks have no design here.
    """
    shape = [int(size) for size in feature_shape]
    if len(shape) == 3:
        common = math.gcd(shape[1], shape[2])
        pool = max(size for size in range(1, EXIT_POOL + 1) if common % size == 0)
        return ExitHeadSpec(kind="pool-conv-linear", in_channels=shape[0], num_classes=num_classes, pool=pool,
                            channels=channels)
    if len(shape) == 1:
        return ExitHeadSpec(kind="linear", in_channels=shape[0], num_classes=num_classes)
    raise ExitTrainingError(f"features of shape {shape} have no exit head design: heads take (C, H, W) or (F,)")


def build_exit_head(spec: ExitHeadSpec) -> nn.Module:
    """The (untrained) head ``spec`` describes; refuses a kind or size outside the designs."""
    sizes = (spec.in_channels, spec.num_classes, spec.pool, spec.channels)
    if spec.kind not in HEAD_KINDS:
        raise ExitTrainingError(f"exit head kind {spec.kind!r} is unknown; known: {', '.join(HEAD_KINDS)}")
    if not all(0 < size <= _LARGEST_DIMENSION for size in sizes[:2]) or not all(
            0 <= size <= _LARGEST_DIMENSION for size in sizes[2:]):
        raise ExitTrainingError(f"exit head {spec} has sizes outside 1..{_LARGEST_DIMENSION}")
    if spec.kind == "linear":
        return nn.Linear(spec.in_channels, spec.num_classes)
    if spec.pool < 1 or spec.channels < 1:
        raise ExitTrainingError(f"exit head {spec} needs pool and channels >= 1")
    return ExitHead(spec.in_channels, spec.pool, spec.channels, spec.num_classes)


def head_input(spec: ExitHeadSpec, features: torch.Tensor) -> torch.Tensor:
    """What the head's parameter-free first op makes of ``features`` (cached for training:
    the head's own pooling of these is the identity)."""
    if spec.kind == "pool-conv-linear":
        return functional.adaptive_avg_pool2d(features, spec.pool)
    return features


def fit(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
        learning_rate: float = 3e-3, batch_size: int = 64,
        loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        targets: torch.Tensor | None = None) -> None:
    """Train ``module`` (batch norm kept in eval mode: small batches, frozen statistics)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=1e-4)
    steps = epochs * math.ceil(len(inputs) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps)
    module.train()
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.eval()
    with torch.enable_grad():  # a caller (a node, a benchmark) may have turned gradients off process-wide
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(inputs), batch_size):
                chosen = order[start:start + batch_size]
                logits = module(inputs[chosen])
                if loss_of is None:
                    loss = functional.cross_entropy(logits, labels[chosen])
                else:
                    assert targets is not None, "loss_of compares the logits with targets"
                    loss = loss_of(logits, targets[chosen]) + functional.cross_entropy(logits, labels[chosen])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
    module.eval()
