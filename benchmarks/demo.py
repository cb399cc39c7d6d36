"""``p2pinfer demo``: a four-node edge cluster on this machine under mixed multi-user load.

The README's first command, so it must work from a fresh clone with nothing but the
project: a Raspberry Pi 4, a Jetson Nano and two edge servers (emulated profiles, real node
processes on loopback), three kinds of users for about a minute, one adaptive policy (the
first bandit of the node's policy registry), a live table per user
group while it runs, then the summary table and where the report and plots are.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.bench import default_out_dir, run_benchmark
from benchmarks.cluster_run import BenchError
from benchmarks.load import RequestRecord
from benchmarks.policies import ADAPTIVE_POLICIES
from benchmarks.progress import QuietDisplay
from benchmarks.report import EnergyModel, error_qoe, percentile, qoe_value, summary_table
from benchmarks.scenario import HarnessError, Scenario, load_scenario, with_duration
from zoo.manifest import read_manifest


def where_requests_ran(records: Sequence[RequestRecord]) -> str:
    """One line on where the answered requests ran: on their entry node, offloaded whole to
    another node, or split across nodes; and what the hops carried (the client's JPEG, a
    boundary codec). The demo's point is collaboration, so it says how much there was."""
    answered = [record for record in records if record.ok and record.plan]
    kinds: Counter[str] = Counter()
    carried: Counter[str] = Counter()
    for record in answered:
        nodes = [segment[0] for segment in record.plan]
        if len(nodes) > 1:
            kinds["split"] += 1
        elif nodes[0] == record.entry_node:
            kinds["local"] += 1
        else:
            kinds["offloaded"] += 1
        for timing in record.timings:
            if timing.get("wire_bytes"):
                carried[str(timing.get("codec"))] += 1
    line = (f"where {len(answered)} answered requests ran: {kinds['local']} on their entry node, "
            f"{kinds['offloaded']} offloaded whole, {kinds['split']} split across nodes")
    if carried:
        line += "; hops carried " + ", ".join(f"{name} x{count}" for name, count in carried.most_common())
    return line


class GroupStats:
    """Running figures of one user group for the live table."""

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.on_time = 0
        self.correct = 0
        self.qoe_total = 0.0
        self.latencies: list[float] = []

    def add(self, record: RequestRecord, qoe: float) -> None:
        self.requests += 1
        self.qoe_total += qoe
        if record.ok:
            self.ok += 1
            self.on_time += 1 if record.deadline_met else 0
            self.correct += 1 if record.correct else 0
            if record.latency_ms is not None:
                self.latencies.append(record.latency_ms)


class LiveTable:
    """A rich live table, one row per user group: requests, p50, miss rate, accuracy, QoE."""

    def __init__(self, console: Any, scenario: Scenario, energy_model: EnergyModel) -> None:
        from rich.live import Live

        self.console = console
        self.scenario = scenario
        self.energy_model = energy_model
        self.groups: dict[str, GroupStats] = defaultdict(GroupStats)
        self.policy = ""
        self.elapsed_s = 0.0
        self.status = "starting the cluster"
        self.live = Live(self._table(), console=console, refresh_per_second=4, transient=False)

    def _table(self) -> Any:
        from rich.table import Table

        title = (f"{self.scenario.name} · policy {self.policy or '?'} · "
                 f"{min(self.elapsed_s, self.scenario.duration_s):.0f}/{self.scenario.duration_s:.0f} s · "
                 f"{self.status}")
        table = Table(title=title)
        for column in ("group", "requests", "ok", "p50 ms", "miss rate", "accuracy", "mean QoE"):
            table.add_column(column, justify="left" if column == "group" else "right")
        for group in self.scenario.users:
            stats = self.groups.get(group.group)
            if stats is None or not stats.requests:
                table.add_row(group.group, "0", "", "", "", "", "")
                continue
            p50 = percentile(stats.latencies, 50)
            table.add_row(group.group, str(stats.requests), str(stats.ok), "–" if p50 is None else f"{p50:.1f}",
                          f"{100 * (1 - stats.on_time / stats.requests):.1f}%",
                          f"{100 * stats.correct / stats.ok:.1f}%" if stats.ok else "–",
                          f"{stats.qoe_total / stats.requests:.3f}")
        return table

    def __enter__(self) -> LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.live.update(self._table())
        self.live.__exit__(exc_type, exc, traceback)

    def start_policy(self, policy: str, duration_s: float) -> None:
        self.policy = policy
        self.groups.clear()
        self.status = "starting the cluster"
        self.live.update(self._table())

    def record(self, record: RequestRecord) -> None:
        if record.ok and record.latency_ms is not None:
            energy = self.energy_model.energy(record.variant, record.exit)
            qoe = qoe_value(record.qoe_weights, 1.0 if record.correct else 0.0, record.latency_ms, record.deadline_ms,
                            record.deadline_met, energy)
        else:
            qoe = error_qoe(record.qoe_weights, record.deadline_ms)
        self.policy = record.policy
        self.groups[record.group].add(record, qoe)

    def tick(self, elapsed_s: float) -> None:
        self.elapsed_s = elapsed_s
        self.status = "running" if elapsed_s < self.scenario.duration_s else "finishing"
        self.live.update(self._table())

    def end_policy(self, policy: str, status: str) -> None:
        self.status = status
        self.live.update(self._table())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pinfer demo",
        description="A 4-node local edge cluster (Raspberry Pi 4, Jetson Nano, two edge servers) under about a "
                    "minute of mixed multi-user load, with a live table, then the summary and plots.")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default: 60)")
    parser.add_argument("--policy", default=None,
                        help=f"policy to run (default: {ADAPTIVE_POLICIES[0]}, the registry's first bandit)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/demo-<timestamp>)")
    parser.add_argument("--scenario", default="demo", help="scenario name or TOML path (default: demo)")
    parser.add_argument("--no-live", action="store_true", help="no live table (for logs and CI)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``p2pinfer demo``; 0 on success, 1 if the report's invariants fail, 2 on an error."""
    from p2pinfer.cli.console import cli_console

    arguments = build_parser().parse_args(argv)
    console = cli_console()
    try:
        scenario = load_scenario(arguments.scenario)
        if arguments.duration is not None:
            scenario = with_duration(scenario, arguments.duration)
    except HarnessError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    policy = arguments.policy or ADAPTIVE_POLICIES[0]
    out_dir = arguments.out or default_out_dir(scenario)
    node_list = ", ".join(f"{node.name} ({node.device_profile})" for node in scenario.nodes)
    console.print(f"[bold]p2pinfer demo[/bold]: {node_list}; "
                  f"{sum(scenario.max_users(group) for group in scenario.users)} users in "
                  f"{len(scenario.users)} groups for {scenario.duration_s:g} s, policy {policy}")
    energy_model = EnergyModel.from_manifest(read_manifest(scenario.zoo_dir))
    display = QuietDisplay() if arguments.no_live else LiveTable(console, scenario, energy_model)
    started = time.monotonic()
    try:
        outcome = run_benchmark(scenario, [policy], out_dir, display=display, accept_substitute=True)
    except (HarnessError, BenchError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    report = outcome.report
    if not any(entry.get("status") == "ran" for entry in report["policies"].values()):
        for name, entry in report["policies"].items():
            console.print(f"{name}: {entry['status']}: {entry.get('reason', '')[-800:]}", markup=False)
        console.print("[red]the demo cluster did not run[/red]")
        return 1
    console.print()
    console.print(summary_table(report), markup=False, highlight=False, soft_wrap=True)
    console.print(where_requests_ran(outcome.records), markup=False)
    for name, reason in report["unavailable"].items():
        console.print(f"unavailable: {name}: {reason}", markup=False)
    for warning in report["warnings"]:
        console.print(f"note: {warning}", markup=False)
    for events in report["events"].values():
        for event in events:
            console.print(f"event {event['at_s']:g}s {event['kind']} {event.get('node') or ''}: {event['status']} "
                          f"{event['detail']}", markup=False)
    console.print(f"\nfinished in {time.monotonic() - started:.0f} s · report {out_dir / 'report.json'} · "
                  f"summary {out_dir / 'summary.md'}")
    console.print("plots: " + ", ".join(str(out_dir / name) for name in outcome.plots))
    if not outcome.ok:
        console.print("[red]invariants violated:[/red] " + "; ".join(report["invariants"]["violations"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
