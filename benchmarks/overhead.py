"""Serving overhead: a p2pinfer node against the serving floor, in one run, on one host.

    python -m benchmarks.overhead [--rounds 3] [--requests 300] [--seconds 5] [--clients 8]
                                  [--profile] [--compare CHECKOUT] [--backend cpu-eager|onnxruntime]
                                  [--node-backend ...] [--peers litserve,ray-serve,pytriton]
                                  [--paced-rates 1000,2000,3000] [--out benchmarks/results/overhead.json]

Three servers answer the same binary frames for the same tiny variant (digits-cnn-w1, the
arm pinned): the floor (``benchmarks.serving_floor``: one aiohttp route, the model inline),
a node without micro-batching (``--max-batch 1``) and a node with it (``--max-batch 8``); the
unbatched node is also asked through its Open Inference route (``p2pinfer-oip``: the same input
as ``FP32`` in Triton's binary tensor extension, as a KServe v2 client sends it).
Rounds interleave the servers (a noisy shared host drifts; interleaving spreads the drift
over all of them), and the report keeps each figure's median over rounds:
- batch 1: p50/p99 of sequential requests, and the server's CPU ms per request (its
  process's user + system time over the phase: less noisy than wall time);
- ``--clients`` concurrent clients for ``--seconds``: requests/s (each server saturated);
- each of ``--paced-rates`` offered on a fixed schedule for ``--seconds`` (``paced``): CPU per
  request and latency at that load, and ``extra_cpu_us_at_rate``, a node's CPU per request
  above the floor's at the same rate (a saturated loop costs less per request than one at
  partial load, so the saturated figures compare each server at a different load).
Ratios to the floor are the figures of issue 17 (p50 <= 2x, requests/s >= 0.8x without
batching and >= 1x with it). Host CPU use (all cores, psutil) is reported per phase: on a
shared machine a round with a busy neighbour shows up there. ``--backend`` runs the floor and
the nodes on the same backend (the fair ratio: the same model, run the same way);
``--node-backend`` then gives the nodes another one (what a user gains from it, not overhead).
``--profile`` then runs one more node under cProfile and reports where its process spends time per request;
``--sample-cpu`` one more node and one more floor under ``benchmarks.cpu_sampler`` and the 8-client load:
their CPU per request by function, side by side for the functions both run, sampled on CPU time
(cProfile inflates calls; a wall-clock sampler counts waits for the CPU).
``--peers`` adds other Python serving frameworks running the floor's model (``benchmarks.serving_peers``:
LitServe, Ray Serve, PyTriton; the ``bench-peers`` extra) to the same rounds, each started for its own
phase only (Ray's idle processes would load the others'); their CPU per request counts their
worker processes (every child of the server's process).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import pstats
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from benchmarks.report import sample_percentile
from benchmarks.serving_peers import PEERS, floor_label, v2_binary_request, v2_label
from p2pinfer.cli.cluster import NodeProcess, start_node
from p2pinfer.client import infer_frame
from p2pinfer.protocol.wire import CONTENT_TYPE
from zoo.dataset import held_out
from zoo.manifest import read_manifest

VARIANT = "digits-cnn-w1"
TARGETS = {"p50_ratio_max": 2.0, "rps_ratio_unbatched_min": 0.8, "rps_ratio_batched_min": 1.0}
JsonDict = dict[str, Any]


def held_out_samples() -> tuple[np.ndarray, str]:
    """The benchmarked variant's held-out inputs (float32, one row each) and its family: what
    every phase's clients send."""
    variant = read_manifest().variant(VARIANT)
    images, _ = held_out(tuple(variant.input_shape))
    return images.numpy().astype(np.float32), variant.family


def request_body(sample: np.ndarray, family: str) -> bytes:
    parts, _ = infer_frame(sample, deadline_ms=5000, family=family, variant=VARIANT)
    return b"".join(bytes(part) for part in parts)


def oip_request(sample: np.ndarray, family: str) -> tuple[bytes, dict[str, str]]:
    """The same request as a KServe v2 client sends it to a node's ``/v2/models/{family}/infer``:
    the input as ``FP32`` in Triton's binary tensor extension, the deadline and the pinned variant
    in ``parameters``, a fresh ``id`` (the SDK's frames carry one too: both routes deduplicate)."""
    raw = np.ascontiguousarray(sample, dtype=np.float32).tobytes()
    return v2_binary_request({"id": uuid.uuid4().hex, "parameters": {"deadline_ms": 5000, "variant": VARIANT},
                              "inputs": [{"name": "input", "shape": list(sample.shape), "datatype": "FP32",
                                          "parameters": {"binary_data_size": len(raw)}}]}, raw)


@dataclass(frozen=True)
class ServerWire:
    """How one server takes a request: the frame as is on ``/v1/infer`` (the floor, the nodes,
    Ray Serve), in the envelope its framework parses (LitServe: JSON), as a whole request built
    from the frame (PyTriton: a KServe v2 ``BYTES`` input on its own route) or from the sample
    itself (a node's Open Inference route); and where its answer says the label. ``path`` may
    name ``{family}``."""

    content_type: str = CONTENT_TYPE
    envelope: Callable[[bytes], bytes] | None = None
    path: str = "/v1/infer"
    frame_request: Callable[[bytes], tuple[bytes, dict[str, str]]] | None = None
    label: Callable[[Any], int] = floor_label
    sample_request: Callable[[np.ndarray, str], tuple[bytes, dict[str, str]]] | None = None

    def request(self, sample: np.ndarray, family: str) -> tuple[bytes, dict[str, str]]:
        """The body and the headers of one request for ``sample``."""
        if self.sample_request is not None:
            return self.sample_request(sample, family)
        frame = request_body(sample, family)
        if self.frame_request is not None:
            return self.frame_request(frame)
        return (frame if self.envelope is None else self.envelope(frame)), {"Content-Type": self.content_type}

    def body(self, sample: np.ndarray, family: str) -> bytes:
        return self.request(sample, family)[0]

    def route(self, family: str) -> str:
        return self.path.format(family=family)


FRAME = ServerWire()
OIP = ServerWire(path="/v2/models/{family}/infer", label=v2_label, sample_request=oip_request)
PEER_WIRES = {name: ServerWire(peer.content_type, peer.envelope, peer.path, peer.request, peer.label)
              for name, peer in PEERS.items()}
PEER_MODULES = {name: peer.module for name, peer in PEERS.items()}
ROUTE_PHASES = {"p2pinfer-oip": ("p2pinfer", OIP)}
"""Phases that ask a node already up through another route: the unbatched node's Open Inference
route (KServe v2 clients' way in), measured like the native one."""
SERVER_WIRES = {**PEER_WIRES, **{name: wire for name, (_, wire) in ROUTE_PHASES.items()}}


def missing_peers(peers: Sequence[str]) -> dict[str, str]:
    """The asked-for peers this interpreter cannot run, with why (they are an optional extra)."""
    return {peer: f"{PEER_MODULES[peer]} is not installed: pip install -e '.[bench-peers]'"
            for peer in peers if importlib.util.find_spec(PEER_MODULES[peer].split(".")[0]) is None}


def start_peer(peer: str, backend: str) -> NodeProcess:
    """Another framework serving the floor's model (``benchmarks.serving_peers``)."""
    return start_node(["--variant", VARIANT, "--backend", backend], timeout_s=180.0,
                      launcher=("-m", "benchmarks.serving_peers", peer))


def start_servers(compare: Path | None = None, backend: str = "cpu-eager",
                  node_backend: str | None = None, floor_event_loop: str = "asyncio") -> dict[str, NodeProcess]:
    """The floor and two nodes; with ``compare``, the same two nodes (``--max-batch 1`` and 8)
    run from another checkout of p2pinfer (e.g. a git worktree of the previous commit), for an
    A/B of a change within one run."""
    common = ["--variants", VARIANT, "--policy", "fixed", "--queue-capacity", "256"]
    node_arguments = [*common, "--cpu-backend", node_backend or backend]
    servers = {
        "floor": start_node(["--variant", VARIANT, "--backend", backend, "--event-loop", floor_event_loop],
                            launcher=("-m", "benchmarks.serving_floor")),
        "p2pinfer": start_node([*node_arguments, "--max-batch", "1"]),
        "p2pinfer-batching": start_node([*node_arguments, "--max-batch", "8"]),
    }
    if compare is not None:  # the compared checkout must know --cpu-backend (session 10 on): its default is auto
        for name, max_batch in (("p2pinfer-compared", "1"), ("p2pinfer-batching-compared", "8")):
            servers[name] = start_node([*node_arguments, "--max-batch", max_batch],
                                       env={"PYTHONPATH": str(compare.resolve())}, cwd=str(compare))
    return servers


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + sum(child.cpu_times().user + child.cpu_times().system
                                          for child in process.children(recursive=True))


async def sequential(session: aiohttp.ClientSession, url: str, sample: np.ndarray, family: str,
                     requests: int, process: psutil.Process, wire: ServerWire = FRAME) -> JsonDict:
    for _ in range(20):  # connection and caches, not measured
        await post(session, url, *wire.request(sample, family), path=wire.route(family))
    latencies = []
    psutil.cpu_percent(interval=None)
    cpu_before = cpu_seconds(process)
    for _ in range(requests):
        body, headers = wire.request(sample, family)
        started = time.perf_counter()
        await post(session, url, body, headers, path=wire.route(family))
        latencies.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": sample_percentile(latencies, 50), "p99_ms": sample_percentile(latencies, 99),
            "server_cpu_ms_per_request": (cpu_seconds(process) - cpu_before) * 1000 / requests,
            "host_cpu_percent": psutil.cpu_percent(interval=None)}


async def concurrent(session: aiohttp.ClientSession, url: str, samples: np.ndarray, family: str, clients: int,
                     seconds: float, process: psutil.Process, wire: ServerWire = FRAME) -> JsonDict:
    completed = 0
    stop_at = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal completed
        position = index
        while time.monotonic() < stop_at:
            position += clients
            await post(session, url, *wire.request(samples[position % len(samples)][None], family),
                       path=wire.route(family))
            completed += 1

    psutil.cpu_percent(interval=None)
    cpu_before = cpu_seconds(process)
    started = time.perf_counter()
    await asyncio.gather(*[client(index) for index in range(clients)])
    elapsed = time.perf_counter() - started
    return {"requests_per_s": completed / elapsed, "completed": completed,
            "server_cpu_ms_per_request": (cpu_seconds(process) - cpu_before) * 1000 / max(completed, 1),
            "host_cpu_percent": psutil.cpu_percent(interval=None)}


SUSTAINED_SHARE = 0.95
"""A paced phase is sustained when every scheduled request was answered, at no less than this
share of the offered rate, and its clients sent on time (the median request left at most one
client's interval, ``clients / rate``, after its due time): otherwise the server fell behind
the schedule (session 20: a node answering 3,988 of 4,000 offered per second, but queueing, its
requests sent 20 ms late at the median), and its CPU per request is a saturated server's, not
one at that load."""


def kept_up(rate: float, clients: int, scheduled: int, completed: int, achieved_per_s: float,
            sent_late_p50_ms: float) -> bool:
    """Whether a paced phase is a load the server kept up with (``SUSTAINED_SHARE``)."""
    return (completed == scheduled and achieved_per_s >= SUSTAINED_SHARE * rate
            and sent_late_p50_ms <= clients / rate * 1000)


async def paced(session: aiohttp.ClientSession, url: str, samples: np.ndarray, family: str, clients: int,
                rate: float, seconds: float, process: psutil.Process, wire: ServerWire = FRAME,
                phase: float = 0.0) -> JsonDict:
    """``rate`` requests/s offered on a fixed schedule for ``seconds`` (request k is due at
    start + k / rate; ``clients`` connections take turns): the server's CPU per request and
    latency *at a given load*, where ``concurrent`` measures it saturated.

    Why: a saturated event loop is a cheaper server per request than one at partial load (it
    finds its code and data still in the caches between requests: the floor, session 20, 133 us
    per request saturated at ~7,400 req/s against 186 at 4,000 and 272 at 1,000 offered), so the
    closed-loop ratio of requests/s sets a node at its own saturation point
    against a floor at a higher, cheaper one. Compared at the same offered rate, the
    difference is what a node's request path adds. Latency counts from each request's due
    time, not from when it was sent (a client held up by a slow answer sends late: that wait
    is the server's too). Bounded: ``rate * seconds`` requests, and the phase gives up after
    twice ``seconds`` plus one (a server far slower than the schedule). ``phase``: the schedule
    shifted by that fraction of one request's interval (two paced loads from one client
    process, ``benchmarks.paired_ab --rate``, must not fall due at the same instants)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"a paced phase needs a positive rate and duration, got {rate}/s for {seconds} s")
    total = max(int(rate * seconds), clients)
    latencies: list[float] = []
    lateness: list[float] = []  # how long after its due time each request left
    started = time.perf_counter() + 0.01 + phase / rate
    give_up = started + 2 * seconds + 1.0

    async def client(index: int) -> None:
        for number in range(index, total, clients):
            body, headers = wire.request(samples[number % len(samples)][None], family)
            due = started + number / rate
            now = time.perf_counter()
            if now >= give_up:
                return
            if due > now:
                await asyncio.sleep(due - now)
            lateness.append((time.perf_counter() - due) * 1000)
            await post(session, url, body, headers, path=wire.route(family))
            latencies.append((time.perf_counter() - due) * 1000)

    psutil.cpu_percent(interval=None)
    cpu_before = cpu_seconds(process)
    await asyncio.gather(*[client(index) for index in range(clients)])
    elapsed = time.perf_counter() - started
    completed = len(latencies)
    achieved = completed / elapsed
    sent_late_p50_ms = sample_percentile(lateness, 50) if lateness else math.inf
    return {"offered_per_s": rate, "requests_per_s": round(achieved, 1), "completed": completed,
            "sent_late_p50_ms": round(sent_late_p50_ms, 3),
            "sustained": kept_up(rate, clients, total, completed, achieved, sent_late_p50_ms),
            "server_cpu_us_per_request": round((cpu_seconds(process) - cpu_before) * 1e6 / max(completed, 1), 1),
            "p50_ms": sample_percentile(latencies, 50) if latencies else None,
            "p99_ms": sample_percentile(latencies, 99) if latencies else None,
            "host_cpu_percent": psutil.cpu_percent(interval=None)}


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str] | None = None,
               path: str = "/v1/infer") -> None:
    async with session.post(f"{url}{path}", data=body,
                            headers=headers or {"Content-Type": CONTENT_TYPE}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {await response.text()}")


async def run_rounds(servers: dict[str, NodeProcess], rounds: int, requests: int, seconds: float,
                     clients: int, peers: Sequence[str] = (), backend: str = "cpu-eager",
                     paced_rates: Sequence[float] = ()) -> dict[str, list[JsonDict]]:
    """Interleaved rounds over ``servers`` (up throughout) and ``peers``, each peer started
    for its own phase only: Ray's raylet and GCS keep a fifth of a core busy when idle, and
    would load every other server's phase. Each phase ends with one paced load per rate of
    ``paced_rates`` (``paced``)."""
    samples, family = held_out_samples()
    routes = [name for name, (node, _) in ROUTE_PHASES.items() if node in servers]
    phases = [*servers, *routes, *peers]
    results: dict[str, list[JsonDict]] = {name: [] for name in phases}
    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for round_index in range(rounds):
            order = phases if round_index % 2 == 0 else list(reversed(phases))
            for name in order:
                if name in ROUTE_PHASES:
                    server = servers[ROUTE_PHASES[name][0]]
                else:
                    server = servers[name] if name in servers else start_peer(name, backend)
                try:
                    row = await _phase(session, server, name, round_index, requests, seconds, clients, samples,
                                       family, paced_rates)
                finally:
                    if name in peers:
                        server.terminate(timeout_s=30)
                results[name].append(row)
                print(f"round {round_index} {name:>18}: p50 {row['batch1']['p50_ms']:.3f} ms, "
                      f"{row[f'clients{clients}']['requests_per_s']:.0f} req/s, host cpu "
                      f"{row['batch1']['host_cpu_percent']:.0f}%/{row[f'clients{clients}']['host_cpu_percent']:.0f}%",
                      flush=True)
    return results


async def _phase(session: aiohttp.ClientSession, server: NodeProcess, name: str, round_index: int, requests: int,
                 seconds: float, clients: int, samples: np.ndarray, family: str,
                 paced_rates: Sequence[float] = ()) -> JsonDict:
    process = psutil.Process(server.process.pid)
    wire = SERVER_WIRES.get(name, FRAME)
    row = {"round": round_index,
           "batch1": await sequential(session, server.url, samples[:1], family, requests, process, wire),
           f"clients{clients}": await concurrent(session, server.url, samples, family, clients, seconds, process,
                                                 wire)}
    if paced_rates:
        row["paced"] = [await paced(session, server.url, samples, family, clients, rate, seconds, process, wire)
                        for rate in paced_rates]
    return row


def round_ratios(rows: dict[str, list[JsonDict]], clients: int) -> JsonDict:
    """Each server's p50 and requests/s over the floor's in the same round: median, min and max
    over the rounds (the spread the README quotes)."""
    phase = f"clients{clients}"
    report: JsonDict = {}
    for name, server_rows in rows.items():
        if name == "floor":
            continue
        pairs = list(zip(server_rows, rows["floor"], strict=True))
        for label, ratios in (
                ("p50_vs_floor", [row["batch1"]["p50_ms"] / floor["batch1"]["p50_ms"] for row, floor in pairs]),
                ("rps_vs_floor", [row[phase]["requests_per_s"] / floor[phase]["requests_per_s"]
                                  for row, floor in pairs])):
            report.setdefault(name, {})[label] = {"median": round(statistics.median(ratios), 3),
                                                  "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    return report


def medians(rows: list[JsonDict], clients: int) -> JsonDict:
    def median(phase: str, key: str) -> float:
        return round(statistics.median(row[phase][key] for row in rows), 3)

    phase = f"clients{clients}"
    return {"p50_ms": median("batch1", "p50_ms"), "p99_ms": median("batch1", "p99_ms"),
            "server_cpu_ms_per_request": median("batch1", "server_cpu_ms_per_request"),
            "requests_per_s": median(phase, "requests_per_s"),
            "server_cpu_ms_per_request_concurrent": median(phase, "server_cpu_ms_per_request")}


def extra_cpu_us(summary: dict[str, JsonDict]) -> dict[str, float]:
    """Each server's CPU per request under the concurrent load above the floor's, in µs: what
    its request path adds in absolute terms. The req/s ratios depend on the host's speed (on a
    faster CPU the floor's own cost shrinks more than the node's, whose extra work waits on
    memory more than it computes); this figure is comparable across hosts and sessions."""
    floor = summary["floor"]["server_cpu_ms_per_request_concurrent"]
    return {name: round((row["server_cpu_ms_per_request_concurrent"] - floor) * 1000, 1)
            for name, row in summary.items() if name != "floor"}


def paced_medians(rows: dict[str, list[JsonDict]]) -> JsonDict:
    """Per server and offered rate: medians over the rounds of its achieved rate, CPU per
    request and latency (from due time), and in how many rounds it kept up."""
    report: JsonDict = {}
    for name, server_rows in rows.items():
        by_rate: dict[float, list[JsonDict]] = {}
        for row in server_rows:
            for phase in row.get("paced", []):
                by_rate.setdefault(phase["offered_per_s"], []).append(phase)
        report[name] = {
            f"{rate:g}": {"requests_per_s": round(statistics.median(phase["requests_per_s"] for phase in phases), 1),
                          "server_cpu_us_per_request": round(statistics.median(
                              phase["server_cpu_us_per_request"] for phase in phases), 1),
                          "p50_ms": _median_of_known(phase["p50_ms"] for phase in phases),
                          "p99_ms": _median_of_known(phase["p99_ms"] for phase in phases),
                          "sustained_rounds": sum(bool(phase["sustained"]) for phase in phases),
                          "rounds": len(phases)}
            for rate, phases in sorted(by_rate.items())}
    return report


def _median_of_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 3) if known else None


def extra_cpu_us_at_rates(rows: dict[str, list[JsonDict]]) -> JsonDict:
    """Each server's CPU per request above the floor's at the same offered rate, in µs: per
    round (the server and the floor of that round, both sustained), then median, min and max
    over the rounds; a rate at which no round had both keeping up reports ``rounds: 0``. What
    a request path adds at equal load (``paced``), where ``extra_cpu_us`` compares each at its
    own saturation."""
    floor_rows = rows.get("floor", [])
    report: JsonDict = {}
    for name, server_rows in rows.items():
        if name == "floor":
            continue
        differences: dict[float, list[float]] = {}
        for row, floor in zip(server_rows, floor_rows, strict=False):
            floor_by_rate = {phase["offered_per_s"]: phase for phase in floor.get("paced", [])}
            for phase in row.get("paced", []):
                rate = phase["offered_per_s"]
                differences.setdefault(rate, [])
                floor_phase = floor_by_rate.get(rate)
                if floor_phase is None or not (phase["sustained"] and floor_phase["sustained"]):
                    continue
                differences[rate].append(phase["server_cpu_us_per_request"] - floor_phase["server_cpu_us_per_request"])
        report[name] = {f"{rate:g}": ({"median": round(statistics.median(values), 1), "min": round(min(values), 1),
                                       "max": round(max(values), 1), "rounds": len(values)} if values else
                                      {"rounds": 0})
                        for rate, values in sorted(differences.items())}
    return report


def profile_node(requests: int, top: int = 30) -> JsonDict:
    """One more node, in this process with its event loop in a thread of its own, under
    cProfile while it answers ``requests`` sequential requests: the event loop's own time per
    request, by function and by package (the executor's worker thread is not profiled)."""
    import cProfile
    import threading

    from p2pinfer.runtime.node import Node, NodeConfig

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="profiled-node", daemon=True)
    thread.start()
    node = Node(NodeConfig(variants=VARIANT, policy="fixed", max_batch=1, cpu_backend="cpu-eager"))
    asyncio.run_coroutine_threadsafe(node.start(), loop).result(timeout=120)
    profiler = cProfile.Profile()

    async def switch(on: bool) -> None:
        profiler.enable() if on else profiler.disable()

    try:
        variant = read_manifest().variant(VARIANT)
        images, _ = held_out(tuple(variant.input_shape))

        async def drive(count: int) -> None:
            async with aiohttp.ClientSession() as session:
                for _ in range(count):
                    await post(session, node.url, request_body(images[:1].numpy(), variant.family))

        asyncio.run(drive(20))
        asyncio.run_coroutine_threadsafe(switch(True), loop).result()
        asyncio.run(drive(requests))
        asyncio.run_coroutine_threadsafe(switch(False), loop).result()
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table untyped
    idle = {key for key in table if "epoll" in key[2] or "select.poll" in key[2]}  # the loop waiting
    total_s = sum(entry[2] for key, entry in table.items() if key not in idle) or 1e-9
    rows = []
    by_package: dict[str, float] = {}
    for (filename, line, function), (_, calls, own_s, cumulative_s, _) in table.items():
        if (filename, line, function) in idle:
            continue
        name = f"{_short(filename)}:{line}({function})"
        package = _package(filename, function)
        by_package[package] = by_package.get(package, 0.0) + own_s
        rows.append({"function": name, "calls": calls, "own_us_per_request": round(own_s * 1e6 / requests, 1),
                     "cumulative_us_per_request": round(cumulative_s * 1e6 / requests, 1)})
    rows.sort(key=lambda row: row["own_us_per_request"], reverse=True)
    return {"requests": requests, "event_loop_us_per_request": round(total_s * 1e6 / requests, 1),
            "own_time_share_by_package": {package: round(seconds / total_s, 3) for package, seconds in
                                          sorted(by_package.items(), key=lambda item: -item[1])},
            "top_own_time": rows[:top]}


def sample_node_cpu(seconds: float, clients: int, backend: str, max_batch: int = 1, *,
                    floor: bool = False) -> JsonDict:
    """One more node (``--max-batch``), or with ``floor`` one more serving floor, under
    ``benchmarks.cpu_sampler``, answering ``clients`` concurrent clients for ``seconds``: its
    CPU per request by function, counted on CPU time (the profile behind session 16's
    figures; cProfile's ``--profile`` inflates calls)."""
    import signal
    import tempfile

    from benchmarks.cpu_sampler import summarize
    from p2pinfer.testing import wait_until

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stacks.txt"
        if floor:
            node = start_node(["--variant", VARIANT, "--backend", backend],
                              launcher=("-m", "benchmarks.cpu_sampler", str(out), "floor"))
        else:
            node = start_node(["--variants", VARIANT, "--policy", "fixed", "--queue-capacity", "256", "--cpu-backend",
                               backend, "--max-batch", str(max_batch)],
                              launcher=("-m", "benchmarks.cpu_sampler", str(out)))
        try:
            samples, family = held_out_samples()
            process = psutil.Process(node.process.pid)

            async def drive() -> JsonDict:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients * 2)) as session:
                    await concurrent(session, node.url, samples, family, clients, 2.0, process)  # warm
                    node.process.send_signal(signal.SIGUSR1)
                    row = await concurrent(session, node.url, samples, family, clients, seconds, process)
                    node.process.send_signal(signal.SIGUSR2)
                    return row

            row = asyncio.run(drive())
            wait_until(out.exists, timeout_s=30, message="the sampled node to write its stacks (on SIGUSR2)")
            collapsed = out.read_text()
        finally:
            node.terminate(timeout_s=15)
    summary = summarize(collapsed, row["server_cpu_ms_per_request"] * 1000)
    return {"server": "floor" if floor else "p2pinfer", "max_batch": 1 if floor else max_batch,
            "clients": clients, "seconds": seconds, "backend": backend,
            "requests_per_s": round(row["requests_per_s"], 1), "host_cpu_percent": row["host_cpu_percent"], **summary}


def side_by_side(node: JsonDict, floor: JsonDict, top: int = 15) -> list[JsonDict]:
    """The functions both servers run (aiohttp, the socket, ONNX Runtime, the frame's decoding),
    each one's CPU per request in the node and in the floor, inclusive (what a call costs with
    what it calls: the floor's asyncio loop writes to the socket in Python, the node's uvloop in
    C, so the same write is another function's own time in each) and own. The same call costing
    the node more says the node's footprint slows shared code, not that the code is the node's.
    The node's largest own times first."""
    floor_functions = floor["functions"]
    rows: list[JsonDict] = []
    for row in node["top_own"]:
        function = row["function"]
        if function in floor_functions and len(rows) < top:
            node_inclusive, node_own = node["functions"][function]
            floor_inclusive, floor_own = floor_functions[function]
            rows.append({"function": function, "node_inclusive_us": node_inclusive,
                         "floor_inclusive_us": floor_inclusive, "node_own_us": node_own, "floor_own_us": floor_own})
    return rows


def _package(filename: str, function: str) -> str:
    """Who owns a profiled function: p2pinfer's module, or the third-party package's name."""
    if "/p2pinfer/" in filename and "site-packages" not in filename:
        return "p2pinfer." + filename.rsplit("/p2pinfer/", 1)[1].removesuffix(".py").replace("/", ".")
    for marker in ("/selector/", "/zoo/"):
        if marker in filename and "site-packages" not in filename:
            return marker.strip("/")
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if filename == "~":
        owner = function.split(" of ", 1)[1].strip("'<>") if " of " in function else "function"
        return f"builtin:{owner}"
    return "stdlib:" + Path(filename).stem


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/p2pinfer/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sample-cpu", action="store_true",
                        help="then one more node and one more floor under benchmarks.cpu_sampler (CPU-time "
                             "samples) under the load, side by side")
    parser.add_argument("--compare", type=Path, default=None,
                        help="another checkout of p2pinfer: its node (--max-batch 1) runs in the same rounds")
    parser.add_argument("--backend", default="cpu-eager", choices=("cpu-eager", "onnxruntime"),
                        help="what runs the model in the floor and the nodes")
    parser.add_argument("--node-backend", default=None, choices=("cpu-eager", "onnxruntime"),
                        help="another backend for the nodes only (default: --backend)")
    parser.add_argument("--peers", default="",
                        help=f"comma-separated other frameworks to run in the same rounds: {', '.join(PEERS)} "
                             f"(the bench-peers extra; a peer not installed is reported and skipped)")
    parser.add_argument("--floor-event-loop", default="asyncio", choices=("asyncio", "uvloop"),
                        help="the floor's event loop (the nodes run on uvloop where installed): asyncio's own, "
                             "or uvloop to take the loop out of the comparison")
    parser.add_argument("--paced-rates", default="1000,2000,3000",
                        help="comma-separated offered rates (requests/s): each phase then serves each on a fixed "
                             "schedule for --seconds, and the report compares CPU per request at equal load "
                             "('' for none)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    arguments = parser.parse_args(argv)
    try:
        paced_rates = [float(rate) for rate in arguments.paced_rates.split(",") if rate.strip()]
    except ValueError:
        parser.error(f"--paced-rates takes numbers separated by commas, got {arguments.paced_rates!r}")
    if any(rate <= 0 for rate in paced_rates):
        parser.error(f"--paced-rates must be positive, got {arguments.paced_rates!r}")
    peers = [peer for peer in arguments.peers.split(",") if peer]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    skipped = missing_peers(peers)
    for peer, reason in skipped.items():
        print(f"skipping {peer}: {reason}")
    host: JsonDict = {"cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    servers = start_servers(arguments.compare, arguments.backend, arguments.node_backend, arguments.floor_event_loop)
    # the servers idle beside the measured one: the idle host's CPU says what they cost it
    host["idle_host_cpu_percent_servers_up"] = round(psutil.cpu_percent(interval=2.0), 1)
    try:
        rows = asyncio.run(run_rounds(servers, arguments.rounds, arguments.requests, arguments.seconds,
                                      arguments.clients, [peer for peer in peers if peer not in skipped],
                                      arguments.backend, paced_rates))
    finally:
        for server in servers.values():
            server.terminate(timeout_s=15)
    host["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    host["host_cpu_percent_median"] = {
        phase: round(statistics.median(row[phase]["host_cpu_percent"] for server_rows in rows.values()
                                       for row in server_rows), 1)
        for phase in ("batch1", f"clients{arguments.clients}")}
    summary = {name: medians(server_rows, arguments.clients) for name, server_rows in rows.items()}
    floor = summary["floor"]
    ratios = {"p50_vs_floor": round(summary["p2pinfer"]["p50_ms"] / floor["p50_ms"], 2),
              "p50_vs_floor_batching_node": round(summary["p2pinfer-batching"]["p50_ms"] / floor["p50_ms"], 2),
              "rps_vs_floor_unbatched": round(summary["p2pinfer"]["requests_per_s"] / floor["requests_per_s"], 2),
              "rps_vs_floor_batched": round(summary["p2pinfer-batching"]["requests_per_s"]
                                            / floor["requests_per_s"], 2),
              "server_cpu_vs_floor": round(summary["p2pinfer"]["server_cpu_ms_per_request"]
                                           / floor["server_cpu_ms_per_request"], 2),
              "oip_p50_vs_floor": round(summary["p2pinfer-oip"]["p50_ms"] / floor["p50_ms"], 2),
              "oip_rps_vs_floor": round(summary["p2pinfer-oip"]["requests_per_s"] / floor["requests_per_s"], 2)}
    for peer in summary.keys() & set(PEERS):
        ratios[f"{peer}_p50_vs_floor"] = round(summary[peer]["p50_ms"] / floor["p50_ms"], 2)
        ratios[f"{peer}_rps_vs_floor"] = round(summary[peer]["requests_per_s"] / floor["requests_per_s"], 2)
        ratios[f"p2pinfer_rps_vs_{peer}"] = round(summary["p2pinfer"]["requests_per_s"]
                                                  / summary[peer]["requests_per_s"], 2)
        ratios[f"p2pinfer_oip_rps_vs_{peer}"] = round(summary["p2pinfer-oip"]["requests_per_s"]
                                                      / summary[peer]["requests_per_s"], 2)
    if "p2pinfer-compared" in summary:
        compared = summary["p2pinfer-compared"]
        ratios["p50_vs_compared"] = round(summary["p2pinfer"]["p50_ms"] / compared["p50_ms"], 2)
        ratios["rps_vs_compared"] = round(summary["p2pinfer"]["requests_per_s"] / compared["requests_per_s"], 2)
        ratios["server_cpu_concurrent_vs_compared"] = round(
            summary["p2pinfer"]["server_cpu_ms_per_request_concurrent"]
            / compared["server_cpu_ms_per_request_concurrent"], 2)
        batching_compared = summary["p2pinfer-batching-compared"]
        ratios["rps_batching_vs_compared"] = round(summary["p2pinfer-batching"]["requests_per_s"]
                                                   / batching_compared["requests_per_s"], 2)
        ratios["p50_batching_vs_compared"] = round(summary["p2pinfer-batching"]["p50_ms"]
                                                   / batching_compared["p50_ms"], 2)
    report: JsonDict = {"variant": VARIANT, "backend": arguments.backend,
                        "node_backend": arguments.node_backend or arguments.backend, "rounds": arguments.rounds,
                        "requests": arguments.requests,
                        "seconds": arguments.seconds, "clients": arguments.clients, "host": host,
                        "floor_event_loop": arguments.floor_event_loop,
                        "medians": summary, "ratios": ratios, "round_ratios": round_ratios(rows, arguments.clients),
                        "extra_cpu_us_per_request": extra_cpu_us(summary),
                        "paced_rates": paced_rates, "paced": paced_medians(rows),
                        "extra_cpu_us_at_rate": extra_cpu_us_at_rates(rows),
                        "targets": TARGETS, "per_round": rows,
                        "peers_skipped": skipped}
    print("medians:", summary)
    print("ratios:", ratios, "host:", host)
    print("CPU per request above the floor's under load (us):", report["extra_cpu_us_per_request"])
    for name, by_rate in report["paced"].items():
        for rate, figures in by_rate.items():
            extra = report["extra_cpu_us_at_rate"].get(name, {}).get(rate, {})
            above = (f", {extra['median']:+.0f} us above the floor [{extra['min']:+.0f}, {extra['max']:+.0f}]"
                     if extra.get("rounds") else "")
            print(f"{name:>28} at {rate:>6}/s offered: {figures['requests_per_s']:.0f}/s, "
                  f"{figures['server_cpu_us_per_request']:.0f} us CPU per request{above}, p50 {figures['p50_ms']} ms, "
                  f"p99 {figures['p99_ms']} ms, kept up in {figures['sustained_rounds']}/{figures['rounds']} rounds")
    for name, spread in report["round_ratios"].items():
        print(f"{name:>28}: " + ", ".join(f"{label} {value['median']:.2f} [{value['min']:.2f}, {value['max']:.2f}]"
                                          for label, value in spread.items()))
    if arguments.profile:
        report["profile"] = profile_node(arguments.requests)
        for row in report["profile"]["top_own_time"][:15]:
            print(f"{row['own_us_per_request']:8.1f} us/request  {row['function']}")
    if arguments.sample_cpu:
        report["cpu_samples"] = sample_node_cpu(max(arguments.seconds, 10.0), arguments.clients,
                                                arguments.node_backend or arguments.backend)
        print(f"sampled node: {report['cpu_samples']['cpu_us_per_request']} us of CPU per request "
              f"({report['cpu_samples']['samples']} samples); by function, inclusive / own:")
        for row in report["cpu_samples"]["top_inclusive"][:30]:
            print(f"{row['inclusive_us_per_request']:8.1f} {row['own_us_per_request']:8.1f}  {row['function']}")
        report["cpu_samples_floor"] = sample_node_cpu(max(arguments.seconds, 10.0), arguments.clients,
                                                      arguments.backend, floor=True)
        report["cpu_samples_side_by_side"] = side_by_side(report["cpu_samples"], report["cpu_samples_floor"])
        print(f"sampled floor: {report['cpu_samples_floor']['cpu_us_per_request']} us of CPU per request; "
              "CPU per request of the functions both run, inclusive node / floor, own node / floor (us):")
        for row in report["cpu_samples_side_by_side"]:
            print(f"{row['node_inclusive_us']:8.1f} {row['floor_inclusive_us']:8.1f} {row['node_own_us']:8.1f} "
                  f"{row['floor_own_us']:8.1f}  {row['function']}")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
