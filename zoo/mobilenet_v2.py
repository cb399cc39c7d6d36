"""A MobileNetV2-shaped classifier with random weights, and its ONNX export: a realistic model
to import (inverted residuals, depthwise convs, ReLU6 exported as Clip, residual Add,
GlobalAveragePool, Flatten, Gemm).

It lives in the zoo because the import tests and the import benchmark (``benchmarks.import_cuts``)
both build it; torchvision cannot be installed beside this torch build, so it is defined here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class _ConvBN(nn.Sequential):
    def __init__(self, inputs: int, outputs: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(outputs)]
        if activation:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.residual = stride == 1 and inputs == outputs
        layers: list[nn.Module] = [] if expansion == 1 else [_ConvBN(inputs, hidden, 1)]
        layers += [_ConvBN(hidden, hidden, 3, stride, groups=hidden), _ConvBN(hidden, outputs, 1, activation=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Like(nn.Module):
    """MobileNetV2's layout (Sandler et al. 2018) at a width multiplier, with random weights."""

    def __init__(self, num_classes: int = 100, width: float = 0.5, last_channels: int = 1280) -> None:
        super().__init__()
        settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]
        channels = max(8, int(32 * width))
        features: list[nn.Module] = [_ConvBN(3, channels, 3, 2)]
        for expansion, base, repeats, stride in settings:
            outputs = max(8, int(base * width))
            for repeat in range(repeats):
                features.append(_InvertedResidual(channels, outputs, stride if repeat == 0 else 1, expansion))
                channels = outputs
        features.append(_ConvBN(channels, last_channels, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2_like(seed: int = 0) -> MobileNetV2Like:
    """Random but not degenerate: BN statistics perturbed so folding them into convs matters."""
    torch.manual_seed(seed)
    model = MobileNetV2Like()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                # nn.BatchNorm2d tracks running statistics by default: the buffers exist
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...] = (3, 224, 224), opset: int = 13) -> Path:
    """Export with batch 1 (as most published classifier ONNX files are), legacy TorchScript exporter."""
    torch.onnx.export(model, (torch.randn(1, *input_shape),), str(path), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["logits"])
    return path
