"""Figures for the real pretrained family (text-orientation): ``python -m benchmarks.real_family``.

Prints and writes ``benchmarks/results/real_family.json``: per variant, every exit's accuracy
on the held-out set (re-measured, not copied from the manifest) and on scikit-image's scanned
page and photographed text (real captures, outside the held-out set; needs scikit-image); per-block latency on one
thread (``zoo.profiling.measure``: median of >= 20 runs, repeated 3 times: the median of the
medians and their spread), with the host's CPU use while measuring (psutil); and the bytes a
cut after each block sends, against what sending the input would cost (raw float32, uint8
pixels, JPEG at quality 90).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from zoo import orientation_data
from zoo.export import exit_accuracies
from zoo.manifest import PRETRAINED_ZOO_DIR, VariantInfo, read_manifest
from zoo.model_slice import load_slice
from zoo.profiling import cpu_model, measure

RESULTS = Path(__file__).resolve().parent / "results" / "real_family.json"
FAMILY = "text-orientation"


def accuracy(variant: VariantInfo, count: int | None) -> dict[int, float]:
    images, labels = orientation_data.held_out(variant.input_shape[-1], count)
    model = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    measured = exit_accuracies([model.blocks[k] for k in range(variant.block_count)], model.heads, images, labels)
    return {block: round(value, 4) for block, value in measured.items()}


def scanned_accuracy(variant: VariantInfo) -> dict[str, dict[int, float]] | None:
    """Every exit's accuracy on scikit-image's scanned page and photographed text, apart (None
    without scikit-image): real captures, not rendered pages, so outside the held-out set."""
    try:
        images, labels, names = orientation_data.scanned_samples(variant.input_shape[-1])
    except ImportError:
        return None
    model = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    blocks = [model.blocks[k] for k in range(variant.block_count)]
    accuracies = {}
    for source in orientation_data.SCANNED_IMAGES:
        rows = [index for index, name in enumerate(names) if name.startswith(f"{source}-")]
        measured = exit_accuracies(blocks, model.heads, images[rows], labels[rows])
        accuracies[source] = {block: round(value, 4) for block, value in measured.items()}
    return accuracies


def latency(variant: VariantInfo, repeats: int, rounds: int) -> dict[str, Any]:
    model = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    psutil.cpu_percent(interval=None)
    profiles = [measure(model, threads=1, repeats=repeats, warmup=3) for _ in range(rounds)]
    host_cpu = psutil.cpu_percent(interval=None)
    per_block = list(zip(*(profile.block_ms for profile in profiles), strict=True))
    return {
        "block_ms": [round(statistics.median(values), 3) for values in per_block],
        "block_spread_ms": [round(max(values) - min(values), 3) for values in per_block],
        "exit_ms": {block: round(statistics.median(p.exit_ms[block] for p in profiles), 3)
                    for block in profiles[0].exit_ms},
        "host_cpu_percent": host_cpu,
        "repeats": repeats,
        "rounds": rounds,
    }


def input_bytes(resolution: int, count: int = 16) -> dict[str, float]:
    """One input image as raw float32, as uint8 pixels, and as JPEG (quality 90, mean of ``count``)."""
    pixels, _ = orientation_data.split_pixels(orientation_data.HELD_OUT_SEED, range(count), resolution)
    sizes = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        sizes.append(buffer.tell())
    return {"float32": 3 * resolution * resolution * 4, "uint8": 3 * resolution * resolution,
            "jpeg_q90": round(float(np.mean(sizes)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=None, help="held-out images for accuracy (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    manifest = read_manifest(PRETRAINED_ZOO_DIR)
    results: dict[str, Any] = {"host": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                                        "load_average": list(os.getloadavg()), "torch": torch.__version__},
                               "held_out_size": held_out_size(arguments.images, manifest.held_out.size), "variants": {}}
    for variant in sorted(manifest.variants_of(FAMILY), key=lambda v: -v.flops_total):
        accuracies = accuracy(variant, arguments.images)
        scanned = scanned_accuracy(variant)
        timing = latency(variant, arguments.repeats, arguments.rounds)
        inputs = input_bytes(variant.input_shape[-1])
        cuts = [{"after_block": k, "float32_bytes": block.output_bytes,
                 "vs_input_float32": round(block.output_bytes / inputs["float32"], 3),
                 "vs_input_uint8": round(block.output_bytes / inputs["uint8"], 3),
                 "vs_input_jpeg_q90": round(block.output_bytes / inputs["jpeg_q90"], 2)}
                for k, block in enumerate(variant.blocks[:-1])]
        results["variants"][variant.name] = {
            "compression": variant.compression, "precision": variant.precision,
            "input_shape": variant.input_shape, "params": variant.params_total, "flops": variant.flops_total,
            "weights_bytes": variant.weights_bytes, "exit_accuracy": accuracies,
            "manifest_exit_accuracy": {e.block: e.accuracy for e in variant.exits},
            "scanned_exit_accuracy": scanned,
            "latency": timing, "input_bytes": inputs, "cuts": cuts,
        }
        print(f"{variant.name:24s} acc per exit {accuracies}  block ms {timing['block_ms']} "
              f"(spread {timing['block_spread_ms']}, host cpu {timing['host_cpu_percent']}%)")
        print(f"{'':24s} scikit-image scans (12 samples each) per exit {scanned}")
        print(f"{'':24s} input {inputs}  cut bytes {[c['float32_bytes'] for c in cuts]}")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {arguments.out}")


def held_out_size(images: int | None, held_out_size: int) -> int:
    return held_out_size if images is None else min(images, held_out_size)


if __name__ == "__main__":
    main()
