"""Split execution benchmark: the planner's plan against local-only, full offload, the best
static split chosen offline (Neurosurgeon-style) and the best plan in hindsight.

Three service nodes run in this process, each a real aiohttp server on 127.0.0.1 with its own
executor thread, ``StageService`` and ``PeerTransport`` (links emulated in the transport):

- ``device``: the entry node, a weak device (compute x4: a Jetson-class CPU);
- ``edge``: an edge server (x1), reached over the scenario's link;
- ``edge-2``: a smaller edge box (x2), over a steady 10 Mbit/s, 20 ms link.

Scenarios change the device<->edge link or the edge's heat: ``fast`` (100 Mbit/s, 5 ms),
``slow`` (2 Mbit/s, 40 ms), ``trace`` (a real HSDPA 3G bandwidth trace x3, 40 ms) and ``hot``
(the fast link, but the edge throttled to 1/5 of its speed, as gossip reports).

Per round every policy serves one request, in rotating order (so a varying link treats them
alike): ``local`` (all blocks on the device), ``offload`` (all on the edge), ``static`` (the
device/edge split with the lowest predicted latency from the offline profile and the link's
mean bandwidth, fixed for the scenario), ``planner`` (``placement.place`` per request, from the
entry node's directory: measured link estimates and learnt compute) and ``hindsight`` (the
planner's own DP given the truth: every node's block times measured during warm-up, with heat,
and the links' true bandwidth at that instant). The target: the planner within 15% of the
hindsight plan at the median.

Reported per scenario and policy: p50/p95/mean latency and the plans chosen; the planner over
hindsight as a ratio of medians and as the median of per-round ratios (the same round, so the
same link state: less noise); how often the planner chose the hindsight plan; and each
policy's ``priced_regret_p50``: its plan priced with the truth, over the best plan's price
(1.0: the best plan; noise-free, as it does not depend on the measured latency). Emulated
devices compute for real, then pad to their slowdown, so host noise (other processes on a
shared machine) is multiplied by the slowdown: compare policies within a scenario, per round.
Also reported: what signing one hop costs (HMAC sign + verify) per boundary size.

The entry node learns its links from all of its traffic (the baselines' requests cross the
same links, as other requests would in a busy node) and from small probes once per round (what
gossip does in a node).

Run: ``python -m benchmarks.split --out benchmarks/results/`` (writes ``split.json``, the
per-request ``split_requests.jsonl`` and ``split.png``).
The in-process nodes (``ServiceNodeSpec``, ``ServiceNode``, ``start_cluster``) live in
``p2pinfer.testing``: the collaboration tests use them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import sample_percentile
from p2pinfer.emulation.link import EmulatedLink, LinkMatrix
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.placement import place, plan_segments, planner_segments, result_bytes
from p2pinfer.planning.planner import CandidateUnit, Network, PlanningProblem, Segment, evaluate, plan
from p2pinfer.protocol.auth import Verifier, request_header, sign_request
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.protocol.wire import encode_frame_bytes
from p2pinfer.runtime.stage import (
    STAGE_PATH,
    StageHeader,
    StageOutcome,
    StageSettings,
)
from p2pinfer.testing import ServiceCluster, ServiceNodeSpec, segments_of, start_cluster
from p2pinfer.types import NodeId, UnitName
from zoo.manifest import Manifest, VariantInfo, read_manifest

TRACES = Path(__file__).resolve().parent / "traces"


def describe(segments: Sequence[PlanSegment]) -> str:
    """``device[0-1]>edge[2-3]``: a plan in one short string."""
    return ">".join(f"{segment.node}[{segment.first_block}-{segment.last_block}]" for segment in segments)


# ---------------------------------------------------------------------------------------
# The benchmark

VARIANT = "digits-resnet-w1"
DEVICE, EDGE, EDGE_2 = NodeId("device"), NodeId("edge"), NodeId("edge-2")
POLICIES = ("local", "offload", "static", "planner", "hindsight")


@dataclass(frozen=True)
class SplitScenario:
    name: str
    description: str
    edge_link: dict[str, Any]  # link.link_from_dict table for device<->edge
    edge_heat: float = 1.0


SCENARIOS = (
    SplitScenario("fast", "device<->edge 100 Mbit/s, 5 ms", {"bandwidth_mbps": 100.0, "rtt_ms": 5.0}),
    SplitScenario("slow", "device<->edge 2 Mbit/s, 40 ms", {"bandwidth_mbps": 2.0, "rtt_ms": 40.0}),
    SplitScenario("trace", "device<->edge HSDPA 3G trace norway_bus_1 x3 (from 30 s), 40 ms",
             {"trace": "hsdpa-3g/norway_bus_1.txt", "trace_scale": 3.0, "trace_offset_s": 30.0, "rtt_ms": 40.0}),
    SplitScenario("hot", "device<->edge 100 Mbit/s, 5 ms; edge throttled x5", {"bandwidth_mbps": 100.0, "rtt_ms": 5.0},
             edge_heat=5.0),
)

SPECS = (
    ServiceNodeSpec(DEVICE, {VARIANT: (0, 3)}, device_slowdown=4.0),
    ServiceNodeSpec(EDGE, {VARIANT: (0, 3)}, device_slowdown=1.0),
    ServiceNodeSpec(EDGE_2, {VARIANT: (0, 3)}, device_slowdown=2.0),
)
STEADY_LINKS = {
    f"{DEVICE}<->{EDGE_2}": {"bandwidth_mbps": 10.0, "rtt_ms": 20.0},
    f"{EDGE}<->{EDGE_2}": {"bandwidth_mbps": 100.0, "rtt_ms": 2.0},
}


def link_mean_mbps(link: EmulatedLink) -> float:
    if link.trace is not None:
        return link.trace.mean_mbps * link.trace_scale
    return math.inf if link.bandwidth_mbps is None else link.bandwidth_mbps


def true_network(matrix: LinkMatrix, nodes: Sequence[NodeId], *, instant: bool) -> Network:
    """The emulated links as they are (``instant``: the bandwidth right now, else the mean)."""
    links: dict[tuple[NodeId, NodeId], LinkEstimate] = {}
    for source in nodes:
        for destination in nodes:
            if source == destination:
                continue
            link = matrix.link(source, destination)
            bandwidth = link.bandwidth_at(link.now_s()) if instant else link_mean_mbps(link)
            links[(source, destination)] = LinkEstimate(bandwidth_mbps=min(bandwidth, 1e6), rtt_ms=link.rtt_ms)
    return Network(links=links)


def offline_problem(cluster: ServiceCluster, variant: VariantInfo, matrix: LinkMatrix,
                    nodes: Sequence[NodeId]) -> PlanningProblem:
    """What Neurosurgeon knows offline: profiles at device speed (no heat), mean bandwidth."""
    units = [CandidateUnit(node, UnitName("cpu"), dict(enumerate(cluster[node].view().block_ms[variant.name])))
             for node in nodes]
    return PlanningProblem(entry_node=DEVICE, input_bytes=variant.input_bytes,
                           output_bytes=[block.output_bytes for block in variant.blocks],
                           result_bytes=result_bytes(variant), units=units,
                           network=true_network(matrix, nodes, instant=False))


def best_static_split(problem: PlanningProblem, variant: VariantInfo) -> tuple[Segment, ...]:
    """Neurosurgeon: the device runs blocks [0, k), the edge [k, last]; the k predicted best."""
    last = variant.block_count - 1
    candidates: list[tuple[Segment, ...]] = [(Segment(DEVICE, UnitName("cpu"), 0, last),)]
    for split in range(0, last + 1):
        edge = Segment(EDGE, UnitName("cpu"), split, last)
        candidates.append((edge,) if split == 0 else (Segment(DEVICE, UnitName("cpu"), 0, split - 1), edge))
    return min(candidates, key=lambda segments: evaluate(problem, segments).total_ms)


def hindsight_problem(cluster: ServiceCluster, variant: VariantInfo, matrix: LinkMatrix,
                      measured_ms: Mapping[NodeId, Sequence[float]]) -> PlanningProblem:
    """The truth: measured block times per node (heat included) and the links' bandwidth now."""
    nodes = list(cluster.nodes)
    units = [CandidateUnit(NodeId(node), UnitName("cpu"), dict(enumerate(measured_ms[NodeId(node)])))
             for node in nodes]
    return PlanningProblem(entry_node=DEVICE, input_bytes=variant.input_bytes,
                           output_bytes=[block.output_bytes for block in variant.blocks],
                           result_bytes=result_bytes(variant), units=units,
                           network=true_network(matrix, [NodeId(node) for node in nodes], instant=True))


async def run_scenario(scenario: SplitScenario, manifest: Manifest, *, rounds: int, warmup: int,
                       sample: torch.Tensor) -> dict[str, Any]:
    variant = manifest.variant(VARIANT)
    epoch = time.monotonic()
    links = {f"{DEVICE}<->{EDGE}": scenario.edge_link, **STEADY_LINKS}
    matrix = LinkMatrix.from_dict(links, trace_roots=[TRACES], seed=7, epoch_s=epoch)
    specs = [ServiceNodeSpec(spec.node_id, spec.hosted, spec.device_slowdown,
                      scenario.edge_heat if spec.node_id == EDGE else 1.0) for spec in SPECS]
    # The entry node starts knowing nothing about its links (a default guess) and learns.
    link_model = LinkLatencyModel(bandwidth_min_bytes=8 * 1024)
    cluster = await start_cluster(specs, manifest=manifest, link_matrix=matrix, link_models={DEVICE: link_model},
                                  settings=StageSettings(timeout_factor=5.0, timeout_margin_ms=2000.0))
    device = cluster[DEVICE]
    device.directory.default_link = LinkEstimate(bandwidth_mbps=20.0, rtt_ms=10.0)
    try:
        static = best_static_split(offline_problem(cluster, variant, matrix, [DEVICE, EDGE]), variant)
        fixed = {
            "local": segments_of((DEVICE, 0, 3)),
            "offload": segments_of((EDGE, 0, 3)),
            "static": plan_segments(static),
        }
        records: list[dict[str, Any]] = []
        measured: dict[NodeId, list[float]] = {}

        async def serve(policy: str, round_index: int) -> dict[str, Any]:
            started = time.monotonic()
            truth_problem = hindsight_problem(cluster, variant, matrix, measured)
            truth = plan(truth_problem)
            if policy in fixed:
                segments = fixed[policy]
                predicted = None
            elif policy == "planner":
                chosen = place(device.directory, device.compute_model, variant, 3)
                segments, predicted = plan_segments(chosen), chosen.total_ms
            else:
                segments, predicted = plan_segments(truth), truth.total_ms
            priced_ms = evaluate(truth_problem, planner_segments(segments)).total_ms
            outcome: StageOutcome = await device.service.execute(
                request_id=uuid.uuid4().hex, family=variant.family, variant=VARIANT, exit_block=3, segments=segments,
                tensor=sample, budget_ms=30_000.0, allow_degrade=False)
            latency_ms = (time.monotonic() - started) * 1000
            edge_link = matrix.link(DEVICE, EDGE)
            return {"scenario": scenario.name, "round": round_index, "policy": policy, "plan": describe(segments),
                    "executed": describe(outcome.executed), "latency_ms": round(latency_ms, 3),
                    "predicted_ms": None if predicted is None else round(predicted, 3),
                    "priced_ms": round(priced_ms, 3), "best_priced_ms": round(truth.total_ms, 3),
                    "edge_mbps_now": round(edge_link.bandwidth_at(edge_link.now_s()), 3),
                    "compute_ms": round(sum(t.compute_ms for t in outcome.timings), 3),
                    "transfer_ms": round(sum(t.transfer_ms for t in outcome.timings), 3)}

        async def probe_links() -> None:
            for peer in (EDGE, EDGE_2):
                view = device.directory.peer(peer)
                assert view is not None
                await device.transport.probe(view)

        # Warm-up: every fixed policy and a pure offload to edge-2, so each node's block times
        # are measured (the hindsight oracle's input) and the links have been used once.
        for _ in range(warmup):
            await probe_links()
            for segments in (*fixed.values(), segments_of((EDGE_2, 0, 3))):
                await device.service.execute(request_id=uuid.uuid4().hex, family=variant.family, variant=VARIANT,
                                             exit_block=3, segments=segments, tensor=sample, budget_ms=30_000.0,
                                             allow_degrade=False)
        for node_id, node in cluster.nodes.items():
            measured[NodeId(node_id)] = [statistics.median(node.block_ms[(VARIANT, block)]) for block in range(4)]

        for round_index in range(rounds):
            await probe_links()
            offset = round_index % len(POLICIES)
            for policy in POLICIES[offset:] + POLICIES[:offset]:
                records.append(await serve(policy, round_index))
    finally:
        await cluster.close()

    summary: dict[str, Any] = {"description": scenario.description, "static_plan": describe(fixed["static"]),
                               "measured_block_ms": {node: [round(ms, 2) for ms in values]
                                                     for node, values in measured.items()},
                               "policies": {}}
    for policy in POLICIES:
        latencies = [record["latency_ms"] for record in records if record["policy"] == policy]
        plans: dict[str, int] = defaultdict(int)
        for record in records:
            if record["policy"] == policy:
                plans[record["plan"]] += 1
        summary["policies"][policy] = {
            "requests": len(latencies), "p50_ms": round(sample_percentile(latencies, 50), 2),
            "p95_ms": round(sample_percentile(latencies, 95), 2), "mean_ms": round(statistics.fmean(latencies), 2),
            "plans": dict(sorted(plans.items(), key=lambda item: -item[1]))}
    for policy in POLICIES:
        regrets = [record["priced_ms"] / record["best_priced_ms"] for record in records if record["policy"] == policy]
        summary["policies"][policy]["priced_regret_p50"] = round(sample_percentile(regrets, 50), 3)
    by_round: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        by_round[record["round"]][record["policy"]] = record
    paired = [entries["planner"]["latency_ms"] / entries["hindsight"]["latency_ms"] for entries in by_round.values()]
    agreement = [entries["planner"]["plan"] == entries["hindsight"]["plan"] for entries in by_round.values()]
    planner_p50 = summary["policies"]["planner"]["p50_ms"]
    hindsight_p50 = summary["policies"]["hindsight"]["p50_ms"]
    summary["planner_over_hindsight_p50"] = round(planner_p50 / hindsight_p50, 3)
    summary["planner_over_hindsight_paired_median"] = round(sample_percentile(paired, 50), 3)
    summary["planner_same_plan_as_hindsight"] = round(sum(agreement) / len(agreement), 3)
    summary["within_15_percent"] = planner_p50 <= 1.15 * hindsight_p50
    return {"summary": summary, "records": records}


def signing_cost(variant: VariantInfo, repeats: int = 20) -> list[dict[str, Any]]:
    """What authenticating one hop costs: sign (sender) plus verify (receiver) of a stage frame
    carrying each boundary of ``variant``; the payload is hashed once on each side."""
    secret = b"benchmark-secret"
    rows = []
    for boundary in range(variant.block_count):
        shape = variant.input_shape if boundary == 0 else variant.blocks[boundary - 1].output_shape
        header = StageHeader(request_id="sign", family=variant.family, variant=variant.name,
                             exit_block=variant.block_count - 1, segments=segments_of(("b", boundary, 3)),
                             budget_ms=1000.0, origin="a", hop=1)
        body = encode_frame_bytes(header, {"activation": torch.rand([1, *shape])})
        samples = []
        for _ in range(repeats):
            verifier = Verifier(secret, recipients={"b"})
            started = time.perf_counter()
            headers = sign_request(secret, "a", "POST", STAGE_PATH, body, time.time(), to="b")
            verifier.verify(headers, request_header("POST", STAGE_PATH), body, time.time())
            samples.append((time.perf_counter() - started) * 1e6)
        median_us = statistics.median(samples)
        rows.append({"boundary": boundary, "bytes": len(body), "sign_and_verify_us": round(median_us, 1),
                     "mb_per_s": round(len(body) / median_us, 1)})
    return rows


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(report["scenarios"])
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.16
    for index, policy in enumerate(POLICIES):
        p50 = [report["scenarios"][name]["policies"][policy]["p50_ms"] for name in scenarios]
        p95 = [report["scenarios"][name]["policies"][policy]["p95_ms"] for name in scenarios]
        positions = [position + (index - 2) * width for position in range(len(scenarios))]
        axes[0].bar(positions, p50, width, label=policy)
        above = [high - low for high, low in zip(p95, p50, strict=True)]
        axes[0].errorbar(positions, p50, yerr=[[0] * len(p50), above], fmt="none", ecolor="black", capsize=2,
                         linewidth=0.8)
    axes[0].set_xticks(range(len(scenarios)), scenarios)
    axes[0].set_ylabel("end-to-end latency, ms (bar: p50, whisker: p95)")
    axes[0].set_title(f"{VARIANT}: device (x4) + edge (x1) + edge-2 (x2)")
    axes[0].legend(fontsize=8)
    trace_records = [record for record in report["records"] if record["scenario"] == "trace"]
    for policy in ("offload", "static", "planner", "hindsight"):
        points = [(record["round"], record["latency_ms"]) for record in trace_records if record["policy"] == policy]
        axes[1].plot([p[0] for p in points], [p[1] for p in points], marker=".", label=policy)
    twin = axes[1].twinx()
    bandwidth = [(record["round"], record["edge_mbps_now"]) for record in trace_records
                 if record["policy"] == "planner"]
    twin.plot([p[0] for p in bandwidth], [p[1] for p in bandwidth], color="grey", linestyle=":", label="Mbit/s")
    twin.set_ylabel("device<->edge Mbit/s (dotted)")
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("latency, ms")
    axes[1].set_title("trace scenario over time")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


async def run(rounds: int, warmup: int, scenarios: Sequence[str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    manifest = read_manifest()
    variant = manifest.variant(VARIANT)
    from zoo.dataset import held_out

    images, _ = held_out(tuple(variant.input_shape))
    sample = images[:1].contiguous()
    report: dict[str, Any] = {"variant": VARIANT, "rounds": rounds, "warmup_rounds": warmup,
                              "nodes": {spec.node_id: {"device_slowdown": spec.device_slowdown} for spec in SPECS},
                              "steady_links": STEADY_LINKS, "scenarios": {}, "records": []}
    started = time.monotonic()
    for scenario in SCENARIOS:
        if scenario.name not in scenarios:
            continue
        result = await run_scenario(scenario, manifest, rounds=rounds, warmup=warmup, sample=sample)
        report["scenarios"][scenario.name] = result["summary"]
        report["records"] += result["records"]
        policies = result["summary"]["policies"]
        summary = result["summary"]
        print(f"{scenario.name:>6}: " + "  ".join(f"{policy} {policies[policy]['p50_ms']:.1f}" for policy in POLICIES)
              + f"  | planner/hindsight p50 {summary['planner_over_hindsight_p50']:.2f}, paired"
              f" {summary['planner_over_hindsight_paired_median']:.2f}, same plan"
              f" {summary['planner_same_plan_as_hindsight']:.0%}", flush=True)
    report["signing_cost"] = signing_cost(variant)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["requests"] = len(report["records"])
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(scenario.name for scenario in SCENARIOS))
    arguments = parser.parse_args(argv)
    report = asyncio.run(run(arguments.rounds, arguments.warmup, arguments.scenarios.split(",")))
    arguments.out.mkdir(parents=True, exist_ok=True)
    plot(report, arguments.out / "split.png")
    records = report.pop("records")
    (arguments.out / "split.json").write_text(json.dumps(report, indent=1) + "\n")
    with (arguments.out / "split_requests.jsonl").open("w") as lines:
        for record in records:
            lines.write(json.dumps(record) + "\n")
    print(f"wrote {arguments.out / 'split.json'}, split_requests.jsonl and split.png "
          f"({report['requests']} requests, {report['seconds']} s)")


if __name__ == "__main__":
    main()
