"""Confidence calibration of every exit, measured on held-out data and written into the manifests.

For every variant and exit, the held-out images run to that exit; each answer's confidence
(max softmax) and whether it was right go into ``selector.calibration.CalibrationTable.fit``
(equal-count confidence bins, isotonic accuracy), stored as ``ExitInfo.calibration`` in
``zoo/manifest.json`` and ``zoo/pretrained/manifest.json``. The node reads the QoE reward's
accuracy term from these tables (``p2pinfer.planning.selection.ArmSelection.answer_accuracy``).
Deterministic: fixed data, no sampling.
``python -m benchmarks.calibration [--zoo DIR] [--images N] [--bins B] [--only VARIANT ...]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from benchmarks.manifest_measurement import measure_into_manifests
from selector.calibration import DEFAULT_BINS, CalibrationTable
from zoo.dataset import held_out_of
from zoo.manifest import ExitCalibration, VariantInfo
from zoo.model_slice import load_slice

RESULTS = Path(__file__).resolve().parent / "results" / "calibration.json"


@torch.inference_mode()
def exit_answers(variant: VariantInfo, zoo_dir: Path, images: int | None,
                 batch: int = 50) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per exit block: every held-out image's confidence and whether the exit was right."""
    model = load_slice(variant, zoo_dir=zoo_dir)
    data, labels = held_out_of(variant, images)
    confidences: dict[int, list[np.ndarray]] = {block: [] for block in variant.exit_blocks}
    correct: dict[int, list[np.ndarray]] = {block: [] for block in variant.exit_blocks}
    for start in range(0, len(labels), batch):
        hidden, y = data[start:start + batch], labels[start:start + batch]
        for block in range(variant.exit_blocks[-1] + 1):
            hidden = model.run_block(block, hidden)
            if block in confidences:
                probabilities = torch.softmax(model.exit_logits(block, hidden).float(), dim=-1)
                confidence, predicted = probabilities.max(dim=-1)
                confidences[block].append(confidence.numpy())
                correct[block].append((predicted == y).numpy())
    return {block: (np.concatenate(confidences[block]), np.concatenate(correct[block])) for block in confidences}


def calibrate(variant: VariantInfo, zoo_dir: Path, images: int | None, bins: int) -> VariantInfo:
    answers = exit_answers(variant, zoo_dir, images)
    exits = []
    for exit_info in variant.exits:
        confidence, right = answers[exit_info.block]
        table = CalibrationTable.fit(confidence, right, bins=bins)
        exits.append(msgspec.structs.replace(exit_info, calibration=ExitCalibration(
            confidence=[round(c, 4) for c in table.confidence], accuracy=[round(a, 4) for a in table.accuracy],
            images=int(confidence.size))))
    return msgspec.structs.replace(variant, exits=exits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, action="append", help="zoo directories (default: both shipped zoos)")
    parser.add_argument("--images", type=int, default=None, help="held-out images per variant (default: all)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="confidence bins per exit")
    parser.add_argument("--only", nargs="*", default=None)
    arguments = parser.parse_args()
    torch.set_num_threads(1)

    def measure(variant: VariantInfo, zoo_dir: Path) -> tuple[VariantInfo, object] | None:
        if not variant.exits or variant.exits[0].accuracy != variant.exits[0].accuracy:
            return None  # imported without measured accuracy: nothing to calibrate against
        started = time.perf_counter()
        calibrated = calibrate(variant, zoo_dir, arguments.images, arguments.bins)
        print(f"{variant.name:28s} " + "  ".join(
            f"exit {e.block}: {e.calibration.accuracy[0]:.2f}..{e.calibration.accuracy[-1]:.2f}"
            for e in calibrated.exits if e.calibration is not None)
              + f"  ({time.perf_counter() - started:.1f} s)", flush=True)
        return calibrated, {str(e.block): msgspec.to_builtins(e.calibration) for e in calibrated.exits}

    measure_into_manifests(arguments.zoo, arguments.only, measure, RESULTS)

if __name__ == "__main__":
    main()
