"""``p2pinfer bench scale-out`` and ``p2pinfer bench ramp``: does adding nodes serve more users,
and what happens past the cluster's capacity?

scale-out: the same open-loop user population (``scenarios/scale-out.toml``, sized to overload
even 8 nodes) against clusters of the first 1, 2, 4 and 8 identical nodes; goodput (on-time
answers/s), miss rate (rejections count as misses), p50/p99, accuracy and Jain's index per
size, into ``scaling.json`` and ``scaling.png``.

ramp: equal users against the first 4 nodes; a short overloaded probe measures the
capacity (on-time answers/s), then offered load steps from 0.25x to 3x of it on the same
cluster; miss, degraded and rejected shares and Jain's index per level, into ``ramp.json``
and ``ramp.png``.

Nodes are slow emulated devices whose padding sleeps, so the host is not the bottleneck;
every run records the host's CPU (all of it, other users' work included) and this run's own
process tree (harness and nodes) in cores, sampled once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks.cluster_run import ScenarioCluster
from benchmarks.load import LoadGenerator, RequestRecord, build_schedule, held_out_inputs
from benchmarks.policy_run import _wait_for_membership
from benchmarks.report import jain_index, percentile, write_json
from benchmarks.scenario import Scenario, load_scenario, with_nodes

SIZES = (1, 2, 4, 8)
RAMP_NODES = 4
RAMP_LEVELS = (0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0)
POLICY = "fixed"  # the most accurate arm unless the coordinator sheds: capacity stays comparable
PROBE_S = 15.0
PROBE_TRUST = 0.6  # a probe below this share of the predicted capacity measured a starved host
WARM_UP_REQUESTS = 2
DRAIN_TIMEOUT_S = 20.0


# ---- CPU ----------------------------------------------------------------------------------------


@dataclass
class CpuMeter:
    """Host CPU (cores busy, every process) and this run's process tree (cores), once a second."""

    host_cores: list[float] = field(default_factory=list)
    _tree: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (first, last) cpu seconds
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: float = 0.0
    _ended: float = 0.0

    def _tree_times(self) -> None:
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            first = self._tree.get(process.pid, (used, used))[0]
            self._tree[process.pid] = (first, used)

    def _run(self) -> None:
        psutil.cpu_percent(None)
        while not self._stop.wait(1.0):
            self.host_cores.append(psutil.cpu_percent(None) / 100.0 * (psutil.cpu_count() or 1))
            self._tree_times()

    def __enter__(self) -> CpuMeter:
        self._started = time.monotonic()
        self._tree_times()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._tree_times()
        self._ended = time.monotonic()
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, float | None]:
        elapsed = max(self._ended - self._started, 1e-6)
        tree = sum(last - first for first, last in self._tree.values()) / elapsed
        return {"host_cpu": round(statistics.mean(self.host_cores), 3) if self.host_cores else None,
                "host_cpu_max": round(max(self.host_cores), 3) if self.host_cores else None,
                "run_cpu": round(tree, 3), "cpu_count": psutil.cpu_count()}


# ---- figures --------------------------------------------------------------------------------------


def figures(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """Goodput and quality of one load level; a rejection or error is a miss."""
    total = len(records)
    on_time = [r for r in records if r.ok and r.deadline_met]
    answered = [r for r in records if r.ok]
    latencies = [r.client_latency_ms if r.client_latency_ms is not None else r.latency_ms or 0.0 for r in answered]
    per_user: dict[str, list[int]] = {}
    for record in records:
        counts = per_user.setdefault(record.user, [0, 0])
        counts[0] += 1
        counts[1] += int(record.ok and record.deadline_met)
    correct = [r.correct for r in answered if r.correct is not None]
    rejected = sum(1 for r in records if r.outcome == "overloaded")
    return {
        "requests": total, "on_time": len(on_time),
        "offered_per_s": round(total / duration_s, 3),
        "goodput_per_s": round(len(on_time) / duration_s, 3),
        "full_quality_goodput_per_s": round(sum(1 for r in on_time if not r.degraded) / duration_s, 3),
        "miss_rate": round(1 - len(on_time) / total, 4) if total else None,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "accuracy": round(sum(correct) / len(correct), 4) if correct else None,
        "degraded_share": round(sum(1 for r in answered if r.degraded) / total, 4) if total else None,
        "rejected_share": round(rejected / total, 4) if total else None,
        "errors": {code: sum(1 for r in records if r.outcome == code)
                   for code in sorted({r.outcome for r in records} - {"ok"})},
        "jain": jain_index([on / sent for sent, on in per_user.values() if sent]),
        "entries_used": sorted({r.entry_node for r in answered}),
        "compute_nodes": sorted({segment[0] for r in answered for segment in r.plan}),
    }


def with_rate(scenario: Scenario, total_per_s: float, duration_s: float, seed: int) -> Scenario:
    users = tuple(replace(group, rate_per_s=total_per_s / group.count) for group in scenario.users)
    return replace(scenario, users=users, duration_s=duration_s, seed=seed)


# ---- running ----------------------------------------------------------------------------------------


async def _warm_up(cluster: ScenarioCluster, inputs: Any, scenario: Scenario, warnings: list[str]) -> None:
    """A few requests through every node at once before the clock starts (models loaded, links
    and profiles gossiped). A failed warm-up request is a warning, never the end of the run."""
    from p2pinfer.client import AsyncClient
    from p2pinfer.errors import P2PError

    family = scenario.users[0].family
    held_out = inputs[family]

    async def warm(name: str, url: str) -> None:
        async with AsyncClient(url, timeout_s=60.0) as client:
            for _ in range(WARM_UP_REQUESTS):
                try:
                    await held_out.send(client, 0, deadline_ms=30_000, user="warm-up", family=family)
                except (P2PError, OSError, asyncio.TimeoutError) as error:
                    warnings.append(f"warm-up request to {name} failed: {type(error).__name__}: {error}")

    await asyncio.gather(*(warm(name, url) for name, url in cluster.urls.items()))


async def _node_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    try:
        async with session.get(url) as response:
            return await response.json() if response.status == 200 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return {}


async def _drain(cluster: ScenarioCluster, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Wait (bounded) until no node has work queued or in flight: the next level starts clean."""
    ends = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < ends:
            healths = await asyncio.gather(*(_node_json(session, url + "/v1/health") for url in cluster.urls.values()))
            if all(h and not h.get("queue_depth") and not h.get("in_flight") for h in healths):
                return True
            await asyncio.sleep(0.2)
    return False


async def predicted_capacity(cluster: ScenarioCluster) -> float | None:
    """What the nodes' own gossiped block profiles predict the cluster serves at full quality
    (requests/s): per live node, one over its largest hosted variant's full time (the fixed
    policy serves the most accurate arm, the largest variant in these scenarios), summed."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        views = await asyncio.gather(*(_node_json(session, url + "/v1/peers") for url in cluster.urls.values()))
    best = max(views, key=lambda view: len(view.get("peers") or []))
    total = 0.0
    for peer in best.get("peers") or []:
        full_ms = [sum(blocks) for blocks in (peer.get("variants") or {}).values() if blocks]
        if peer.get("status") == "alive" and full_ms and max(full_ms) > 0:
            total += 1000.0 / max(full_ms)
    return round(total, 3) if total else None


def choose_capacity(measured: float, predicted: float | None) -> tuple[float, str]:
    """The probe's on-time answers/s, unless it fell far below what the nodes' profiles
    predict (the host starved the run): then the prediction."""
    if predicted and measured < PROBE_TRUST * predicted:
        return predicted, "predicted"
    return max(measured, 0.1), "measured"


async def _cluster(scenario: Scenario, work_dir: Path, warnings: list[str]) -> ScenarioCluster:
    cluster = ScenarioCluster(scenario, POLICY, work_dir, secrets.token_hex(16), warnings)
    await asyncio.to_thread(cluster.start)
    missing = await _wait_for_membership(cluster)
    if missing:
        warnings.append(missing)
    return cluster


async def _load(cluster: ScenarioCluster, scenario: Scenario, inputs) -> tuple[list[RequestRecord], dict]:
    image_count = min(len(held.labels) for held in inputs.values())
    schedule = build_schedule(scenario, image_count)
    generator = LoadGenerator(schedule, cluster.urls, POLICY, inputs)
    with CpuMeter() as meter:
        result = await generator.run(time.monotonic() + 0.05)
    records = [r for r in result.records if r.scheduled_s is None or r.scheduled_s < scenario.duration_s]
    return records, meter.summary()


async def scale_out(base: Scenario, out_dir: Path, sizes: Sequence[int] = SIZES) -> dict[str, Any]:
    inputs = await asyncio.to_thread(held_out_inputs, [group.family for group in base.users], base.zoo_dir)
    warnings: list[str] = []
    nodes: dict[str, Any] = {}
    for size in sizes:
        scenario = with_nodes(base, [node.name for node in base.nodes[:size]])
        work = out_dir / f"nodes-{size}"
        work.mkdir(parents=True, exist_ok=True)
        wall = time.monotonic()
        cluster = await _cluster(scenario, work, warnings)
        try:
            await _warm_up(cluster, inputs, scenario, warnings)
            if not await _drain(cluster):
                warnings.append(f"{size} nodes: work still queued after the warm-up")
            records, cpu = await _load(cluster, scenario, inputs)
        finally:
            await asyncio.to_thread(cluster.stop)
        nodes[str(size)] = {**figures(records, scenario.duration_s), **cpu,
                            "wall_s": round(time.monotonic() - wall, 1)}
        print(f"{size} nodes: " + ", ".join(f"{key} {nodes[str(size)][key]}" for key in
                                             ("offered_per_s", "goodput_per_s", "miss_rate", "p99_ms", "host_cpu",
                                              "run_cpu")), flush=True)
    one = nodes.get("1", {}).get("goodput_per_s") or 0.0
    document = {"scenario": base.name, "duration_s": base.duration_s, "seed": base.seed, "policy": POLICY,
                "offered_per_s": sum((g.rate_per_s or 0.0) * g.count for g in base.users),
                "nodes": nodes, "speedup": {size: round(entry["goodput_per_s"] / one, 3) if one else None
                                            for size, entry in nodes.items()},
                "warnings": warnings}
    write_json(out_dir / "scaling.json", document)
    _plot_scaling(out_dir / "scaling.png", nodes)
    return document


async def ramp(base: Scenario, out_dir: Path, levels: Sequence[float] = RAMP_LEVELS,
               node_count: int = RAMP_NODES) -> dict[str, Any]:
    scenario = with_nodes(base, [node.name for node in base.nodes[:node_count]])
    inputs = await asyncio.to_thread(held_out_inputs, [group.family for group in base.users], base.zoo_dir)
    warnings: list[str] = []
    work = out_dir / "nodes"
    work.mkdir(parents=True, exist_ok=True)
    cluster = await _cluster(scenario, work, warnings)
    rows: list[dict[str, Any]] = []
    try:
        await _warm_up(cluster, inputs, scenario, warnings)
        await _drain(cluster)
        predicted = await predicted_capacity(cluster)
        probe_rate = sum((g.rate_per_s or 0.0) * g.count for g in scenario.users)
        probe, probe_cpu = await _load(cluster, with_rate(scenario, probe_rate, PROBE_S, scenario.seed), inputs)
        # capacity at full quality: under the probe's overload the entries shed to cheaper arms,
        # and counting those answers would measure a capacity no user asked for
        measured = figures(probe, PROBE_S)["full_quality_goodput_per_s"]
        capacity, capacity_source = choose_capacity(measured, predicted)
        if capacity_source == "predicted":
            warnings.append(f"capacity probe measured {measured}/s at full quality, far below the predicted "
                            f"{predicted}/s (a starved host, or entries shedding to cheaper arms under the "
                            "probe's overload): the ramp uses the prediction")
        print(f"capacity probe: {probe_rate:g}/s offered -> {measured:g} on-time answers/s "
              f"(predicted {predicted}); levels relative to {capacity:g} ({capacity_source})", flush=True)
        for index, ratio in enumerate(levels):
            if not await _drain(cluster):  # the next level starts with empty queues
                warnings.append(f"x{ratio:g}: work still queued from the previous level")
            level = with_rate(scenario, ratio * capacity, scenario.duration_s, scenario.seed + index + 1)
            records, cpu = await _load(cluster, level, inputs)
            row = {"offered_load_ratio": ratio, **figures(records, scenario.duration_s), **cpu}
            rows.append(row)
            print(f"x{ratio:g}: " + ", ".join(f"{key} {row[key]}" for key in
                                               ("offered_per_s", "goodput_per_s", "miss_rate", "degraded_share",
                                                "rejected_share", "jain", "host_cpu", "run_cpu")), flush=True)
    finally:
        await asyncio.to_thread(cluster.stop)
    document = {"scenario": base.name, "nodes": node_count, "duration_s_per_level": scenario.duration_s,
                "policy": POLICY, "capacity_per_s": capacity, "capacity_source": capacity_source,
                "probe": {"offered_per_s": probe_rate, "duration_s": PROBE_S, "measured_per_s": measured,
                          "predicted_per_s": predicted, **probe_cpu},
                "levels": rows, "warnings": warnings}
    write_json(out_dir / "ramp.json", document)
    _plot_ramp(out_dir / "ramp.png", rows)
    return document


# ---- plots --------------------------------------------------------------------------------------------


def _plot_scaling(path: Path, nodes: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(size) for size in nodes)
    goodput = [nodes[str(size)]["goodput_per_s"] for size in sizes]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(sizes, goodput, "o-", label="goodput (on-time answers/s)")
    if goodput and goodput[0]:
        axis.plot(sizes, [goodput[0] * size for size in sizes], "--", color="grey", label="linear")
    axis.set_xlabel("nodes")
    axis.set_ylabel("answers/s")
    axis.set_xticks(sizes)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_ramp(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [row["offered_load_ratio"] for row in rows]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for key, label in (("miss_rate", "no on-time answer"), ("degraded_share", "degraded"),
                       ("rejected_share", "rejected (429)")):
        axis.plot(ratios, [row[key] or 0.0 for row in rows], "o-", label=label)
    axis.set_xlabel("offered load / measured capacity")
    axis.set_ylabel("share of requests")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    """``p2pinfer bench scale-out|ramp [--duration S] [--seed N] --out DIR``."""
    verb = argv[0]
    parser = argparse.ArgumentParser(prog=f"p2pinfer bench {verb}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load per cluster size (scale-out) or per load level (ramp)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="scale-out: cluster sizes")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args(list(argv[1:]))
    base = load_scenario(verb)
    if arguments.duration is not None:
        base = replace(base, duration_s=arguments.duration)
    if arguments.seed is not None:
        base = replace(base, seed=arguments.seed)
    arguments.out.mkdir(parents=True, exist_ok=True)
    if verb == "scale-out":
        asyncio.run(scale_out(base, arguments.out, [int(size) for size in arguments.sizes.split(",")]))
        print(f"wrote {arguments.out / 'scaling.json'}")
    else:
        asyncio.run(ramp(base, arguments.out))
        print(f"wrote {arguments.out / 'ramp.json'}")
    return 0


__all__ = ["figures", "main", "ramp", "scale_out"]
