"""A paired A/B of two checkouts of p2pinfer: both nodes under the same load at the same time.

    python -m benchmarks.paired_ab OTHER_CHECKOUT [--backend onnxruntime|cpu-eager] [--max-batch 1]
                                   [--route native|oip] [--repeats 8] [--seconds 4] [--clients 4] [--rate R]
                                   [--out benchmarks/results/paired-ab.json]

Why: on this shared 2-core host, the interleaved rounds of ``benchmarks.overhead --compare``
(one server at a time) move by 20-40 % from one round to the next (session 19: the same two
checkouts measured 0.91x-1.43x in five rounds), so a change worth 5 % cannot be told from
noise. Here a node from this checkout and one from ``OTHER_CHECKOUT`` (e.g. a ``git worktree``
of the previous commit) answer ``--clients`` concurrent clients each, both at once, for
``--seconds``, ``--repeats`` times, through the native route or the Open Inference one
(``--route oip``, as ``benchmarks.overhead`` sends it): whatever the host does in a repeat, it does to both. Each
repeat gives this/other for CPU per request (each node process's user + system time over the
repeat) and for requests/s; the report keeps their median and [min, max] (session 19: an A/A
run spread over 0.97-1.02). Both nodes share the cores, so absolute figures are not a single
node's (CPU per request is ~2x ``benchmarks.overhead``'s: caches are colder); the ratio is what
this measures, and a ratio here is checked against ``benchmarks.overhead`` before it is quoted
as requests/s against the floor. ``--rate R`` offers each node R requests/s on a schedule instead
(``benchmarks.overhead.paced``): the A/B at a partial load, where a node's extra CPU per request
is largest (session 20), with p50 latency too; repeats where a node fell behind are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks.overhead import FRAME, OIP, VARIANT, ServerWire, concurrent, held_out_samples, paced
from p2pinfer.cli.cluster import NodeProcess, start_node

JsonDict = dict[str, Any]
ROUTES: dict[str, ServerWire] = {"native": FRAME, "oip": OIP}


def host_busy_percent(before: Any, after: Any) -> float:
    """The share of all cores busy between two ``psutil.cpu_times()`` (not ``cpu_percent``,
    whose reference point the load's own phases move)."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return round(100.0 * (1.0 - idle / total), 1) if total > 0 else 0.0


def paired_ratios(rows: list[JsonDict]) -> JsonDict:
    """This checkout's node over the other's, per repeat: CPU per request and requests/s,
    median and [min, max] over the repeats (below 1 for CPU: this checkout is cheaper). Paced
    repeats (``--rate``) also give p50 latency, and count only where both nodes kept up (at a
    rate one of them could not serve, its CPU per request is a saturated node's)."""
    is_paced = bool(rows) and "sustained" in rows[0]["this"]
    compared = [row for row in rows if not is_paced or (row["this"]["sustained"] and row["other"]["sustained"])]
    labels = [("server_cpu_ms_per_request", "cpu_per_request"), ("requests_per_s", "requests_per_s")]
    if is_paced:
        labels.append(("p50_ms", "p50"))
    report: JsonDict = {"repeats_compared": len(compared)}
    if not compared:
        return report
    for key, label in labels:
        ratios = [row["this"][key] / row["other"][key] for row in compared]
        report[label] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                         "max": round(max(ratios), 3), "per_repeat": [round(ratio, 3) for ratio in ratios]}
    return report


async def drive(nodes: dict[str, NodeProcess], repeats: int, seconds: float, clients: int,
                wire: ServerWire = FRAME, rate: float | None = None) -> list[JsonDict]:
    samples, family = held_out_samples()
    processes = {name: psutil.Process(node.process.pid) for name, node in nodes.items()}
    rows: list[JsonDict] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients * 4)) as session:

        async def one(name: str, duration_s: float, phase: float) -> JsonDict:
            if rate is None:
                return await concurrent(session, nodes[name].url, samples, family, clients, duration_s,
                                        processes[name], wire)
            row = await paced(session, nodes[name].url, samples, family, clients, rate, duration_s,
                              processes[name], wire, phase=phase)
            return {**row, "server_cpu_ms_per_request": row["server_cpu_us_per_request"] / 1000}

        async def both(duration_s: float, first: str = "this") -> list[JsonDict]:
            """Both loads at once; paced, the node named ``first`` gets the schedule and the other
            the same shifted by half an interval (due at the same instants, the one whose request
            left first was answered first: an A/A run read 0.85x the p50)."""
            phases = {"this": 0.0, "other": 0.5} if first == "this" else {"this": 0.5, "other": 0.0}
            return list(await asyncio.gather(*[one(name, duration_s, phases[name]) for name in ("this", "other")]))

        await both(min(seconds, 2.0))  # connections, caches and the nodes' warm paths: not measured
        for repeat in range(repeats):
            before = psutil.cpu_times()
            this, other = await both(seconds, first="this" if repeat % 2 == 0 else "other")  # each leads half
            rows.append({"repeat": repeat, "this": this, "other": other,
                         "host_cpu_percent": host_busy_percent(before, psutil.cpu_times())})
            print(f"repeat {repeat}: req/s {this['requests_per_s']:.0f} / {other['requests_per_s']:.0f}, CPU per "
                  f"request {this['server_cpu_ms_per_request'] * 1000:.0f} / "
                  f"{other['server_cpu_ms_per_request'] * 1000:.0f} us, host {rows[-1]['host_cpu_percent']:.0f} %",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="another checkout of p2pinfer (e.g. a git worktree)")
    parser.add_argument("--backend", default="onnxruntime", choices=("cpu-eager", "onnxruntime"))
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--route", default="native", choices=ROUTES,
                        help="the node's native /v1/infer, or its Open Inference /v2/models/{family}/infer")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per node")
    parser.add_argument("--rate", type=float, default=None,
                        help="offer each node this many requests/s on a schedule (benchmarks.overhead's paced "
                             "phase) instead of saturating it: CPU per request and p50 at equal, partial load")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paired-ab.json"))
    arguments = parser.parse_args(argv)
    if arguments.rate is not None and arguments.rate <= 0:
        parser.error(f"--rate must be positive, got {arguments.rate}")
    if not (arguments.other / "p2pinfer" / "__init__.py").exists():
        parser.error(f"{arguments.other} is not a checkout of p2pinfer (no p2pinfer/__init__.py)")
    common = ["--variants", VARIANT, "--policy", "fixed", "--queue-capacity", "256",
              "--cpu-backend", arguments.backend, "--max-batch", str(arguments.max_batch)]
    other = arguments.other.resolve()
    nodes: dict[str, NodeProcess] = {}
    try:
        nodes["this"] = start_node(common)
        nodes["other"] = start_node(common, env={"PYTHONPATH": str(other)}, cwd=str(other))
        load_before = [round(value, 2) for value in psutil.getloadavg()]
        rows = asyncio.run(drive(nodes, arguments.repeats, arguments.seconds, arguments.clients,
                                 ROUTES[arguments.route], arguments.rate))
    finally:
        for node in nodes.values():
            node.terminate(timeout_s=15)
    report = {"other": str(other), "backend": arguments.backend, "max_batch": arguments.max_batch,
              "route": arguments.route, "rate": arguments.rate,
              "repeats": arguments.repeats, "seconds": arguments.seconds, "clients_per_node": arguments.clients,
              "host": {"cpu_count": psutil.cpu_count(), "load_average_before": load_before,
                       "host_cpu_percent_median": round(statistics.median(row["host_cpu_percent"] for row in rows), 1)},
              "this_over_other": paired_ratios(rows), "per_repeat": rows}
    ratios = report["this_over_other"]
    print(f"this / other, {ratios['repeats_compared']} repeats: " + ", ".join(
        f"{label} {value['median']:.3f} [{value['min']:.3f}, {value['max']:.3f}]"
        for label, value in ratios.items() if isinstance(value, dict)))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
