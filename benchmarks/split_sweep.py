"""Split sweep: Neurosurgeon's experiment redone on the real family (``text-orientation-w1``,
5 blocks, 224 px), with boundary codecs and the client's JPEG, over a bandwidth sweep.

Two service nodes run in this process (``p2pinfer.testing``: real aiohttp servers on
127.0.0.1, each with its own executor thread; links emulated in the transport):

- ``device``: the entry, an emulated device (``emulation.device_profile``: ``rpi4`` x10,
  ``jetson-nano`` x8, ``jetson-orin-nano`` x3, all on their CPU: there is no GPU on this host,
  so the Orin's GPU is not emulated). It computes for real on the host, then pads to its
  slowdown, so host noise (other processes on a shared 2-core machine) is multiplied too;
- ``edge``: an ``edge-server`` (the host's speed), over one link swept through 0.5, 2, 8, 25
  and 100 Mbit/s at a fixed RTT (20 ms by default).

The client's image is a held-out page cropped to the model's preprocessing size (256 px short
side) and saved as JPEG (quality 90). The entry holds it and its decoded tensor when a request
starts: a real node decodes the client's image on arrival, before it plans (``routes``), so
that decode is common to every strategy and not counted. Strategies, per cell:

- ``local``: every block on the device;
- ``offload-jpeg``: every block on the edge, the client's JPEG forwarded as is (the edge decodes);
- ``offload-raw``: every block on the edge, the float32 input tensor sent (602 KB);
- ``split-<codec>`` (float32, float16, uint8): the best true split (the device runs blocks
  [0, k), the edge [k, 4], 1 <= k <= 4) with the boundary in that codec, chosen as
  Neurosurgeon does: priced with the measured block times and the link's true bandwidth;
- ``planner``: ``placement.place`` from the entry's directory (its link learnt from this
  cell's warm-up traffic, compute from gossip and measured hops), with ``CodecPricing``
  (float32, float16, uint8, uint8-channel and the client's JPEG as the input's options);
- ``hindsight``: the fastest *measured* plan of the cell among every candidate measured: the
  named strategies and every device/edge plan (any cut, any codec, the JPEG at cut 0) whose
  true price is within ``--slack`` of the best true price (the rest cannot be best).

Each measured plan serves ``--requests`` requests per cell (rotating order, median
reported); a plan priced over 1.5 s serves one (raw pixels at 0.5 Mbit/s take 10 s). The
planner's choice over hindsight (target: within 10%) pools every request of a plan in a cell
(the planner's own requests count as samples of the plan they ran): the median of the planner's
plans over the best plan's median, so a choice equal to hindsight's is 1.0, not the noise of a
few requests on a saturated host; the ratio of the planner's own requests' median over
hindsight's is kept too (``planner_over_hindsight_own_requests``). Host CPU
(``psutil``, % of all cores, averaged over the cell) is reported beside every figure. The
accuracy cost of each codec is the manifest's ``codec_accuracy`` (all 400 held-out images).

Run: ``python -m benchmarks.split_sweep`` (writes ``benchmarks/results/split_sweep.json``
and ``split_sweep.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from p2pinfer.emulation.device_profile import get_profile
from p2pinfer.emulation.link import LinkMatrix
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.placement import CodecPricing, place, plan_segments, planner_segments, result_bytes
from p2pinfer.planning.planner import CandidateUnit, Network, PlanningProblem, evaluate
from p2pinfer.protocol.image_input import JPEG, image_tensor
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.runtime.stage import StageSettings
from p2pinfer.testing import ServiceCluster, ServiceNode, ServiceNodeSpec, start_cluster
from p2pinfer.types import NodeId, UnitName
from zoo import orientation_data
from zoo.manifest import PRETRAINED_ZOO_DIR, VariantInfo, read_manifest

VARIANT = "text-orientation-w1"
DEVICE, EDGE = NodeId("device"), NodeId("edge")
DEVICES = ("rpi4", "jetson-nano", "jetson-orin-nano")
BANDWIDTHS_MBPS = (0.5, 2.0, 8.0, 25.0, 100.0)
SPLIT_CODECS = ("float32", "float16", "uint8")
PLAN_CODECS = ("float32", "float16", "uint8", "uint8-channel")
STRATEGIES = ("local", "offload-jpeg", "offload-raw", *(f"split-{codec}" for codec in SPLIT_CODECS), "planner",
              "hindsight")
MS_PER_ACCURACY = CodecPricing.ms_per_accuracy_of(1.0, 0.5, 1000.0)
"""The QoE exchange rate of a default request (accuracy weight 1, latency 0.5) with a 1 s deadline."""
LONG_PLAN_MS = 1500.0  # plans priced above this serve one request per cell


def describe(segments: Sequence[PlanSegment]) -> str:
    """``device[0-1]>edge[2-4]:uint8``: a plan and the codec of each hop in one short string."""
    parts = []
    for index, segment in enumerate(segments):
        hop = index > 0 or segment.node != DEVICE
        codec = f":{segment.codec}" if hop else ""
        parts.append(f"{segment.node}[{segment.first_block}-{segment.last_block}]{codec}")
    return ">".join(parts)


def split_plan(cut: int, codec: str, last: int) -> list[PlanSegment]:
    """The device runs [0, cut), the edge [cut, last]; boundary ``cut`` travels in ``codec``."""
    edge = PlanSegment(node=EDGE, unit="cpu", first_block=cut, last_block=last, codec=codec)
    if cut == 0:
        return [edge]
    if cut > last:
        return [PlanSegment(node=DEVICE, unit="cpu", first_block=0, last_block=last)]
    return [PlanSegment(node=DEVICE, unit="cpu", first_block=0, last_block=cut - 1), edge]


def client_jpeg(index: int = 2, quality: int = 90) -> bytes:
    """A held-out page cropped to the preprocessing's 256 px and saved as JPEG."""
    return orientation_data.camera_jpeg(orientation_data.HELD_OUT_SEED, index, quality)


def decode_ms(jpeg: bytes, variant: VariantInfo, repeats: int = 7) -> float:
    """Median ms to decode and preprocess the client's JPEG on this host (the edge's speed)."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        image_tensor(jpeg, variant.preprocessing, variant.input_shape, media_type=JPEG)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def truth_problem(variant: VariantInfo, block_ms: dict[NodeId, list[float]], bandwidth_mbps: float, rtt_ms: float,
                  pricing: CodecPricing) -> PlanningProblem:
    """The cell as it is: measured block times (padding included) and the link's true bandwidth."""
    units = [CandidateUnit(node, UnitName("cpu"), dict(enumerate(times))) for node, times in block_ms.items()]
    link = LinkEstimate(bandwidth_mbps=bandwidth_mbps, rtt_ms=rtt_ms)
    last = variant.block_count - 1
    return PlanningProblem(entry_node=DEVICE, input_bytes=variant.input_bytes,
                           output_bytes=[block.output_bytes for block in variant.blocks],
                           result_bytes=result_bytes(variant), units=units,
                           network=Network(links={(DEVICE, EDGE): link, (EDGE, DEVICE): link}),
                           codecs={boundary: options for boundary in range(last + 1)
                                   if (options := pricing.options(variant, boundary))})


def candidate_plans(variant: VariantInfo) -> dict[str, list[PlanSegment]]:
    """Every device/edge plan: local, each cut in each codec, the JPEG at cut 0."""
    last = variant.block_count - 1
    plans = {"local": split_plan(last + 1, "float32", last), "offload-jpeg": split_plan(0, JPEG, last)}
    for cut in range(0, last + 1):
        for codec in PLAN_CODECS:
            plans[f"cut{cut}-{codec}"] = split_plan(cut, codec, last)
    return plans


@dataclass
class Cell:
    device: str
    bandwidth_mbps: float
    rtt_ms: float


def reset_link_model(node: ServiceNode) -> None:
    """A fresh link model on the entry: each cell's planner learns its link from scratch."""
    model = LinkLatencyModel(bandwidth_min_bytes=8 * 1024)
    node.transport.link_model = model
    node.directory.link_model = model


async def run_device(device_name: str, bandwidths: Sequence[float], rtt_ms: float, *, requests: int, slack: float,
                     jpeg: bytes, sample: torch.Tensor, edge_decode_ms: float) -> list[dict[str, Any]]:
    manifest = read_manifest(PRETRAINED_ZOO_DIR)
    variant = manifest.variant(VARIANT)
    last = variant.block_count - 1
    slowdown = get_profile(device_name).slowdown("cpu")
    specs = [ServiceNodeSpec(DEVICE, {VARIANT: (0, last)}, device_slowdown=slowdown),
             ServiceNodeSpec(EDGE, {VARIANT: (0, last)}, device_slowdown=get_profile("edge-server").slowdown("cpu"))]
    matrix = LinkMatrix.from_dict({f"{DEVICE}<->{EDGE}": {"bandwidth_mbps": 100.0, "rtt_ms": rtt_ms}}, seed=7)
    cluster: ServiceCluster = await start_cluster(
        specs, manifest=manifest, link_matrix=matrix, zoo_dir=PRETRAINED_ZOO_DIR,
        settings=StageSettings(timeout_factor=5.0, timeout_margin_ms=30_000.0))
    entry = cluster[DEVICE]
    pricing = CodecPricing(codecs=PLAN_CODECS, ms_per_accuracy=MS_PER_ACCURACY, image=(JPEG, len(jpeg), edge_decode_ms))
    candidates = candidate_plans(variant)
    rows: list[dict[str, Any]] = []

    async def serve(segments: list[PlanSegment]) -> tuple[float, str]:
        started = time.monotonic()
        outcome = await entry.service.execute(request_id=uuid.uuid4().hex, family=variant.family, variant=VARIANT,
                                              exit_block=last, segments=segments, tensor=sample, budget_ms=120_000.0,
                                              allow_degrade=False, image=(JPEG, jpeg))
        return (time.monotonic() - started) * 1000, describe(outcome.executed)

    try:
        # Block times as measured on each node (padding included): the truth that prices plans.
        for _ in range(3):
            await serve(candidates["local"])
            await serve(candidates["cut0-uint8"])
        block_ms = {NodeId(node_id): [statistics.median(node.block_ms[(VARIANT, block)]) for block in range(last + 1)]
                    for node_id, node in cluster.nodes.items()}
        for bandwidth in bandwidths:
            for direction in ((DEVICE, EDGE), (EDGE, DEVICE)):
                matrix.link(*direction).bandwidth_mbps = bandwidth
            reset_link_model(entry)
            psutil.cpu_percent(None)
            cell_started = time.monotonic()
            peer = entry.directory.peer(EDGE)
            assert peer is not None
            for _ in range(2):  # what a node learns its link from: probes and real traffic
                await entry.transport.probe(peer)
                await serve(candidates["offload-jpeg"])
            truth = truth_problem(variant, block_ms, bandwidth, rtt_ms, pricing)
            priced = {name: evaluate(truth, planner_segments(segments)).total_ms
                      for name, segments in candidates.items()}
            best_priced = min(priced.values())
            named: dict[str, str] = {"local": "local", "offload-jpeg": "offload-jpeg", "offload-raw": "cut0-float32"}
            for codec in SPLIT_CODECS:
                named[f"split-{codec}"] = min((f"cut{cut}-{codec}" for cut in range(1, last + 1)),
                                              key=lambda name: priced[name])
            measured_names = sorted({*named.values(), *(name for name, ms in priced.items()
                                                        if ms <= slack * best_priced)})
            latencies: dict[str, list[float]] = {name: [] for name in measured_names}
            executed: dict[str, str] = {}
            planner_ms: list[float] = []
            planner_plans: list[str] = []
            learnt: list[LinkEstimate] = []
            for round_index in range(requests):
                order = measured_names[round_index % len(measured_names):] + \
                    measured_names[:round_index % len(measured_names)]
                for name in [*order, "<planner>"]:
                    if name == "<planner>":
                        estimate = entry.directory.link(DEVICE, EDGE)
                        assert estimate is not None
                        learnt.append(estimate)
                        chosen = plan_segments(place(entry.directory, entry.compute_model, variant, last,
                                                     codecs=pricing))
                        ms, _ = await serve(chosen)
                        planner_ms.append(ms)
                        planner_plans.append(describe(chosen))
                        continue
                    if round_index > 0 and priced[name] > LONG_PLAN_MS:
                        continue
                    ms, executed[name] = await serve(candidates[name])
                    latencies[name].append(ms)
            medians = {name: statistics.median(values) for name, values in latencies.items()}
            hindsight_name = min(medians, key=lambda name: medians[name])
            planner_median = statistics.median(planner_ms)
            # Every request of a plan is a sample of it, the planner's included (same plan, same
            # cell): the planner's choice is then judged by its plans, not by the noise of its own
            # few requests on a saturated host.
            pooled: dict[str, list[float]] = {}
            for name, values in latencies.items():
                pooled.setdefault(describe(candidates[name]), []).extend(values)
            for chosen_plan, ms in zip(planner_plans, planner_ms, strict=True):
                pooled.setdefault(chosen_plan, []).append(ms)
            pooled_medians = {plan_name: statistics.median(values) for plan_name, values in pooled.items()}
            choice_ms = statistics.median(pooled_medians[chosen_plan] for chosen_plan in planner_plans)
            best_plan = min(pooled_medians, key=lambda plan_name: pooled_medians[plan_name])
            cpu = psutil.cpu_percent(None)
            strategies: dict[str, dict[str, Any]] = {}
            for strategy, name in named.items():
                strategies[strategy] = {"plan": describe(candidates[name]), "executed": executed[name],
                                        "p50_ms": round(medians[name], 1), "priced_ms": round(priced[name], 1),
                                        "requests": len(latencies[name])}
            strategies["planner"] = {"plan": max(set(planner_plans), key=planner_plans.count),
                                     "plans": sorted(set(planner_plans)), "p50_ms": round(planner_median, 1),
                                     "requests": len(planner_ms)}
            strategies["hindsight"] = {"plan": describe(candidates[hindsight_name]),
                                       "p50_ms": round(medians[hindsight_name], 1),
                                       "priced_ms": round(priced[hindsight_name], 1),
                                       "requests": len(latencies[hindsight_name])}
            fastest = min(STRATEGIES[:-2], key=lambda strategy: strategies[strategy]["p50_ms"])
            row = {"device": device_name, "device_slowdown": slowdown, "bandwidth_mbps": bandwidth, "rtt_ms": rtt_ms,
                   "strategies": strategies, "fastest_named": fastest,
                   "planner_over_hindsight": round(choice_ms / pooled_medians[best_plan], 3),
                   "planner_over_hindsight_own_requests": round(planner_median / medians[hindsight_name], 3),
                   "pooled_best_plan": best_plan,
                   "measured_candidates": {name: round(medians[name], 1) for name in measured_names},
                   "learnt_link": {"bandwidth_mbps": round(statistics.median(e.bandwidth_mbps for e in learnt), 3),
                                   "rtt_ms": round(statistics.median(e.rtt_ms for e in learnt), 2)},
                   "host_cpu_percent": cpu, "host_load_1min": round(os.getloadavg()[0], 2),
                   "seconds": round(time.monotonic() - cell_started, 1)}
            rows.append(row)
            print(f"{device_name:>16} {bandwidth:6.1f} Mbit/s: "
                  + "  ".join(f"{s} {strategies[s]['p50_ms']:.0f}" for s in STRATEGIES)
                  + f" | planner {strategies['planner']['plan']} x{row['planner_over_hindsight']:.2f} of hindsight"
                  f" | cpu {cpu:.0f}% ({row['seconds']} s)", flush=True)
        rows[0]["block_ms"] = {node: [round(ms, 2) for ms in times] for node, times in block_ms.items()}
    finally:
        await cluster.close()
    return rows


def codec_accuracy(variant: VariantInfo) -> list[dict[str, Any]]:
    """The manifest's measured top-1 change per codec and boundary, and what the planner prices."""
    from p2pinfer.planning.placement import accuracy_drop

    return [{"boundary": entry.boundary, "codec": entry.codec, "accuracy_change": entry.accuracy_change,
             "images": entry.images, "priced_drop": accuracy_drop(variant, entry.boundary, entry.codec),
             "priced_penalty_ms": round((accuracy_drop(variant, entry.boundary, entry.codec) or 0.0) * MS_PER_ACCURACY,
                                        2)}
            for entry in variant.codec_accuracy]


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: p50 ms per strategy, per (device, bandwidth); the fastest named strategy in bold.
    Planner / hindsight: its plans' pooled median over the best plan's (and, in brackets, its own
    requests' median over the hindsight column)."""
    header = ["device", "Mbit/s", *STRATEGIES, "planner / hindsight (own requests)", "planner's plan", "host CPU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for strategy in STRATEGIES:
            text = f"{row['strategies'][strategy]['p50_ms']:.0f}"
            cells.append(f"**{text}**" if strategy == row["fastest_named"] else text)
        lines.append(f"| {row['device']} | {row['bandwidth_mbps']:g} | " + " | ".join(cells)
                     + f" | {row['planner_over_hindsight']:.2f} ({row['planner_over_hindsight_own_requests']:.2f})"
                     + f" | `{row['strategies']['planner']['plan']}`"
                     + f" | {row['host_cpu_percent']:.0f}% |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(dict.fromkeys(row["device"] for row in report["cells"]))
    figure, axes = plt.subplots(1, len(devices), figsize=(5.2 * len(devices), 4.4), squeeze=False, sharey=True)
    styles: dict[str, dict[str, Any]] = {"planner": {"linewidth": 2.5, "color": "black"},
                                         "hindsight": {"linestyle": ":", "color": "grey"}}
    for axis, device in zip(axes[0], devices, strict=True):
        rows = [row for row in report["cells"] if row["device"] == device]
        bandwidths = [row["bandwidth_mbps"] for row in rows]
        for strategy in STRATEGIES:
            axis.plot(bandwidths, [row["strategies"][strategy]["p50_ms"] for row in rows], marker="o",
                      label=strategy, **styles.get(strategy, {}))
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("device<->edge bandwidth, Mbit/s")
        axis.set_title(f"{device} (CPU x{rows[0]['device_slowdown']:g}) + edge server")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"p50 latency, ms ({report['variant']}, RTT {report['rtt_ms']:g} ms)")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


async def run(devices: Sequence[str], bandwidths: Sequence[float], rtt_ms: float, *, requests: int,
              slack: float) -> dict[str, Any]:
    torch.set_num_threads(1)
    variant = read_manifest(PRETRAINED_ZOO_DIR).variant(VARIANT)
    jpeg = client_jpeg()
    sample = torch.from_numpy(image_tensor(jpeg, variant.preprocessing, variant.input_shape, media_type=JPEG))
    edge_decode_ms = decode_ms(jpeg, variant)
    started = time.monotonic()
    cells: list[dict[str, Any]] = []
    for device in devices:
        cells += await run_device(device, bandwidths, rtt_ms, requests=requests, slack=slack, jpeg=jpeg,
                                  sample=sample, edge_decode_ms=edge_decode_ms)
    ratios = [row["planner_over_hindsight"] for row in cells]
    return {"variant": VARIANT, "rtt_ms": rtt_ms, "bandwidths_mbps": list(bandwidths), "devices": list(devices),
            "requests_per_cell": requests, "long_plan_ms": LONG_PLAN_MS, "slack": slack, "seed": 7,
            "ms_per_accuracy": MS_PER_ACCURACY, "jpeg_bytes": len(jpeg), "input_float32_bytes": variant.input_bytes,
            "edge_jpeg_decode_ms": round(edge_decode_ms, 2), "host_cpus": psutil.cpu_count(),
            "gpu": "none: every device runs on this host's CPU (the Orin's GPU is not emulated)",
            "cells": cells, "codec_accuracy": codec_accuracy(variant),
            "planner_over_hindsight": {"median": round(statistics.median(ratios), 3), "max": round(max(ratios), 3),
                                       "within_10_percent": sum(ratio <= 1.10 for ratio in ratios),
                                       "cells": len(ratios)},
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--devices", default=",".join(DEVICES))
    parser.add_argument("--bandwidths", default=",".join(f"{b:g}" for b in BANDWIDTHS_MBPS))
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=3, help="requests per measured plan per cell")
    parser.add_argument("--slack", type=float, default=1.5, help="measure plans priced within this of the best")
    parser.add_argument("--no-plot", action="store_true")
    arguments = parser.parse_args(argv)
    report = asyncio.run(run(arguments.devices.split(","), [float(b) for b in arguments.bandwidths.split(",")],
                             arguments.rtt_ms, requests=arguments.requests, slack=arguments.slack))
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "split_sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    if not arguments.no_plot:
        plot(report, arguments.out / "split_sweep.png")
    print(table(report["cells"]))
    ratios = report["planner_over_hindsight"]
    print(f"planner / hindsight: median {ratios['median']}, max {ratios['max']}, within 10% in "
          f"{ratios['within_10_percent']}/{ratios['cells']} cells; {report['seconds']} s")
    print(f"wrote {arguments.out / 'split_sweep.json'}")


if __name__ == "__main__":
    main()
