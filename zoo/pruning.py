"""Structured pruning that really removes channels.

Every prunable unit has ``conv_a`` (→ mid channels) → ``bn_a`` → ``conv_b`` (mid →).
We rank ``conv_a``'s output channels by L1 norm of the filter times ``|bn_a.weight|``
(network-slimming style), keep the top fraction and rebuild smaller convolutions: the
pruned variant has fewer parameters and FLOPs, not masked zeros.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn


def prunable_units(module: nn.Module) -> list[nn.Module]:
    return [unit for unit in module.modules()
            if isinstance(getattr(unit, "conv_a", None), nn.Conv2d) and hasattr(unit, "conv_b")]


def _unit_layers(unit: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]:
    """A prunable unit's ``conv_a``, ``bn_a``, ``conv_b``."""
    # cast: nn.Module.__getattr__ is typed ``Tensor | Module``; a unit that prunable_units
    # selected has these three layers (the architectures of this package build them).
    return (cast(nn.Conv2d, unit.conv_a), cast(nn.BatchNorm2d, unit.bn_a),
            cast(nn.Conv2d, unit.conv_b))


def channel_scores(unit: nn.Module) -> torch.Tensor:
    conv_a, bn_a, _ = _unit_layers(unit)
    filter_norm = conv_a.weight.detach().abs().sum(dim=(1, 2, 3))
    return filter_norm * bn_a.weight.detach().abs()


def _conv_like(old: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    """A convolution with ``old``'s geometry and bias setting, new channel counts."""
    # torch types Conv2d's kernel_size/stride/padding attributes as tuple[int, ...] but its
    # constructor as tuple[int, int]: the values are the 2-tuples the constructor stored.
    kernel_size, stride, padding = old.kernel_size, old.stride, old.padding
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,  # type: ignore[arg-type]
                     bias=old.bias is not None)


def _prune_unit(unit: nn.Module, keep: torch.Tensor) -> None:
    old_a, old_bn, old_b = _unit_layers(unit)
    new_a = _conv_like(old_a, old_a.in_channels, len(keep))
    new_a.weight.data = old_a.weight.data[keep].clone()
    if old_a.bias is not None and new_a.bias is not None:  # built with bias=True just above
        new_a.bias.data = old_a.bias.data[keep].clone()
    new_bn = nn.BatchNorm2d(len(keep))
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, name).data = getattr(old_bn, name).data[keep].clone()
    new_b = _conv_like(old_b, len(keep), old_b.out_channels)
    new_b.weight.data = old_b.weight.data[:, keep].clone()
    if old_b.bias is not None and new_b.bias is not None:  # built with bias=True just above
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
