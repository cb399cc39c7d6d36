"""Import cuts: a MobileNetV2-shaped ONNX classifier (random weights, ~3 MB) through ``zoo.importing``.

Prints every candidate cut (where exactly one tensor is live: its shape and bytes per
sample) and the K-block partition chosen, checks the imported split against onnxruntime,
and writes ``benchmarks/results/import_cuts.json``. torchvision cannot be installed beside
this torch build, so the model is defined here (inverted residuals, depthwise convs, ReLU6
exported as Clip, residual Add, GlobalAveragePool, Flatten, Gemm), exported with batch 1.

    python -m benchmarks.import_cuts [--blocks 4] [--opset 13]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "import_cuts.json"


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--opset", type=int, default=13)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime

    from zoo.graph import load_graph
    from zoo.importing import import_source
    from zoo.model_slice import load_slice

    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_onnx(mobilenet_v2_like(), Path(scratch) / "mobilenet_v2_like.onnx", opset=args.opset)
        onnx_bytes = onnx_path.stat().st_size
        start = time.perf_counter()
        info = import_source(onnx_path, "mobilenet-v2-like", Path(scratch) / "zoo", blocks=args.blocks)
        import_s = time.perf_counter() - start
        graph = load_graph(Path(scratch) / "zoo" / info.graph_file, info.graph_sha256)
        images = torch.randn(3, 3, 224, 224)
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        reference = np.concatenate([session.run(None, {"input": image[None].numpy()})[0] for image in images])
        hidden = images
        for index in range(info.block_count):  # one slice per block: every boundary crosses a "node"
            hidden = load_slice(info, index, index, zoo_dir=Path(scratch) / "zoo").run(hidden)
        error = float(np.abs(hidden.numpy() - reference).max())

    cuts = [{"position": cut.position, "after": cut.after, "shape": cut.shape, "bytes": cut.bytes,
             "flops_before": cut.flops_before} for cut in graph.candidate_cuts]
    blocks: list[dict[str, Any]] = [
        {"index": block.index, "input_shape": block.input_shape, "output_shape": block.output_shape,
               "output_bytes": block.output_bytes, "flops": block.flops, "params": block.params,
               "cpu_ms": milliseconds} for block, milliseconds in zip(info.blocks, info.block_cpu_ms, strict=True)]
    print(f"MobileNetV2-like ONNX ({onnx_bytes / 1e6:.2f} MB, opset {args.opset}): {len(cuts)} candidate cuts")
    for cut in cuts:
        print(f"  after op {cut['position']:>4} {cut['after']:<28} {str(cut['shape']):<16} {cut['bytes']:>10,} B")
    print(f"chosen partition into {args.blocks} blocks (FLOP-balanced, small boundaries preferred):")
    for block in blocks:
        print(f"  block {block['index']}: {block['input_shape']} -> {block['output_shape']} "
              f"{block['output_bytes']:>9,} B out, {block['flops'] / 1e6:6.1f} MFLOPs, {block['cpu_ms']:.2f} ms")
    print(f"max |split - onnxruntime| = {error:.2e} (batch 3); import took {import_s:.1f} s")
    result = {"model": "MobileNetV2-like (width 0.5, 100 classes, random weights)", "onnx_bytes": onnx_bytes,
              "opset": args.opset, "blocks": blocks, "candidate_cuts": cuts, "max_abs_error_vs_onnxruntime": error,
              "import_seconds": round(import_s, 2), "flops_total": info.flops_total,
              "params_total": info.params_total}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
