"""How long an entry node takes to decide a request: arm, plan and predicted latency.

Why: every request an entry node answers first goes through ``ArmSelection.decide`` (the
feasibility mask prices every arm with the planner, the policy picks one, the planner places
it), on the event loop, before anything is sent. Issue 17 found it at about a tenth of the
loop's time per request; in ``bandwidth-trace`` it is part of every robot's 60 ms.

What runs: a 3-node directory (a Pi-class entry, a Jetson-class peer, an edge server 10x
faster; 20 Mbit/s, 10 ms links) hosting the embedded ``digits-resnet`` family, the node's own
codec pricing, ``adaptive-linucb``, and three kinds of request:

* ``policy-cold``: a policy request when the last prediction is older than the cache
  (``selection.LATENCY_CACHE_S``, 20 ms): what a request pays on a node that is not flooded;
* ``policy-warm``: back-to-back policy requests (the predictions cached);
* ``pinned``: a request that names its variant and exit (the planner places it).

Each kind is timed ``--decisions`` times after a warm-up, in a fresh process per round, rounds
interleaved with ``--compare CHECKOUT`` (the same benchmark run against another checkout's
code, e.g. ``git worktree add /tmp/base <commit>``); the figure is the median over rounds of
each round's p50, with min and max, and the host's CPU::

    python -m benchmarks.decision_time [--rounds 3] [--decisions 400] [--compare DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FAMILY = "digits-resnet"
KINDS = ("policy-cold", "policy-warm", "pinned")
WARMUP = 100


def measure(decisions: int) -> dict[str, list[float]]:
    """Time ``decisions`` decisions of each kind in this process (milliseconds each)."""
    from p2pinfer.planning.peer_directory import PeerView, StaticDirectory
    from p2pinfer.planning.placement import CodecPricing
    from p2pinfer.planning.selection import ArmSelection, NodeState
    from p2pinfer.protocol.link_estimate import LinkEstimate
    from p2pinfer.protocol.schema import InferRequest
    from p2pinfer.types import NodeId
    from zoo.manifest import read_manifest

    manifest = read_manifest()
    names = [variant.name for variant in manifest.variants_of(FAMILY)]

    def view(node: str, block_ms: float) -> PeerView:
        return PeerView(node_id=NodeId(node), url=f"http://{node}",
                        hosted={name: (0, manifest.variant(name).block_count - 1) for name in names},
                        block_ms={name: [block_ms] * manifest.variant(name).block_count for name in names})

    nodes = (NodeId("pi"), NodeId("jetson"), NodeId("edge"))
    directory = StaticDirectory("pi", [view("pi", 10.0), view("jetson", 8.0), view("edge", 1.0)],
                                {(source, destination): LinkEstimate(bandwidth_mbps=20.0, rtt_ms=10.0)
                                 for source in nodes for destination in nodes if source != destination})
    selection = ArmSelection("pi", manifest, directory, "adaptive-linucb", codecs=CodecPricing())
    policy_request = InferRequest(deadline_ms=60.0, family=FAMILY, min_accuracy=0.85)
    pinned_request = InferRequest(deadline_ms=60.0, family=FAMILY, variant=names[0], exit=3)
    state = NodeState()
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for kind in KINDS:
        request = pinned_request if kind == "pinned" else policy_request
        for index in range(WARMUP + decisions):
            if kind == "policy-cold":
                # the private cache of predictions, emptied as 20 ms between requests would
                selection._latencies.clear()
            started = time.perf_counter()
            selection.decide(request, 16384, state)
            elapsed = (time.perf_counter() - started) * 1000
            if index >= WARMUP:
                timings[kind].append(elapsed)
    return timings


def run_round(checkout: Path, decisions: int) -> dict[str, float]:
    """One fresh process on ``checkout``'s code; each kind's p50 (ms)."""
    environment = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(decisions)],
                               cwd=str(checkout), env=environment, capture_output=True, text=True, timeout=600,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"worker on {checkout} failed: {completed.stderr[-2000:]}")
    timings = json.loads(completed.stdout.strip().splitlines()[-1])
    return {kind: statistics.median(values) for kind, values in timings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=400)
    parser.add_argument("--compare", type=Path, default=None, help="another checkout to time in the same rounds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker is not None:
        print(json.dumps(measure(arguments.worker)))
        return

    from benchmarks.scale_out import CpuMeter
    from benchmarks.seed_sweep import spread

    here = Path(__file__).resolve().parent.parent
    checkouts = {"current": here} | ({"compared": arguments.compare} if arguments.compare else {})
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    with CpuMeter() as cpu:
        for _ in range(arguments.rounds):
            for name, checkout in checkouts.items():
                rounds[name].append(run_round(checkout, arguments.decisions))
    result: dict[str, Any] = {
        "benchmark": "decision_time", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "family": FAMILY, "policy": "adaptive-linucb", "rounds": arguments.rounds,
        "decisions_per_kind": arguments.decisions, "host": cpu.summary(),
        "checkouts": {name: str(path) for name, path in checkouts.items()},
        "p50_ms": {name: {kind: spread([one[kind] for one in per_round]) for kind in KINDS}
                   for name, per_round in rounds.items()},
    }
    if arguments.compare:
        result["current_vs_compared"] = {
            kind: round(result["p50_ms"]["current"][kind]["median"] / result["p50_ms"]["compared"][kind]["median"], 3)
            for kind in KINDS}
    print(f"decision time p50 (ms), median [min, max] of {arguments.rounds} rounds; host CPU "
          f"{result['host']['host_cpu']} cores busy of {result['host']['cpu_count']}")
    for name in checkouts:
        cells = "  ".join(f"{kind} {cell['median']:.3f} [{cell['min']:.3f}, {cell['max']:.3f}]"
                          for kind, cell in result["p50_ms"][name].items())
        print(f"  {name:9s} {cells}")
    if arguments.compare:
        print("  current / compared: " + "  ".join(f"{kind} {ratio}x"
                                                   for kind, ratio in result["current_vs_compared"].items()))
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
