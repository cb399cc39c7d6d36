"""Measure something per variant and keep it in the zoo's manifests: the loop the offline
measurements (``benchmarks.calibration``, ``benchmarks.codec_accuracy``) share.

Each manifest is rewritten after every variant, so a long run interrupted part-way keeps what it
measured; the per-variant report entries are merged into the benchmark's results JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from zoo.manifest import DEFAULT_ZOO_DIR, PRETRAINED_ZOO_DIR, VariantInfo, read_manifest, write_manifest

Measurement = Callable[[VariantInfo, Path], tuple[VariantInfo, object] | None]
"""(variant, its zoo directory) -> (the variant with its new manifest fields, its report entry),
or None to leave the variant as it is."""


def measure_into_manifests(zoo_dirs: Sequence[Path] | None, only: Sequence[str] | None, measure: Measurement,
                           results: Path) -> None:
    """``measure`` every variant (those named in ``only``, if given) of each zoo (default: both
    shipped zoos); write each manifest back and merge the report into ``results``."""
    report: dict[str, object] = {}
    for zoo_dir in zoo_dirs or [DEFAULT_ZOO_DIR, PRETRAINED_ZOO_DIR]:
        manifest = read_manifest(zoo_dir)
        for name, variant in list(manifest.variants.items()):
            if only and name not in only:
                continue
            measured = measure(variant, zoo_dir)
            if measured is None:
                continue
            manifest.variants[name], report[name] = measured
            write_manifest(manifest, zoo_dir)
    results.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(results.read_text()) if results.exists() else {}
    results.write_text(json.dumps(previous | report, indent=1) + "\n")
