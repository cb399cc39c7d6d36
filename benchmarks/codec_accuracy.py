"""Accuracy cost of each boundary codec, per variant and cut, written into the manifests.

For every variant, every cut ``k`` (boundary ``k``, between blocks ``k-1`` and ``k``; 0 is the
model input) and every lossy codec (float16, uint8, uint8-channel; zlib/lz4 are lossless on
top), the held-out images run blocks ``[0, k)``, the boundary goes through
``encode_boundary``/``decode_boundary`` one image at a time (as on the wire: per-tensor ranges
are per request), and blocks ``[k, last]`` finish at the final exit. The top-1 change against
the uncompressed run goes into ``VariantInfo.codec_accuracy``. Deterministic: fixed data, no
sampling. ``python -m benchmarks.codec_accuracy [--zoo DIR] [--images N] [--only VARIANT ...]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from benchmarks.manifest_measurement import measure_into_manifests
from p2pinfer.protocol.boundary_codec import decode_boundary, encode_boundary
from zoo.dataset import held_out_of
from zoo.manifest import CodecAccuracy, VariantInfo
from zoo.model_slice import load_slice

LOSSY_CODECS = ("float16", "uint8", "uint8-channel")
RESULTS = Path(__file__).resolve().parent / "results" / "codec_accuracy.json"


def through_codec(batch: torch.Tensor, codec: str) -> torch.Tensor:
    """Each sample encoded and decoded on its own, as one request's boundary would be."""
    decoded = [decode_boundary(*encode_boundary(sample.unsqueeze(0).numpy(), codec)) for sample in batch]
    return torch.from_numpy(np.concatenate(decoded))


@torch.inference_mode()
def measure(variant: VariantInfo, zoo_dir: Path, images: int | None, batch: int = 50) -> list[CodecAccuracy]:
    model = load_slice(variant, zoo_dir=zoo_dir)
    data, labels = held_out_of(variant, images)
    last = variant.block_count - 1
    final_exit = variant.exit_blocks[-1]
    correct = {(k, codec): 0 for k in range(last + 1) for codec in ("float32", *LOSSY_CODECS)}
    for start in range(0, len(labels), batch):
        x, y = data[start:start + batch], labels[start:start + batch]
        boundaries = [x]
        hidden = x
        for block in range(final_exit):
            hidden = model.run_block(block, hidden)
            boundaries.append(hidden.float())
        reference = model.exit_logits(final_exit, model.run_block(final_exit, boundaries[final_exit]))
        for k in range(final_exit + 1):
            correct[(k, "float32")] += int((reference.argmax(-1) == y).sum())
            for codec in LOSSY_CODECS:
                hidden = through_codec(boundaries[k], codec)
                for block in range(k, final_exit + 1):
                    hidden = model.run_block(block, hidden)
                predicted = model.exit_logits(final_exit, hidden).argmax(-1)
                correct[(k, codec)] += int((predicted == y).sum())
    count = len(labels)
    return [CodecAccuracy(boundary=k, codec=codec,
                          accuracy_change=round((correct[(k, codec)] - correct[(k, "float32")]) / count, 4),
                          images=count)
            for k in range(final_exit + 1) for codec in LOSSY_CODECS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, action="append", help="zoo directories (default: both shipped zoos)")
    parser.add_argument("--images", type=int, default=None, help="held-out images per variant (default: all)")
    parser.add_argument("--only", nargs="*", default=None)
    arguments = parser.parse_args()
    torch.set_num_threads(1)

    def measure_variant(variant: VariantInfo, zoo_dir: Path) -> tuple[VariantInfo, object]:
        started = time.perf_counter()
        entries = measure(variant, zoo_dir, arguments.images)
        worst = {codec: min(e.accuracy_change for e in entries if e.codec == codec) for codec in LOSSY_CODECS}
        print(f"{variant.name:28s} worst top-1 change " + "  ".join(f"{c} {v:+.4f}" for c, v in worst.items()),
              flush=True)
        return (msgspec.structs.replace(variant, codec_accuracy=entries),
                {"worst_change": worst, "entries": msgspec.to_builtins(entries),
                 "seconds": round(time.perf_counter() - started, 1)})

    measure_into_manifests(arguments.zoo, arguments.only, measure_variant, RESULTS)

if __name__ == "__main__":
    main()
