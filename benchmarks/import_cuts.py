"""Import cuts: a MobileNetV2-shaped ONNX classifier (random weights, ~3 MB) through ``zoo.importing``.

Prints every candidate cut (where exactly one tensor is live: its shape and bytes per
sample) and the K-block partition chosen, checks the imported split against onnxruntime,
and writes ``benchmarks/results/import_cuts.json``. torchvision cannot be installed beside
this torch build, so the model is ``zoo.mobilenet_v2`` (inverted residuals, depthwise convs,
ReLU6 exported as Clip, residual Add, GlobalAveragePool, Flatten, Gemm), exported with batch 1.

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

from zoo.mobilenet_v2 import export_onnx, mobilenet_v2_like

RESULTS = Path(__file__).resolve().parent / "results" / "import_cuts.json"


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
