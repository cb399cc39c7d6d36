"""Parameter and FLOP counts per module, measured with forward hooks on a real forward.

FLOPs count a multiply-add as two operations, for convolutions and linear layers (the
rest — BN, ReLU, pooling — is small and left out, as is usual in the literature).
"""

from __future__ import annotations

import torch
from torch import nn


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@torch.inference_mode()
def flop_count(module: nn.Module, sample: torch.Tensor) -> tuple[int, torch.Tensor]:
    """FLOPs of ``module`` on one sample (batch of 1), and its output."""
    total = 0

    def convolution_hook(layer: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = layer.kernel_size[0] * layer.kernel_size[1] * (layer.in_channels // layer.groups)
        total += 2 * kernel * output.numel()

    def linear_hook(layer: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * layer.in_features * output.numel()

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(convolution_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    try:
        output = module(sample)
    finally:
        for handle in handles:
            handle.remove()
    return total, output
