"""Node overhead, and one node's throughput with micro-batching on and off.

    python -m benchmarks.overhead [--requests 300] [--out benchmarks/results/overhead.json]

Overhead = end-to-end latency through the SDK minus the in-process compute of the same
variant and exit on the same input (both measured in this run, on this machine). Throughput
runs 1, 8 and 32 concurrent clients against a node with batching on (``--max-batch 8``)
and off (``--max-batch 1``), each level bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report import percentile, sample_percentile
from p2pinfer import AsyncClient, Client
from p2pinfer.cli.cluster import LocalCluster
from zoo.dataset import held_out
from zoo.manifest import read_manifest
from zoo.model_slice import load_slice

CASES = {"digits 8x8": "digits-cnn-w1", "64x64": "digits-resnet-w0.5"}


def in_process_ms(variant_name: str, sample: torch.Tensor, repeats: int) -> list[float]:
    torch.set_num_threads(1)
    variant = read_manifest().variant(variant_name)
    model = load_slice(variant)
    final = variant.exit_blocks[-1]
    samples = []
    for attempt in range(repeats + 10):
        started = time.perf_counter()
        model.exit_logits(final, model.run(sample))
        if attempt >= 10:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure_overhead(url: str, variant_name: str, requests: int) -> dict:
    variant = read_manifest().variant(variant_name)
    images, _ = held_out(tuple(variant.input_shape))
    sample = images[:1]
    compute = in_process_ms(variant_name, sample, requests)
    end_to_end = []
    node_compute = []  # what the node itself reports as compute (its executor, block by block)
    with Client(url) as client:
        for attempt in range(requests + 20):
            started = time.perf_counter()
            result = client.infer(sample.numpy(), deadline_ms=5000, family=variant.family, variant=variant_name)
            if attempt >= 20:
                end_to_end.append((time.perf_counter() - started) * 1000)
                node_compute.append(sum(timing.compute_ms for timing in result.timings))
    compute_p50 = statistics.median(compute)
    overhead = [value - compute_p50 for value in end_to_end]
    # end to end minus the node's own compute of that request: HTTP, wire, queueing, selection
    serving = [total - inside for total, inside in zip(end_to_end, node_compute, strict=True)]
    return {"variant": variant_name, "requests": requests, "compute_p50_ms": round(compute_p50, 3),
            "end_to_end_p50_ms": round(sample_percentile(end_to_end, 50), 3),
            "end_to_end_p99_ms": round(sample_percentile(end_to_end, 99), 3),
            "overhead_p50_ms": round(sample_percentile(overhead, 50), 3),
            "overhead_p99_ms": round(sample_percentile(overhead, 99), 3),
            "node_compute_p50_ms": round(sample_percentile(node_compute, 50), 3),
            "serving_overhead_p50_ms": round(sample_percentile(serving, 50), 3),
            "serving_overhead_p99_ms": round(sample_percentile(serving, 99), 3)}


async def throughput(url: str, variant_name: str, concurrency: int, requests: int, seconds: float) -> dict:
    variant = read_manifest().variant(variant_name)
    images, _ = held_out(tuple(variant.input_shape))
    latencies: list[float] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    sent = 0
    stop_at = time.monotonic() + seconds
    async with AsyncClient(url) as client:
        async def user(index: int) -> None:
            nonlocal sent, errors
            while sent < requests and time.monotonic() < stop_at:
                sent += 1
                started = time.perf_counter()
                try:
                    await client.infer(images[(index + sent) % len(images)].numpy(), deadline_ms=10000,
                                       family=variant.family, variant=variant_name)
                    latencies.append((time.perf_counter() - started) * 1000)
                except Exception as error:  # noqa: BLE001 - counted by kind, the benchmark goes on
                    errors += 1
                    kind = f"{type(error).__name__}: {getattr(error, 'code', '')}"
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*[user(index) for index in range(concurrency)])
        elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "completed": len(latencies), "errors": errors, "error_kinds": error_kinds,
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(p50, 2) if (p50 := percentile(latencies, 50)) is not None else None,
            "p99_ms": round(p99, 2) if (p99 := percentile(latencies, 99)) is not None else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--throughput-requests", type=int, default=400)
    parser.add_argument("--throughput-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    arguments = parser.parse_args(argv)
    report: dict = {"overhead": {}, "throughput": {}}
    with LocalCluster() as cluster:
        node = cluster.start(["--variants", ",".join(CASES.values())])
        for label, variant_name in CASES.items():
            report["overhead"][label] = measure_overhead(node.url, variant_name, arguments.requests)
            print(f"overhead {label:>10}: {report['overhead'][label]}")
    heavy = CASES["64x64"]
    for mode, max_batch in (("batching on", "8"), ("batching off", "1")):
        with LocalCluster() as cluster:
            node = cluster.start(["--variants", heavy, "--max-batch", max_batch, "--queue-capacity", "128"])
            rows = []
            for concurrency in (1, 8, 32):
                row = asyncio.run(throughput(node.url, heavy, concurrency, arguments.throughput_requests,
                                             arguments.throughput_seconds))
                rows.append(row)
                print(f"throughput {mode:>12} x{concurrency:<3}: {row}")
            report["throughput"][mode] = rows
    on = {row["concurrency"]: row["requests_per_s"] for row in report["throughput"]["batching on"]}
    off = {row["concurrency"]: row["requests_per_s"] for row in report["throughput"]["batching off"]}
    report["batching_gain"] = {str(c): round(on[c] / off[c], 2) if off[c] else None for c in on}
    report["target_overhead_p50_ms"] = 1.5
    print("batching gain (on/off requests per s):", report["batching_gain"])
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
