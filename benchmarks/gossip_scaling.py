"""``p2pinfer bench gossip-scaling``: does membership cost stay flat as the cluster grows?

Real ``p2pinfer node`` processes on loopback (4, 8 and 16 by default, idle, the default
gossip interval), each hosting the smallest variant. Once every node sees every other alive,
the benchmark reads each node's gossip byte counters (``/metrics``: every ``POST /v1/gossip``
is counted once where it is served, request and reply bytes) at the start and end of a
window, and the CPU seconds of the coordinator's process (the lowest node id holds the role)
and of the other nodes, with psutil. Writes ``gossip_scaling.json``:
``{"sizes": {"4": {"gossip_bytes_per_node_per_s", "coordinator_cpu", "node_cpu_median",
"host_cpu", ...}, ...}}``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from benchmarks.report import write_json

SIZES = (4, 8, 16)
WINDOW_S = 20.0
SETTLE_S = 3.0
MEMBERSHIP_TIMEOUT_S = 120.0
VARIANT = "digits-cnn-w0.25"
BYTE_KINDS = ("received_bytes", "replied_bytes")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read()


def gossip_bytes(metrics_text: str) -> float:
    """Request + reply bytes of the gossip exchanges this node served, from its /metrics."""
    total = 0.0
    for line in metrics_text.splitlines():
        for kind in BYTE_KINDS:
            if line.startswith(f'p2pinfer_gossip_events{{kind="{kind}"}}'):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _sees_everyone(url: str, count: int) -> bool:
    try:
        view = json.loads(_get(url + "/v1/peers"))
    except (OSError, ValueError):
        return False
    return sum(1 for peer in view["peers"] if peer["status"] == "alive") == count


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def measure(size: int, window_s: float, secret: str) -> dict[str, Any]:
    from p2pinfer.cli.cluster import start_node

    names = [f"g{index:02d}" for index in range(size)]  # g00 holds the coordinator role
    common = ["--secret", secret, "--variants", VARIANT, "--threads", "1"]
    first = start_node(["--node-id", names[0], *common], timeout_s=180)
    nodes = [first]
    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            nodes += list(pool.map(lambda name: start_node(["--node-id", name, *common, "--seed", first.address],
                                                           timeout_s=180), names[1:]))
        started = time.monotonic()
        while not all(_sees_everyone(node.url, size) for node in nodes):
            if time.monotonic() - started > MEMBERSHIP_TIMEOUT_S:
                raise RuntimeError(f"{size} nodes did not converge in {MEMBERSHIP_TIMEOUT_S:g} s")
            time.sleep(0.2)
        converged_s = time.monotonic() - started
        coordinator = json.loads(_get(nodes[-1].url + "/v1/peers"))["coordinator"]
        time.sleep(SETTLE_S)  # past the joins' burst of full-view syncs
        processes = {node.node_id: psutil.Process(node.process.pid) for node in nodes}
        bytes_before = {node.node_id: gossip_bytes(_get(node.url + "/metrics").decode()) for node in nodes}
        cpu_before = {name: _cpu_seconds(process) for name, process in processes.items()}
        psutil.cpu_percent(None)
        window_start = time.monotonic()
        time.sleep(window_s)  # the measurement window itself
        elapsed = time.monotonic() - window_start
        host_cpu = psutil.cpu_percent(None) / 100.0 * (psutil.cpu_count() or 1)
        bytes_after = {node.node_id: gossip_bytes(_get(node.url + "/metrics").decode()) for node in nodes}
        cpu = {name: (_cpu_seconds(process) - cpu_before[name]) / elapsed for name, process in processes.items()}
    finally:
        for node in nodes:
            node.kill()
    total_bytes = sum(bytes_after[name] - bytes_before[name] for name in bytes_after)
    others = [value for name, value in cpu.items() if name != coordinator]
    return {"nodes": size, "window_s": round(elapsed, 2), "converged_s": round(converged_s, 2),
            "coordinator": coordinator,
            "gossip_bytes_per_node_per_s": round(total_bytes / size / elapsed, 1),
            "coordinator_cpu": round(cpu.get(coordinator, 0.0), 4),
            "node_cpu_median": round(statistics.median(others), 4) if others else None,
            "run_cpu": round(sum(cpu.values()), 3), "host_cpu": round(host_cpu, 3),
            "cpu_count": psutil.cpu_count()}


def main(argv: Sequence[str]) -> int:
    """``p2pinfer bench gossip-scaling [--sizes 4,8,16] [--duration S] --out DIR``."""
    parser = argparse.ArgumentParser(prog="p2pinfer bench gossip-scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--duration", type=float, default=WINDOW_S, help="seconds of the measurement window")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args(list(argv[1:]))
    arguments.out.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    sizes: dict[str, Any] = {}
    for size in (int(text) for text in arguments.sizes.split(",")):
        sizes[str(size)] = measure(size, arguments.duration, secret)
        print(f"{size} nodes: " + ", ".join(f"{key} {value}" for key, value in sizes[str(size)].items()), flush=True)
    write_json(arguments.out / "gossip_scaling.json", {"variant": VARIANT, "gossip_interval_s": 0.5, "sizes": sizes})
    print(f"wrote {arguments.out / 'gossip_scaling.json'}")
    return 0


__all__ = ["gossip_bytes", "main", "measure"]
