"""Boundary codec throughput on the real family: encode + decode of every boundary of
text-orientation-w1 (224 px) in each codec a hop may use (``python -m benchmarks.boundary_codecs``).

Why: the planner prices a hop with encode + bytes / bandwidth + decode, and the README claims
uint8 encode + decode runs at >= 1 GB/s of float32 on the largest boundary (32x112x112). This
records that figure with its spread and the host's state, instead of a number in a table.

The boundaries are the model's own activations on a held-out page (``zoo.orientation_data``),
not random values: compression (lz4, zlib) depends on them (ReLU zeros). Each repeat times a
batch of ``calls`` encode + decode calls per (boundary, codec), interleaved so a noisy shared
host hits every codec alike; the figures are the median and the [min, max] of the repeats.
GB/s means 10^9 bytes of the float32 boundary per second of encode + decode (what a hop saves
in compute, against the bytes it saves on the link). The host's CPU use during the run
(share of all cores busy, from ``psutil.cpu_times``) and its load average are recorded too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks.paired_ab import host_busy_percent
from p2pinfer.protocol.boundary_codec import available_compressions, decode_boundary, encode_boundary
from zoo import orientation_data
from zoo.manifest import PRETRAINED_ZOO_DIR, read_manifest
from zoo.model_slice import load_slice

RESULTS = Path(__file__).resolve().parent / "results" / "boundary_codecs.json"
VARIANT = "text-orientation-w1"
CODECS = ("float32", "float16", "uint8", "uint8-channel", "uint8+lz4", "uint8+zlib")
HEADLINE_BOUNDARY = 1  # 32x112x112, the largest boundary of the 224 px model
TARGET_GIGABYTES_PER_S = 1.0  # uint8 encode + decode, of float32, on the headline boundary
PAGE_INDEX = 2  # the held-out page the tests use too


def real_boundaries(zoo_dir: Path = PRETRAINED_ZOO_DIR, variant_name: str = VARIANT) -> list[np.ndarray]:
    """Every boundary (0 = the input) of ``variant_name`` on one held-out page, batch 1, float32."""
    variant = read_manifest(zoo_dir).variant(variant_name)
    model = load_slice(variant, zoo_dir=zoo_dir)
    page = orientation_data.sample(orientation_data.HELD_OUT_SEED, PAGE_INDEX).image
    hidden = orientation_data.preprocess(page, variant.input_shape[-1])[None]
    boundaries = [np.ascontiguousarray(hidden.numpy(), dtype=np.float32)]
    with torch.inference_mode():
        for block in range(variant.block_count - 1):
            hidden = model.run_block(block, hidden)
            boundaries.append(np.ascontiguousarray(hidden.float().numpy()))
    return boundaries


def time_codecs(boundaries: Sequence[np.ndarray], codecs: Sequence[str], repeats: int, calls: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """Per (boundary, codec): per repeat, the mean (encode s, decode s) of ``calls`` calls.
    One untimed call of each first (page faults, allocator); repeats interleave everything."""
    for array in boundaries:
        for codec in codecs:
            decode_boundary(*encode_boundary(array, codec))
    rounds: dict[tuple[int, str], list[tuple[float, float]]] = {
        (index, codec): [] for index in range(len(boundaries)) for codec in codecs}
    for _ in range(repeats):
        for index, array in enumerate(boundaries):
            for codec in codecs:
                encoding_s = decoding_s = 0.0
                for _ in range(calls):
                    started = clock()
                    encoding, payload = encode_boundary(array, codec)
                    encoded = clock()
                    decode_boundary(encoding, payload)
                    encoding_s += encoded - started
                    decoding_s += clock() - encoded
                rounds[(index, codec)].append((encoding_s / calls, decoding_s / calls))
    return rounds


def summarize(boundaries: Sequence[np.ndarray], codecs: Sequence[str],
              rounds: dict[tuple[int, str], list[tuple[float, float]]]) -> list[dict[str, Any]]:
    """Per boundary and codec: wire bytes, median encode / decode / round-trip ms, and GB/s of
    float32 (median, min, max over the repeats)."""
    summary = []
    for index, array in enumerate(boundaries):
        per_codec: dict[str, Any] = {}
        for codec in codecs:
            encoding, payload = encode_boundary(array, codec)
            times = rounds[(index, codec)]
            speeds = [array.nbytes / (encode_s + decode_s) / 1e9 for encode_s, decode_s in times]
            per_codec[codec] = {
                "travelled_as": encoding.name, "wire_bytes": int(payload.nbytes),
                "encode_ms": round(statistics.median(encode_s for encode_s, _ in times) * 1000, 4),
                "decode_ms": round(statistics.median(decode_s for _, decode_s in times) * 1000, 4),
                "round_trip_ms": round(statistics.median(sum(pair) for pair in times) * 1000, 4),
                "gigabytes_per_s_of_float32": {"median": round(statistics.median(speeds), 3),
                                               "min": round(min(speeds), 3), "max": round(max(speeds), 3)}}
        summary.append({"boundary": index, "shape": list(array.shape), "float32_bytes": int(array.nbytes),
                        "codecs": per_codec})
    return summary


def git_commit() -> str | None:
    """The checkout's HEAD, for the record (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def measure(repeats: int, calls: int, boundaries: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The whole report: the real boundaries (or ``boundaries``) timed in every available codec."""
    arrays = real_boundaries() if boundaries is None else list(boundaries)
    codecs = [codec for codec in CODECS if codec.partition("+")[2] in ("", *available_compressions())]
    load_before = [round(value, 2) for value in os.getloadavg()]
    process = psutil.Process()
    process_before, host_before = process.cpu_times(), psutil.cpu_times()
    started = time.perf_counter()
    rounds = time_codecs(arrays, codecs, repeats, calls)
    seconds = time.perf_counter() - started
    process_after, host_after = process.cpu_times(), psutil.cpu_times()
    summary = summarize(arrays, codecs, rounds)
    headline = summary[min(HEADLINE_BOUNDARY, len(summary) - 1)]
    uint8_speed = headline["codecs"]["uint8"]["gigabytes_per_s_of_float32"]["median"]
    return {
        "benchmark": "boundary_codecs",
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "variant": VARIANT if boundaries is None else None,
        "image": f"held-out page {PAGE_INDEX} (seed {orientation_data.HELD_OUT_SEED})" if boundaries is None else None,
        "repeats": repeats, "calls_per_repeat": calls, "seconds": round(seconds, 2),
        "boundaries": summary,
        "target": f"uint8 encode + decode of boundary {headline['boundary']} {headline['shape']} >= "
                  f"{TARGET_GIGABYTES_PER_S} GB/s of float32 (median of the repeats)",
        "target_met": uint8_speed >= TARGET_GIGABYTES_PER_S,
        "host": {"cpus": os.cpu_count(), "load_average_before": load_before,
                 "load_average_after": [round(value, 2) for value in os.getloadavg()],
                 "host_cpu_percent": host_busy_percent(host_before, host_after),
                 "process_cpu_seconds": round((process_after.user + process_after.system)
                                              - (process_before.user + process_before.system), 2),
                 "python": platform.python_version(), "numpy": np.__version__,
                 "processor": platform.processor() or platform.machine()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median and spread are kept)")
    parser.add_argument("--calls", type=int, default=20, help="encode + decode calls per timed batch")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON figures")
    arguments = parser.parse_args(argv)
    report = measure(arguments.repeats, arguments.calls)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"boundary codecs on {report['variant']}, GB/s of float32, median [min, max] of {arguments.repeats} "
          f"x {arguments.calls} calls; host {report['host']['host_cpu_percent']}% busy, "
          f"load {report['host']['load_average_before']}")
    for row in report["boundaries"]:
        cells = [f"{codec} {figures['gigabytes_per_s_of_float32']['median']:.2f} "
                 f"[{figures['gigabytes_per_s_of_float32']['min']:.2f}, "
                 f"{figures['gigabytes_per_s_of_float32']['max']:.2f}]"
                 for codec, figures in row["codecs"].items()]
        print(f"  {row['boundary']} {'x'.join(map(str, row['shape'][1:])):<11} " + "; ".join(cells))
    print(f"target {report['target']}: {'met' if report['target_met'] else 'NOT met'}  -> {arguments.output}")


if __name__ == "__main__":
    main()
