"""What one offloaded request costs the node it enters and the peer that computes it.

Why: in ``bandwidth-trace`` the robots' requests enter a Pi and run on the edge; what they lose
against the oracle is mostly latency beyond their compute, queue and transfer (issue 16), and
every millisecond of Python per request on a node is a millisecond other requests wait for on a
busy device (issue 17). ``benchmarks.decision_time`` times the decision alone; this times the
whole request on real nodes.

What runs: two real nodes (an ``rpi4``-profile entry and an ``edge-server`` peer, both on the
CPU backend the machine has — ONNX Runtime where installed — hosting ``digits-resnet``, a signed
cluster) with an emulated 24 Mbit/s, 10 ms link between them, and one client sending robot
requests (60 ms deadline, QoE weights accuracy 0.5 / latency 1 / energy 0.1, ``min_accuracy``
0.85, ``adaptive-linucb``) one at a time, ``--gap-ms`` apart. Per round: each node's process CPU
per request (psutil, user + system; the same nodes' CPU over an idle second is subtracted at its
rate), the answered requests' median latency split into compute, transfer, queue and ``other``
(what no segment accounted for: both nodes' HTTP handling, the decision, encoding, signing, the
answer), and the share of requests that ran on the edge. Rounds start fresh nodes; with
``--compare CHECKOUT`` the same rounds run another checkout's nodes in turn. The figure is the
median over rounds, with min and max, and the host's CPU::

    python -m benchmarks.entry_cost [--rounds 3] [--requests 300] [--gap-ms 20] [--compare DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

FAMILY = "digits-resnet"
ROBOT_QOE = {"accuracy": 0.5, "latency": 1.0, "energy": 0.1}
DEADLINE_MS = 60.0
MIN_ACCURACY = 0.85
LINK = {"bandwidth_mbps": 24.0, "rtt_ms": 10.0}
PARTS = ("latency", "compute", "transfer", "queue", "other")
JsonDict = dict[str, Any]


def latency_parts(answer: Mapping[str, Any]) -> dict[str, float]:
    """One answer's latency and its parts (ms): compute, transfer and queue summed over its
    segments, and ``other``, what none of them accounts for."""
    timings = answer.get("timings") or []
    compute = sum(float(timing.get("compute_ms", 0.0)) for timing in timings)
    transfer = sum(float(timing.get("transfer_ms") or 0.0) for timing in timings)
    queue = sum(float(timing.get("queue_ms") or 0.0) for timing in timings)
    latency = float(answer["latency_ms"])
    return {"latency": latency, "compute": compute, "transfer": transfer, "queue": queue,
            "other": latency - compute - transfer - queue}


def summarize_round(answers: Sequence[Mapping[str, Any] | None], peer: str) -> JsonDict:
    """Medians of the answered requests' latency parts, and the share that ran on ``peer``."""
    answered = [answer for answer in answers if answer is not None]
    offloaded = [answer for answer in answered
                 if any(timing.get("node") == peer for timing in answer.get("timings") or [])]
    parts = [latency_parts(answer) for answer in answered]
    return {"answered": len(answered), "requests": len(answers),
            "offloaded_share": round(len(offloaded) / len(answered), 4) if answered else None,
            "median_ms": {part: round(statistics.median(row[part] for row in parts), 3) if parts else None
                          for part in PARTS}}


def _process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def _drive(entry_url: str, requests: int, gap_s: float, samples: np.ndarray,
                 pids: Mapping[str, int]) -> tuple[list[JsonDict | None], dict[str, float]]:
    from p2pinfer.client import infer_frame
    from p2pinfer.protocol.wire import CONTENT_TYPE

    async def one(session: aiohttp.ClientSession, index: int) -> JsonDict | None:
        parts, _ = infer_frame(samples[index % len(samples)][None], DEADLINE_MS, user="robot-0", qoe=ROBOT_QOE,
                               family=FAMILY, min_accuracy=MIN_ACCURACY)
        async with session.post(f"{entry_url}/v1/infer", data=b"".join(bytes(part) for part in parts),
                                headers={"Content-Type": CONTENT_TYPE}) as response:
            body = await response.read()
        return json.loads(body) if response.status == 200 else None

    async with aiohttp.ClientSession() as session:
        for index in range(min(100, requests)):  # the bandit's first tries and the links' first estimates
            await one(session, index)
        idle_before = {name: _process_cpu_s(pid) for name, pid in pids.items()}
        await asyncio.sleep(1.0)
        idle_rate = {name: _process_cpu_s(pid) - idle_before[name] for name, pid in pids.items()}
        before = {name: _process_cpu_s(pid) for name, pid in pids.items()}
        started = time.monotonic()
        answers = []
        for index in range(requests):
            answers.append(await one(session, index))
            if gap_s > 0:
                await asyncio.sleep(gap_s)
        elapsed = time.monotonic() - started
        cpu_ms = {name: round(max(_process_cpu_s(pid) - before[name] - idle_rate[name] * elapsed, 0.0)
                              * 1000 / requests, 3) for name, pid in pids.items()}
    return answers, cpu_ms


def run_round(checkout: Path, requests: int, gap_ms: float) -> JsonDict:
    """Fresh entry and peer nodes on ``checkout``'s code, ``requests`` robot requests."""
    from p2pinfer.cli.cluster import start_node
    from zoo.dataset import held_out
    from zoo.manifest import read_manifest

    with tempfile.TemporaryDirectory() as folder:
        links = Path(folder) / "links.json"
        links.write_text(json.dumps({"links": {"pi->edge": LINK, "edge->pi": LINK}, "seed": 1}))
        common = ["--secret", "entry-cost", "--variants", FAMILY, "--links", str(links), "--policy", "adaptive-linucb"]
        environment = {"PYTHONPATH": str(checkout.resolve())}
        edge = start_node(["--node-id", "edge", "--device-profile", "edge-server", *common], env=environment,
                          cwd=str(checkout))
        try:
            entry = start_node(["--node-id", "pi", "--device-profile", "rpi4", "--seed", edge.address,
                                *common], env=environment, cwd=str(checkout))
            try:
                asyncio.run(_wait_for_peer(entry.url, "edge"))
                variant = read_manifest().variants_of(FAMILY)[0]
                images, _ = held_out(tuple(variant.input_shape))
                samples = images.numpy().astype(np.float32)
                answers, cpu_ms = asyncio.run(_drive(entry.url, requests, gap_ms / 1000, samples,
                                                     {"entry": entry.process.pid, "peer": edge.process.pid}))
            finally:
                entry.terminate()
        finally:
            edge.terminate()
    return {"cpu_ms_per_request": cpu_ms, **summarize_round(answers, "edge")}


async def _wait_for_peer(url: str, peer: str, timeout_s: float = 30.0) -> None:
    from p2pinfer.testing import async_wait_until

    async with aiohttp.ClientSession() as session:
        async def alive() -> bool:
            async with session.get(f"{url}/v1/peers") as response:
                peers = (await response.json())["peers"]
            return any(record["node_id"] == peer and record["status"] == "alive" for record in peers)

        await async_wait_until(alive, timeout_s=timeout_s, interval_s=0.05, message=f"{url} to see {peer} alive")


def combine(rounds: Sequence[JsonDict]) -> JsonDict:
    """Median [min, max] over rounds of every figure."""
    from benchmarks.seed_sweep import spread

    return {"cpu_ms_per_request": {name: spread([one["cpu_ms_per_request"][name] for one in rounds])
                                   for name in ("entry", "peer")},
            "median_ms": {part: spread([one["median_ms"][part] for one in rounds]) for part in PARTS},
            "offloaded_share": spread([one["offloaded_share"] for one in rounds]),
            "answered": [one["answered"] for one in rounds], "requests": [one["requests"] for one in rounds]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between one answer and the next request")
    parser.add_argument("--compare", type=Path, default=None, help="another checkout to run in the same rounds")
    parser.add_argument("--out", type=Path, default=None)
    arguments = parser.parse_args(argv)

    from benchmarks.scale_out import CpuMeter

    here = Path(__file__).resolve().parent.parent
    checkouts = {"current": here} | ({"compared": arguments.compare} if arguments.compare else {})
    rounds: dict[str, list[JsonDict]] = {name: [] for name in checkouts}
    with CpuMeter() as cpu:
        for _ in range(arguments.rounds):
            for name, checkout in checkouts.items():
                rounds[name].append(run_round(checkout, arguments.requests, arguments.gap_ms))
    result: JsonDict = {
        "benchmark": "entry_cost", "created": time.strftime("%Y-%m-%d %H:%M:%S"), "family": FAMILY,
        "policy": "adaptive-linucb", "link": LINK, "deadline_ms": DEADLINE_MS, "qoe": ROBOT_QOE,
        "rounds": arguments.rounds, "requests_per_round": arguments.requests, "gap_ms": arguments.gap_ms,
        "host": cpu.summary(), "checkouts": {name: str(path) for name, path in checkouts.items()},
        "results": {name: combine(per_round) for name, per_round in rounds.items()},
        "per_round": rounds,
    }
    print(f"one offloaded robot request, median [min, max] of {arguments.rounds} rounds; host CPU "
          f"{result['host']['host_cpu']} cores busy of {result['host']['cpu_count']}")
    for name, figures in result["results"].items():
        cpu_cells = "  ".join(f"{node} CPU {cell['median']:.2f} [{cell['min']:.2f}, {cell['max']:.2f}] ms"
                              for node, cell in figures["cpu_ms_per_request"].items())
        parts = "  ".join(f"{part} {cell['median']:.1f}" for part, cell in figures["median_ms"].items())
        print(f"  {name:9s} {cpu_cells}  |  {parts} ms  |  offloaded {figures['offloaded_share']['median']}")
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
