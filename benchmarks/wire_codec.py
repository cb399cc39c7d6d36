"""Wire codec throughput: encode + decode of a 4 MB float32 tensor against a raw memcpy of the
same bytes, measured in the same run (``python -m benchmarks.wire_codec``).

``encode_frame`` is zero-copy (it returns the header and views of the array) and so is
``decode_frame`` (views into the body), so timing them alone would only time Python
overhead. What each side really pays is therefore measured too:

- sender: ``encode_frame`` + ``b"".join(parts)``, the one copy a client makes when its HTTP
  library wants a single buffer (``Client`` joins only frames up to 64 KiB; aiohttp writes
  the parts as they are);
- receiver: ``decode_frame`` of the received body (no copy);
- round trip: sender + receiver, the figure the target (>= 0.5x memcpy) is about.

memcpy baselines: ``np.copyto`` into a preallocated buffer (the fastest a copy can be) and
``bytes(view)`` (a copy into freshly allocated memory, like the join). Each figure is the
median of interleaved timed batches; GB/s means 10^9 bytes of tensor per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from p2pinfer.protocol.wire import InferFrameHeader, decode_frame, encode_frame

RESULTS = Path(__file__).parent / "results" / "wire_codec.json"
TENSOR_BYTES = 4 * 1024 * 1024


def seconds_per_call(
    actions: dict[str, Callable[[], object]], repeats: int, calls: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median over ``repeats`` rounds of a batch of ``calls`` calls per action. Rounds interleave
    the actions, so a noisy shared machine (frequency changes, neighbours) hits all of them alike.
    Returns the medians and the best rounds."""
    for action in actions.values():
        action()  # warm up: page faults, allocator, caches
    timings: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            start = time.perf_counter()
            for _ in range(calls):
                action()
            timings[name].append((time.perf_counter() - start) / calls)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return medians, {name: min(values) for name, values in timings.items()}


def measure(repeats: int, calls: int) -> dict:
    tensor = np.random.default_rng(0).random(TENSOR_BYTES // 4, dtype=np.float32).reshape(1, 1024, 1024)
    header = InferFrameHeader(deadline_ms=100.0, request_id="bench")
    body = b"".join(encode_frame(header, {"input": tensor}))
    destination = np.empty_like(tensor)
    source_view = tensor.reshape(-1).view(np.uint8).data  # the array's memoryview

    def round_trip() -> None:
        decode_frame(b"".join(encode_frame(header, {"input": tensor})), InferFrameHeader)

    timings, best = seconds_per_call({
        "memcpy_preallocated": lambda: np.copyto(destination, tensor),
        "memcpy_fresh_allocation": lambda: bytes(source_view),
        "encode_zero_copy_parts": lambda: encode_frame(header, {"input": tensor}),
        "encode_and_join": lambda: b"".join(encode_frame(header, {"input": tensor})),
        "decode": lambda: decode_frame(body, InferFrameHeader),
        "encode_join_decode": round_trip,
    }, repeats, calls)
    decoded = decode_frame(body, InferFrameHeader)[1]["input"]
    assert np.array_equal(decoded, tensor) and np.shares_memory(decoded, np.frombuffer(body, dtype=np.uint8))

    gigabytes_per_s = {name: TENSOR_BYTES / seconds / 1e9 for name, seconds in timings.items()}
    memcpy = gigabytes_per_s["memcpy_preallocated"]
    return {
        "tensor_bytes": TENSOR_BYTES,
        "frame_bytes": len(body),
        "microseconds": {name: round(seconds * 1e6, 2) for name, seconds in timings.items()},
        "best_round_microseconds": {name: round(seconds * 1e6, 2) for name, seconds in best.items()},
        "gigabytes_per_s": {name: round(value, 2) for name, value in gigabytes_per_s.items()},
        "ratio_to_memcpy_preallocated": {
            name: round(value / memcpy, 3) for name, value in gigabytes_per_s.items() if not name.startswith("memcpy")
        },
        "ratio_to_memcpy_fresh_allocation": {
            name: round(value / gigabytes_per_s["memcpy_fresh_allocation"], 3)
            for name, value in gigabytes_per_s.items() if not name.startswith("memcpy")
        },
        "target": "encode_join_decode >= 0.5x memcpy_preallocated",
        "target_met": gigabytes_per_s["encode_join_decode"] >= 0.5 * memcpy,
        "repeats": repeats,
        "calls_per_repeat": calls,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="timed rounds (the median is kept)")
    parser.add_argument("--calls", type=int, default=20, help="calls per timed batch")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON figures")
    arguments = parser.parse_args(argv)
    report = measure(arguments.repeats, arguments.calls)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, report["gigabytes_per_s"]))
    print(f"wire codec, {TENSOR_BYTES / 2**20:.0f} MiB float32 tensor (median of {arguments.repeats} x "
          f"{arguments.calls} calls)")
    for name, value in report["gigabytes_per_s"].items():
        ratio = report["ratio_to_memcpy_preallocated"].get(name)
        suffix = f"  {ratio:.2f}x memcpy" if ratio is not None else ""
        print(f"  {name:<{width}}  {report['microseconds'][name]:>10.1f} us  {value:>9.2f} GB/s{suffix}")
    print(f"target {report['target']}: {'met' if report['target_met'] else 'NOT met'}  -> {arguments.output}")


if __name__ == "__main__":
    main()
