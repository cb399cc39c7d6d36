"""An accelerated peer as a cluster member: issue 17's GPU figures, on real node processes.

    python -m benchmarks.accelerated_pair [--unit cuda:0] [--requests 300] [--deadline-ms 60]
                                          [--out benchmarks/results/accelerated-pair.json]

Why: a GPU peer that is fast in a micro-benchmark can still be a poor member: its first stage
paid lazy CUDA initialisation (the first requests from a Pi failed), its node added 3 ms of
Python to 0.57 ms of GPU work, and the bandit settled on a less accurate arm because its priors
came from CPU profiles (``/work/shared/measurements/h200-2026-11-30/``). Three measurements:

1. **The unit's node overhead**: a node serving ``--units UNIT`` and one serving ``--units cpu``
   (both native speed, ``digits-resnet-w1`` pinned, eager PyTorch on the CPU), sequential SDK
   requests: end-to-end p50 against the same forward timed in this process on that unit
   (synchronised). Target: the UNIT node's p50 <= its compute + the CPU node's overhead.
2. **A cold peer**: a fresh ``rpi4``-profile CPU entry and a fresh peer with ``--units UNIT``,
   ``--policy linucb``, ``digits-resnet``, ``--deadline-ms``, QoE weights on accuracy alone:
   failed requests, and those among the first ten (target: none).
3. **Where the bandit settles**: afterwards every arm is pinned for ``--arm-requests`` requests
   through the same entry; the most accurate arm answered on time in >= 90 % of them is the
   best, and arms within a point of its held-out accuracy are tied with it; the share of the
   bandit's requests from the 100th on that chose the best or a tied arm (target: settled,
   >= 80 %, within 100 requests), and the accuracy of the arms it chose.

Without a GPU, ``--unit cpu`` runs the same phases (a dry run of the script, the CPU as the
"accelerator"); the report names the unit, its backend and the host's CPU use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks.accelerator import forward_runner, time_ms
from p2pinfer.cli.cluster import NodeProcess, start_node
from p2pinfer.client import Client
from p2pinfer.errors import P2PError
from p2pinfer.testing import wait_until
from zoo.backend import Backend
from zoo.dataset import held_out
from zoo.manifest import read_manifest
from zoo.model_slice import load_slice

FAMILY = "digits-resnet"
PINNED_VARIANT = "digits-resnet-w1"
SECRET = "accelerated-pair"
ON_TIME_FOR_FEASIBLE = 0.9
SETTLED_SHARE = 0.8
SETTLE_WITHIN = 100
TIED_WITHIN = 0.01
"""Arms within a point of the best feasible arm's held-out accuracy count as it: the digits
held-out split has a few hundred samples, a point is a handful of them."""
ACCURACY_FIRST = {"accuracy": 1.0, "latency": 0.0, "energy": 0.0}
"""The QoE of "the most accurate arm that meets the deadline": accuracy alone, a miss costs the
reward (the default weights would trade accuracy points for milliseconds, another target)."""
JsonDict = dict[str, Any]


def unit_backend(unit: str) -> Backend:
    """What a node's unit runs blocks with (``--cpu-backend cpu-eager`` on the CPU)."""
    return Backend.cpu() if unit.startswith("cpu") else Backend.cuda(device=unit)


def in_process_compute_ms(unit: str, repeats: int = 50) -> float:
    """The pinned variant's forward on ``unit``, batch 1, in this process, synchronised: the
    work a node serving it cannot avoid."""
    variant = read_manifest().variant(PINNED_VARIANT)
    model = load_slice(variant, backend=unit_backend(unit))
    images, _ = held_out(tuple(variant.input_shape))
    torch.set_num_threads(1)
    with torch.inference_mode():
        return statistics.median(time_ms(forward_runner(model, None, images[:1]), repeats=repeats, warmup=10))


def node_p50_ms(unit: str, requests: int, samples: np.ndarray) -> JsonDict:
    node = start_node(["--units", unit, "--variants", PINNED_VARIANT, "--policy", "fixed", "--cpu-backend",
                       "cpu-eager"])
    try:
        latencies = []
        with Client(node.url) as client:
            for index in range(20 + requests):
                started = time.perf_counter()
                client.infer(samples[index % len(samples)][None], 5000.0, family=FAMILY, variant=PINNED_VARIANT)
                if index >= 20:
                    latencies.append((time.perf_counter() - started) * 1000)
        return {"p50_ms": round(statistics.median(latencies), 3), "requests": requests}
    finally:
        node.terminate(timeout_s=15)


def unit_overhead(unit: str, requests: int, samples: np.ndarray) -> JsonDict:
    units = [unit] if unit == "cpu" else [unit, "cpu"]
    rows: JsonDict = {}
    for name in units:
        compute = in_process_compute_ms(name)
        served = node_p50_ms(name, requests, samples)
        rows[name] = {"compute_ms": round(compute, 3), **served, "overhead_ms": round(served["p50_ms"] - compute, 3)}
        print(f"node on {name}: p50 {served['p50_ms']:.2f} ms for {compute:.2f} ms of compute", flush=True)
    if unit == "cpu":  # a dry run: the bound is the CPU node's own p50, nothing to compare
        return {"units": rows, "bound_ms": None, "target_met": None}
    bound = rows[unit]["compute_ms"] + rows["cpu"]["overhead_ms"]
    return {"units": rows, "bound_ms": round(bound, 3), "target_met": rows[unit]["p50_ms"] <= bound}


def start_pair(unit: str) -> tuple[NodeProcess, NodeProcess]:
    common = ["--secret", SECRET, "--variants", FAMILY, "--policy", "linucb", "--cpu-backend", "cpu-eager",
              "--gossip-interval", "0.2"]
    peer = start_node(["--node-id", "accelerated", "--units", unit, *common])
    try:
        entry = start_node(["--node-id", "pi", "--device-profile", "rpi4", "--seed", peer.address, *common])
    except BaseException:
        peer.terminate(timeout_s=15)
        raise
    return entry, peer


def peer_alive(client: Client, peer: str) -> bool:
    return any(record["node_id"] == peer and record["status"] == "alive" for record in client.peers()["peers"])


def ask(client: Client, sample: np.ndarray, deadline_ms: float, **pinned: Any) -> JsonDict:
    started = time.perf_counter()
    try:
        result = client.infer(sample[None], deadline_ms, family=FAMILY, user="robot", qoe=ACCURACY_FIRST, **pinned)
    except P2PError as error:
        return {"ok": False, "error": type(error).__name__, "latency_ms": (time.perf_counter() - started) * 1000}
    return {"ok": True, "arm": result.arm, "on_time": result.deadline_met, "latency_ms": result.latency_ms,
            "nodes": sorted({segment.node for segment in result.plan})}


def arm_accuracy() -> dict[str, float]:
    return {f"{variant.name}@{info.block}": info.accuracy for variant in read_manifest().variants_of(FAMILY)
            for info in variant.exits}


def pair_run(unit: str, requests: int, deadline_ms: float, arm_requests: int, samples: np.ndarray) -> JsonDict:
    entry, peer = start_pair(unit)
    try:
        with Client(entry.url) as client:
            wait_until(lambda: peer_alive(client, "accelerated"), timeout_s=30, message="the entry to see its peer")
            bandit = [ask(client, samples[index % len(samples)], deadline_ms) for index in range(requests)]
            pinned = {}
            for arm in arm_accuracy():
                variant, exit_block = arm.rsplit("@", 1)
                answers = [ask(client, samples[index % len(samples)], deadline_ms, variant=variant,
                               exit=int(exit_block)) for index in range(arm_requests)]
                pinned[arm] = sum(answer["ok"] and answer["on_time"] for answer in answers) / arm_requests
    finally:
        entry.terminate(timeout_s=15)
        peer.terminate(timeout_s=15)
    return settle_report(bandit, pinned, arm_accuracy())


def settle_report(bandit: Sequence[JsonDict], on_time_by_arm: dict[str, float], accuracy: dict[str, float]) -> JsonDict:
    """Failures (the cold start among them), the best feasible arm and how the bandit settled."""
    feasible = [arm for arm, share in on_time_by_arm.items() if share >= ON_TIME_FOR_FEASIBLE]
    best = max(feasible, key=lambda arm: accuracy[arm]) if feasible else None
    late = bandit[SETTLE_WITHIN:]
    chosen: list[str] = [answer["arm"] for answer in late if answer["ok"]]
    tied = sorted(arm for arm in feasible if best is not None and accuracy[arm] >= accuracy[best] - TIED_WITHIN)
    share = sum(arm == best for arm in chosen) / len(chosen) if chosen and best is not None else 0.0
    tied_share = sum(arm in tied for arm in chosen) / len(chosen) if chosen else 0.0
    failed = [index for index, answer in enumerate(bandit) if not answer["ok"]]
    return {
        "requests": len(bandit), "failed": len(failed), "failed_in_first_10": sum(index < 10 for index in failed),
        "failures": sorted({answer["error"] for answer in bandit if not answer["ok"]}),
        "on_time_share": round(sum(answer["ok"] and answer["on_time"] for answer in bandit) / max(len(bandit), 1), 4),
        "offloaded_share": round(sum("accelerated" in answer.get("nodes", []) for answer in bandit)
                                 / max(len(bandit), 1), 4),
        "arm_on_time_share": on_time_by_arm, "best_feasible_arm": best,
        "best_feasible_accuracy": accuracy.get(best) if best else None,
        f"share_on_best_from_request_{SETTLE_WITHIN}": round(share, 4),
        "arms_tied_with_best": tied, f"share_on_tied_from_request_{SETTLE_WITHIN}": round(tied_share, 4),
        "mean_accuracy_of_chosen_arms": round(statistics.fmean(accuracy[arm] for arm in chosen), 4) if chosen else None,
        "arms_chosen": {arm: chosen.count(arm) for arm in sorted(set(chosen))},
        "targets_met": {"no_failed_request": not failed, "settled_on_best": tied_share >= SETTLED_SHARE},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unit", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--overhead-requests", type=int, default=200)
    parser.add_argument("--arm-requests", type=int, default=15)
    parser.add_argument("--deadline-ms", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accelerated-pair.json"))
    arguments = parser.parse_args(argv)
    variant = read_manifest().variant(PINNED_VARIANT)
    images, _ = held_out(tuple(variant.input_shape))
    samples = images.numpy().astype(np.float32)
    psutil.cpu_percent(interval=None)
    host: JsonDict = {"cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in os.getloadavg()],
                      "machine": platform.machine(), "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    overhead = unit_overhead(arguments.unit, arguments.overhead_requests, samples)
    pair = pair_run(arguments.unit, arguments.requests, arguments.deadline_ms, arguments.arm_requests, samples)
    host["cpu_percent_during"] = psutil.cpu_percent(interval=None)
    host["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report = {"unit": arguments.unit, "backend": unit_backend(arguments.unit).label, "family": FAMILY,
              "deadline_ms": arguments.deadline_ms, "host": host, "unit_overhead": overhead, "pair": pair,
              "spread_note": "one run; repeat the script for a spread"}
    print(json.dumps({"unit_overhead": overhead, "pair": {key: value for key, value in pair.items()
                                                          if key != "arm_on_time_share"}}, indent=1))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
