"""Gossip simulation: the real ``GossipAgent`` (same merge, failure detector and message
building as a node) driven in-process on simulated time, with N virtual nodes and
independent message loss.

``python -m benchmarks.gossip_sim --out DIR`` writes ``gossip_sim.json`` and
``gossip_sim.png``. For each N and loss rate it starts converged clusters and, at round 0,
(a) four nodes each publish a newsworthy update (a new variant profile) in rounds 0-3 and
(b) another node is killed (every message to it is lost, it runs no more rounds). It reports

* rounds until every live node holds an update (median, p99 over all updates);
* rounds until every live node marks the killed node dead (median, p99);
* false ``dead`` declarations about nodes that were alive (observer-level: one per node
  that declared it), false suspicions raised by failed probes of live nodes, refutations;
* bytes per node per round: encoded msgpack sizes of every request and reply sent.

Model: a round is one protocol period, synchronous as in SWIM's analysis: every node runs
its round (in a random order fixed per run), and what any node received is merged at the
end of the round, so news moves at most one hop per round (``RoundSynchronousAgent``; the
merge, failure detector and message building are the real ones). Each message (request
or reply) is lost independently with the given probability; a lost reply still reached
the responder. Probe timeouts do not exist in
simulated time: an unanswered message simply fails.

Signing cost per hop (HMAC-SHA256 with sha256 of the payload, sender + receiver) for a
4 KB and a 1 MB payload is measured with the real ``p2pinfer.auth`` and reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, TypedDict

import msgspec

from p2pinfer.errors import PeerUnavailable
from p2pinfer.membership.gossip import GossipAgent, GossipSettings
from p2pinfer.membership.messages import Address, GossipMessage, Load, Member, Status, Thermal
from p2pinfer.membership.view import Change, ChangeKind, MergeResult, View
from p2pinfer.protocol.auth import Verifier, request_header, sign
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId

SIZES = (16, 64, 256, 1024)
LOSSES = (0.0, 0.05, 0.10, 0.20)
REPEATS = {16: 24, 64: 12, 256: 4, 1024: 2}
MAX_ROUNDS = 150
UPDATES_PER_RUN = 4
"""Independent updates per run (published in rounds 0, 1, 2, 3 by different nodes)."""


class SimulatedNetwork:
    """Delivers messages between agents by direct calls, dropping each with ``loss``."""

    def __init__(self, loss: float, rng: random.Random) -> None:
        self.loss = loss
        self.rng = rng
        self.agents: dict[Address, GossipAgent] = {}
        self.down: set[Address] = set()
        self.bytes_sent = 0
        self.messages_sent = 0
        self.largest_message = 0
        self._encoder = msgspec.msgpack.Encoder()

    def _count(self, message: GossipMessage) -> None:
        size = len(self._encoder.encode(message))
        self.bytes_sent += size
        self.messages_sent += 1
        if size > self.largest_message:
            self.largest_message = size

    async def send(self, address: Address, message: GossipMessage, timeout_s: float,
                   recipient: NodeId | None = None) -> GossipMessage:
        self._count(message)
        if address in self.down or self.rng.random() < self.loss:
            raise PeerUnavailable("lost")
        reply = await self.agents[address].handle(message)
        self._count(reply)
        if self.rng.random() < self.loss:
            raise PeerUnavailable("reply lost")
        return reply


class RoundSynchronousAgent(GossipAgent):
    """The real agent, except that what it receives is merged at the end of the round.

    This makes rounds synchronous, as in SWIM's analysis: news moves at most one hop per
    round (a node forwards in round r+1 what it learned in round r). It is conservative:
    a live node with latency far below the period would often forward within the same
    period, and replies carry no corrections (they are computed by the merge)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # GossipAgent's own arguments
        super().__init__(*args, **kwargs)
        self._inbox: list[tuple[list[Member], float]] = []

    def _absorb(self, records: list[Member], now: float) -> MergeResult:
        self._inbox.append((records, now))
        return MergeResult([], [])

    def end_round(self) -> None:
        inbox, self._inbox = self._inbox, []
        for records, now in inbox:
            super()._absorb(records, now)


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(index: int, incarnation: int, rng: random.Random, size: int) -> Member:
    """A realistic record: two variants with six-block profiles, load, heat, eight links."""
    links = {f"n{(index + step) % size:04d}": LinkEstimate(rtt_ms=round(rng.uniform(0.5, 30), 2),
                                                           bandwidth_mbps=round(rng.uniform(5, 900), 1))
             for step in range(1, min(size, 9))}
    return Member(
        node_id=NodeId(f"n{index:04d}"), incarnation=incarnation, address=Address(f"sim-{index}:9000"),
        load=Load(queue_depth=rng.randrange(8), in_flight=rng.randrange(4), utilisation=round(rng.random(), 3),
                  queue_capacity=64),
        thermal=Thermal(temperature_c=round(rng.uniform(40, 80), 1), throttle=0.0),
        variants={variant: [round(rng.uniform(0.5, 8.0), 3) for _ in range(6)]
                  for variant in ("digits-resnet-w1.0", "digits-resnet-w0.5-int8")},
        compute_units=["cpu"], links=links)


def build_cluster(size: int, loss: float, seed: int, settings: GossipSettings
                  ) -> tuple[SimulatedNetwork, SimulatedClock, list[RoundSynchronousAgent]]:
    """``size`` agents whose views already hold every member (a converged cluster)."""
    rng = random.Random(seed)
    network = SimulatedNetwork(loss, random.Random(seed + 1))
    clock = SimulatedClock()
    records = [_record(index, 1, rng, size) for index in range(size)]
    template = View(records[0])
    for record in records[1:]:
        template._put(record, None)
    agents = []
    for index, record in enumerate(records):
        agent = RoundSynchronousAgent(record.node_id, record.address, network.send, settings=settings, clock=clock,
                            rng=random.Random(seed * 7919 + index), incarnation=1)
        agent.replace_view(template.replicate(record))
        network.agents[record.address] = agent
        agents.append(agent)
    return network, clock, agents


class RunResult(TypedDict):
    """What one simulated run measured (``run_once``)."""

    rounds_run: int
    dissemination_rounds: list[int | None]
    detection_rounds: int | None
    false_dead_declarations: int
    false_dead_nodes: int
    false_suspicions: int
    refutations: int
    bytes_per_node_per_round: float
    messages_per_node_per_round: float
    largest_message_bytes: int


async def run_once(size: int, loss: float, seed: int, settings: GossipSettings) -> RunResult:
    network, clock, agents = build_cluster(size, loss, seed, settings)
    rng = random.Random(seed + 2)
    order = list(agents)
    rng.shuffle(order)  # each node's fixed phase within the period
    victim, *updaters = rng.sample(agents, 1 + UPDATES_PER_RUN)
    killed = {victim.node_id}
    false_dead: Counter[NodeId] = Counter()
    false_suspicions = 0  # raised by a node's own failed probes of a live node
    refutations = 0

    def watcher(observer: NodeId):
        def watch(change: Change) -> None:
            nonlocal false_suspicions, refutations
            if change.node_id in killed:
                return
            if change.kind is ChangeKind.DIED:
                false_dead[change.node_id] += 1
            elif change.kind is ChangeKind.SUSPECTED and change.member.suspected_by == observer:
                false_suspicions += 1
            elif change.kind is ChangeKind.REFUTED:
                refutations += 1
        return watch

    for agent in agents:
        agent.on_change(watcher(agent.node_id))

    # Round 0: one node killed. Rounds 0..UPDATES_PER_RUN-1: one update each to disseminate.
    network.down.add(victim.address)
    live = [agent for agent in order if agent is not victim]
    published: dict[int, tuple[RoundSynchronousAgent, int]] = {}
    disseminated: dict[int, int | None] = {index: None for index in range(len(updaters))}
    detected_at: int | None = None
    rounds = 0
    while rounds < MAX_ROUNDS and (None in disseminated.values() or detected_at is None):
        clock.now = rounds * settings.interval_s
        if rounds < len(updaters):
            updater = updaters[rounds]
            updater.update_self(variants={**updater.view.own.variants, f"digits-resnet-w0.25-r{rounds}": [0.4] * 6})
            published[rounds] = (updater, updater.view.own.revision)
        for agent in live:
            await agent.run_round()
        for agent in live:
            agent.end_round()
        rounds += 1
        for index, (updater, revision) in published.items():
            if disseminated[index] is None and all(
                    (record := agent.view.members.get(updater.node_id)) is not None and record.revision >= revision
                    for agent in live):
                disseminated[index] = rounds - index
        if detected_at is None and all(
                (record := agent.view.members.get(victim.node_id)) is None or record.status is Status.DEAD
                for agent in live):
            detected_at = rounds
    return {
        "rounds_run": rounds,
        "dissemination_rounds": list(disseminated.values()),
        "detection_rounds": detected_at,
        "false_dead_declarations": sum(false_dead.values()),
        "false_dead_nodes": len(false_dead),
        "false_suspicions": false_suspicions,
        "refutations": refutations,
        "bytes_per_node_per_round": network.bytes_sent / (len(live) * rounds),
        "messages_per_node_per_round": network.messages_sent / (len(live) * rounds),
        "largest_message_bytes": network.largest_message,
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _summary(values: list[int | None]) -> dict[str, float | int | None]:
    done = [float(value) for value in values if value is not None]
    return {
        "median": statistics.median(done) if done else None,
        "p99": _percentile(done, 0.99) if done else None,
        "max": max(done) if done else None,
        "unfinished": sum(value is None for value in values),
    }


def measure_signing(batches: int = 7, per_batch: int = 100) -> dict[str, dict[str, float]]:
    """Microseconds to sign (sender) and verify (receiver) one message, per payload size:
    the median over ``batches`` batches (and the best batch), so a busy shared machine skews
    it less."""
    secret = b"cluster-secret-for-measurement"
    results = {}
    for label, size in (("4KB", 4 * 1024), ("1MB", 1024 * 1024)):
        payload = os.urandom(size)
        header = request_header("POST", "/v1/stage")
        count = per_batch if size < 100_000 else max(5, per_batch // 10)
        sign_times, verify_times = [], []
        for _ in range(batches):
            verifier = Verifier(secret, nonce_cache_size=10 * count, recipients={"n0002"})
            now = time.time()
            started = time.perf_counter()
            signed = [sign(secret, "n0001", header, payload, now, to="n0002") for _ in range(count)]
            sign_times.append((time.perf_counter() - started) / count)
            started = time.perf_counter()
            for headers in signed:
                verifier.verify(headers, header, payload, now)
            verify_times.append((time.perf_counter() - started) / count)
        sign_s, verify_s = statistics.median(sign_times), statistics.median(verify_times)
        results[label] = {"payload_bytes": size, "sign_us": round(sign_s * 1e6, 1),
                          "verify_us": round(verify_s * 1e6, 1),
                          "per_hop_us": round((sign_s + verify_s) * 1e6, 1),
                          "best_per_hop_us": round((min(sign_times) + min(verify_times)) * 1e6, 1),
                          "per_hop_gbps_equivalent": round(size * 8 / (sign_s + verify_s) / 1e9, 2)}
    return results


async def simulate(sizes: tuple[int, ...], losses: tuple[float, ...], repeats: dict[int, int],
                   settings: GossipSettings, seed: int) -> list[dict[str, object]]:
    rows = []
    for size in sizes:
        for loss in losses:
            started = time.perf_counter()
            runs = [await run_once(size, loss, seed + 1000 * index + size, settings)
                    for index in range(repeats.get(size, 1))]
            row = {
                "nodes": size,
                "loss": loss,
                "repeats": len(runs),
                "dissemination_rounds": _summary([value for run in runs for value in run["dissemination_rounds"]]),
                "detection_rounds": _summary([run["detection_rounds"] for run in runs]),
                "false_dead_declarations": sum(run["false_dead_declarations"] for run in runs),
                "false_dead_nodes": sum(run["false_dead_nodes"] for run in runs),
                "false_suspicions": sum(run["false_suspicions"] for run in runs),
                "refutations": sum(run["refutations"] for run in runs),
                "node_rounds": sum(run["rounds_run"] * (size - 1) for run in runs),
                "bytes_per_node_per_round": round(statistics.mean(run["bytes_per_node_per_round"] for run in runs)),
                "messages_per_node_per_round": round(
                    statistics.mean(run["messages_per_node_per_round"] for run in runs), 2),
                "largest_message_bytes": max(run["largest_message_bytes"] for run in runs),
                "dissemination_target_rounds": math.ceil(math.log2(size)) + 3,
                "wall_s": round(time.perf_counter() - started, 2),
            }
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict) -> str:
    dissemination, detection = row["dissemination_rounds"], row["detection_rounds"]
    return (f"N={row['nodes']:5d} loss={row['loss']:4.0%}  dissemination median {dissemination['median']} "
            f"p99 {dissemination['p99']} (target <= {row['dissemination_target_rounds']})  "
            f"detection median {detection['median']} p99 {detection['p99']}  "
            f"false dead {row['false_dead_declarations']}  false suspicions {row['false_suspicions']}  "
            f"{row['bytes_per_node_per_round']} B/node/round  [{row['wall_s']} s]")


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets, printed (not asserted)."""
    lines = []
    for row in rows:
        median = row["dissemination_rounds"]["median"]
        ok = median is not None and median <= row["dissemination_target_rounds"]
        lines.append(f"dissemination N={row['nodes']} loss={row['loss']:.0%}: median {median} <= "
                     f"{row['dissemination_target_rounds']}: {'met' if ok else 'MISSED'}")
    for row in rows:
        if row["loss"] <= 0.10:
            ok = row["false_dead_declarations"] == 0
            lines.append(f"no false dead N={row['nodes']} loss={row['loss']:.0%}: "
                         f"{row['false_dead_declarations']} declarations: {'met' if ok else 'MISSED'}")
    for loss in sorted({row["loss"] for row in rows}):
        sizes = [row for row in rows if row["loss"] == loss]
        large = [row["bytes_per_node_per_round"] for row in sizes if row["nodes"] >= 64]
        if len(large) >= 2:
            spread = max(large) / min(large)
            lines.append(f"bytes/node/round flat in N (N>=64) at loss {loss:.0%}: max/min = {spread:.2f}: "
                         f"{'met' if spread <= 1.25 else 'MISSED'}")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    losses = sorted({row["loss"] for row in rows})
    sizes = sorted({row["nodes"] for row in rows})
    for loss in losses:
        series = [row for row in rows if row["loss"] == loss]
        label = f"loss {loss:.0%}"
        axes[0].errorbar(
            [row["nodes"] for row in series],
            [row["dissemination_rounds"]["median"] for row in series],
            yerr=[[0 for _ in series],
                  [(row["dissemination_rounds"]["p99"] or 0) - (row["dissemination_rounds"]["median"] or 0)
                   for row in series]],
            marker="o", capsize=3, label=label)
        axes[1].errorbar(
            [row["nodes"] for row in series],
            [row["detection_rounds"]["median"] for row in series],
            yerr=[[0 for _ in series],
                  [(row["detection_rounds"]["p99"] or 0) - (row["detection_rounds"]["median"] or 0)
                   for row in series]],
            marker="o", capsize=3, label=label)
        axes[2].plot([row["nodes"] for row in series],
                     [row["false_suspicions"] / max(1, row["node_rounds"]) * 1000 for row in series],
                     marker="o", label=f"{label} (false dead: {sum(r['false_dead_declarations'] for r in series)})")
        axes[3].plot([row["nodes"] for row in series], [row["bytes_per_node_per_round"] / 1024 for row in series],
                     marker="o", label=label)
    axes[0].plot(sizes, [math.ceil(math.log2(size)) + 3 for size in sizes], "k--", label="ceil(log2 N)+3")
    titles = ["rounds to full dissemination (median, bar to p99)", "rounds until all mark a killed node dead",
              "false suspicions raised per 1000 node-rounds", "KiB sent per node per round"]
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.set_xlabel("nodes N")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[3].set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--losses", type=float, nargs="+", default=list(LOSSES))
    parser.add_argument("--repeat-scale", type=float, default=1.0, help="multiply the default repeats")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    settings = GossipSettings(interval_s=1.0, tombstone_s=1e9, resync_interval_s=30.0, jitter=0.0)
    repeats = {size: max(1, round(REPEATS.get(size, 1) * args.repeat_scale)) for size in args.sizes}
    started = time.perf_counter()
    cpu_started = time.process_time()
    rows = asyncio.run(simulate(tuple(args.sizes), tuple(args.losses), repeats, settings, args.seed))
    signing = measure_signing()
    targets = check_targets(rows)
    for line in targets:
        print(line)
    for label, cost in signing.items():
        print(f"signing {label}: sign {cost['sign_us']} us + verify {cost['verify_us']} us = "
              f"{cost['per_hop_us']} us per hop (best batch {cost['best_per_hop_us']} us)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "description": "SWIM-style gossip simulated with the real GossipAgent on simulated time",
        "settings": dataclasses.asdict(settings),
        "repeats": repeats,
        "rows": rows,
        "targets": targets,
        "signing_cost_per_hop": signing,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu_started, 1),
    }
    (args.out / "gossip_sim.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, args.out / "gossip_sim.png")
    print(f"wrote {args.out / 'gossip_sim.json'} and {args.out / 'gossip_sim.png'} in {report['wall_s']} s "
          f"({report['cpu_s']} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
