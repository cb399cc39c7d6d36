"""Structured pruning that really removes channels.

Every prunable unit has ``conv_a`` (→ mid channels) → ``bn_a`` → ``conv_b`` (mid →).
We rank ``conv_a``'s output channels by L1 norm of the filter times ``|bn_a.weight|``
(network-slimming style), keep the top fraction and rebuild smaller convolutions: the
pruned variant has fewer parameters and FLOPs, not masked zeros.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def prunable_units(module: nn.Module) -> list[nn.Module]:
    return [unit for unit in module.modules()
            if isinstance(getattr(unit, "conv_a", None), nn.Conv2d) and hasattr(unit, "conv_b")]


def channel_scores(unit: nn.Module) -> torch.Tensor:
    filter_norm = unit.conv_a.weight.detach().abs().sum(dim=(1, 2, 3))
    return filter_norm * unit.bn_a.weight.detach().abs()


def _prune_unit(unit: nn.Module, keep: torch.Tensor) -> None:
    old_a, old_bn, old_b = unit.conv_a, unit.bn_a, unit.conv_b
    new_a = nn.Conv2d(old_a.in_channels, len(keep), old_a.kernel_size, old_a.stride, old_a.padding,
                      bias=old_a.bias is not None)
    new_a.weight.data = old_a.weight.data[keep].clone()
    if old_a.bias is not None:
        new_a.bias.data = old_a.bias.data[keep].clone()
    new_bn = nn.BatchNorm2d(len(keep))
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, name).data = getattr(old_bn, name).data[keep].clone()
    new_b = nn.Conv2d(len(keep), old_b.out_channels, old_b.kernel_size, old_b.stride, old_b.padding,
                      bias=old_b.bias is not None)
    new_b.weight.data = old_b.weight.data[:, keep].clone()
    if old_b.bias is not None:
        new_b.bias.data = old_b.bias.data.clone()
    unit.conv_a, unit.bn_a, unit.conv_b = new_a, new_bn, new_b


def prune_blocks(blocks: list[nn.Module], config: dict[str, Any], keep_fraction: float
                 ) -> tuple[list[nn.Module], dict[str, Any]]:
    """Return pruned copies of ``blocks`` and the architecture config that rebuilds them."""
    pruned_blocks = [copy.deepcopy(block) for block in blocks]
    mid_channels: list[list[int]] = []
    for block in pruned_blocks:
        block_mids = []
        for unit in prunable_units(block):
            scores = channel_scores(unit)
            count = max(2, round(len(scores) * keep_fraction))
            keep = torch.sort(torch.topk(scores, count).indices).values
            _prune_unit(unit, keep)
            block_mids.append(count)
        mid_channels.append(block_mids)
    new_config = dict(config)
    new_config["mid_channels"] = mid_channels
    new_config["keep_fraction"] = keep_fraction
    return pruned_blocks, new_config
