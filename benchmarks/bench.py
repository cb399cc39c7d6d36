"""``p2pinfer bench SCENARIO``: run one scenario's workload against each policy, then report.

For each policy a fresh cluster is started from the scenario (``--policy NAME``), warmed up,
driven with the *same* precomputed arrivals while the scenario's timed events are applied
and the nodes are sampled, and stopped (``benchmarks.policy_run``). Then every request is
scored, the oracle in hindsight is computed from all runs' measurements, and ``report.json``,
``requests.jsonl``, ``nodes.jsonl``, the PNG plots and ``summary.md`` are written to the run
directory.

Policy names are checked against the node's own registry (``benchmarks.policies``) before any
node starts; a node that answers with another policy's name makes that policy unavailable
(reported, not fatal).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cluster_run import BenchError
from benchmarks.load import RequestRecord, build_schedule, held_out_inputs
from benchmarks.policies import DEFAULT_POLICIES, check_policies
from benchmarks.policy_run import PolicyRun, run_policy
from benchmarks.progress import Display, ProgressDisplay, QuietDisplay
from benchmarks.report import (
    DEFINITIONS,
    SCHEMA_VERSION,
    EnergyModel,
    check_invariants,
    issue_targets,
    now_text,
    qoe_function_name,
    score,
    summarise_policy,
    summary_markdown,
    summary_table,
    unavailable_entry,
    write_json,
    write_jsonl,
)
from benchmarks.sampling import SAMPLE_INTERVAL_S
from benchmarks.scenario import (
    HarnessError,
    Scenario,
    ScenarioError,
    load_scenario,
    trace_files,
    with_duration,
    with_family,
    with_nodes,
    with_traces,
)
from p2pinfer.planning.selection import known_policies


@dataclass
class BenchmarkOutcome:
    report: dict[str, Any]
    out_dir: Path
    plots: list[str]
    records: list[RequestRecord]

    @property
    def ok(self) -> bool:
        return bool(self.report.get("invariants", {}).get("ok"))


def default_out_dir(scenario: Scenario) -> Path:
    return Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


async def run_benchmark_async(scenario: Scenario, policies: Sequence[str], out_dir: Path, *,
                              display: Display | None = None,
                              sample_interval_s: float = SAMPLE_INTERVAL_S,
                              on_policy_done: Callable[[PolicyRun], None] | None = None,
                              accept_substitute: bool = False) -> BenchmarkOutcome:
    from benchmarks.oracle import compute_oracle, floor_summary
    from benchmarks.plots import write_plots
    from benchmarks.scale_out import CpuMeter
    from zoo.manifest import read_manifest

    if not policies:
        raise BenchError("no policy to run")
    policies = check_policies(policies)  # an unknown name fails here, before any node starts
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / "nodes"
    work_dir.mkdir(exist_ok=True)
    display = display or QuietDisplay()
    inputs = await asyncio.to_thread(held_out_inputs, [group.family for group in scenario.users], scenario.zoo_dir)
    image_count = min(len(held_out.labels) for held_out in inputs.values())
    schedule = build_schedule(scenario, image_count)
    secret = secrets.token_hex(16)
    warnings: list[str] = []
    runs: list[PolicyRun] = []
    created = now_text()
    with display, CpuMeter() as cpu:  # the host is shared: its CPU use is part of every figure
        for policy in policies:
            display.start_policy(policy, scenario.duration_s)
            run = await run_policy(scenario, schedule, inputs, policy, work_dir, secret, warnings,
                                   display, sample_interval_s, accept_substitute)
            display.end_policy(policy, run.status if run.status == "ran" else f"{run.status}: {run.reason[:60]}")
            runs.append(run)
            if on_policy_done is not None:
                on_policy_done(run)

    manifest = read_manifest(scenario.zoo_dir)
    energy_model = EnergyModel.from_manifest(manifest)
    records = [record for run in runs for record in run.records]
    score(records, energy_model)
    oracle = compute_oracle(records, scenario.duration_s, manifest=manifest, energy_model=energy_model)
    policies_section: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for run in runs:
        if run.status == "ran":
            summary = summarise_policy(run.policy, run.records, scenario.duration_s)
            summary["latency_floor_ms"] = floor_summary(oracle, run.policy)
            summary["wall_s"] = run.wall_s
            policies_section[run.policy] = summary
        else:
            unavailable[run.policy] = run.reason
            policies_section[run.policy] = {**unavailable_entry(run.policy, run.reason), "status": run.status,
                                            "wall_s": run.wall_s}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": created,
        "scenario": scenario.as_dict(),
        "seed": scenario.seed,
        "duration_s": scenario.duration_s,
        "policies_requested": list(policies),
        "policies": policies_section,
        "unavailable": unavailable,
        "oracle": oracle.summary,
        "events": {run.policy: [event.as_dict() for event in run.events] for run in runs if run.status == "ran"},
        "arrivals": {"open_loop_scheduled": len(schedule.arrivals), "users": len(schedule.users),
                     "closed_loop_users": len(schedule.closed_loop_users)},
        "warnings": warnings,
        "host": cpu.summary(),
        "policies_known": known_policies(),
        "qoe_function": qoe_function_name(),
        "definitions": DEFINITIONS,
    }
    report["targets"] = issue_targets(report)
    violations = check_invariants(report, records, scheduled=len(schedule.arrivals), oracle_floor=oracle.floors,
                                  oracle_qoe=oracle.qoe_by_key)
    report["invariants"] = {"ok": not violations, "violations": violations}
    write_jsonl(out_dir / "requests.jsonl", records)
    write_jsonl(out_dir / "nodes.jsonl", [sample for run in runs for sample in run.samples])
    plots = await asyncio.to_thread(write_plots, out_dir, records, oracle, scenario.events,
                                    {run.policy: run.samples for run in runs if run.status == "ran"},
                                    scenario.duration_s)
    report["files"] = {"requests": "requests.jsonl", "nodes": "nodes.jsonl", "summary": "summary.md", "plots": plots}
    write_json(out_dir / "report.json", report)
    (out_dir / "summary.md").write_text(summary_markdown(report, plots), encoding="utf-8")
    return BenchmarkOutcome(report, out_dir, plots, records)


def run_benchmark(scenario: Scenario, policies: Sequence[str], out_dir: Path, **options: Any) -> BenchmarkOutcome:
    return asyncio.run(run_benchmark_async(scenario, policies, out_dir, **options))


# ---- command line --------------------------------------------------------------------------------------------------


def build_parser(prog: str = "p2pinfer bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a scenario's workload against each policy on a fresh local cluster and "
                               "write report.json, requests.jsonl, PNG plots and summary.md.")
    parser.add_argument("scenario", help="scenario name (benchmarks/scenarios/NAME.toml) or path to a TOML file")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                        help="comma-separated policies (default: every static baseline and bandit the node has; "
                             "an unknown name is an error naming the known ones)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load (default: the scenario's); event times scale with it")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<scenario>-<timestamp>)")
    parser.add_argument("--trace", default=None,
                        help="bandwidth trace FILE or DIR (`time_s mbit_per_s` lines) for every link of the scenario")
    parser.add_argument("--trace-scale", type=float, default=None, help="multiply every trace's Mbit/s by this")
    parser.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    parser.add_argument("--family", default=None,
                        help="run the scenario on this family instead (every node hosts it, every user asks for "
                             "it), e.g. text-orientation, the real pretrained family")
    parser.add_argument("--zoo", default=None,
                        help="with --family: the zoo holding it ('' embedded, 'pretrained', or a directory; "
                             "default: the scenario's if it holds the family, else the pretrained zoo)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run the whole benchmark with this many seeds (the seed, +1, ...) into OUT/seed-S/ and "
                             "write OUT/report.json with the median, min and max of every figure")
    parser.add_argument("--nodes", default=None,
                        help="run on a subset of the scenario's nodes, comma separated (links, entries and events of "
                             "the others are dropped)")
    parser.add_argument("--sample-interval", type=float, default=SAMPLE_INTERVAL_S,
                        help="seconds between node samples (utilisation, temperature)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    return parser


def prepare_scenario(arguments: argparse.Namespace) -> Scenario:
    from dataclasses import replace

    scenario = load_scenario(arguments.scenario)
    if arguments.nodes:
        scenario = with_nodes(scenario, [name.strip() for name in arguments.nodes.split(",") if name.strip()])
    if arguments.duration is not None:
        scenario = with_duration(scenario, arguments.duration)
    if arguments.family is not None:
        scenario = with_family(scenario, arguments.family, arguments.zoo)
    if arguments.trace is not None:
        trace_files(arguments.trace)  # fails early, naming the path
    scenario = with_traces(scenario, arguments.trace, arguments.trace_scale)
    if arguments.seed is not None:
        if arguments.seed < 0:
            raise ScenarioError("seed", f"must be >= 0, got {arguments.seed}")
        scenario = replace(scenario, seed=arguments.seed)
    return scenario


def parse_policies(text: str) -> list[str]:
    """The comma-separated policy names, canonical and checked against the node's registry."""
    policies = check_policies(text.split(","))
    if not policies:
        raise ScenarioError("policies", "give at least one policy name")
    return policies


def main(argv: Sequence[str] | None = None) -> int:
    """``p2pinfer bench``; returns 0 when the run finished and its invariants hold, 1 when an
    invariant is violated or no policy could run, 2 on a usage or scenario error."""
    from p2pinfer.cli.console import cli_console

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gossip-scaling":  # a benchmark of its own (real nodes, idle: membership costs)
        from benchmarks.gossip_scaling import main as gossip_main

        return gossip_main(argv)
    if argv and argv[0] in ("scale-out", "ramp"):  # benchmarks of their own, with their own contracts
        from benchmarks.scale_out import main as scale_main

        return scale_main(argv)
    arguments = build_parser().parse_args(argv)
    console = cli_console(stderr=True)
    try:
        scenario = prepare_scenario(arguments)
        policies = parse_policies(arguments.policies)
    except HarnessError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    except Exception as error:  # trace and link errors of p2pinfer carry their own message
        from p2pinfer.errors import P2PError

        if isinstance(error, P2PError):
            console.print(f"[red]error:[/red] {error.message}")
            return 2
        raise
    out_dir = arguments.out or default_out_dir(scenario)
    display: Display = QuietDisplay() if arguments.no_progress else ProgressDisplay(console)
    if arguments.seeds < 1:
        console.print(f"[red]error:[/red] --seeds must be >= 1, got {arguments.seeds}")
        return 2
    if arguments.seeds > 1:
        return _sweep(scenario, policies, out_dir, arguments, display, console)
    console.print(f"[bold]{scenario.name}[/bold]: {len(scenario.nodes)} nodes, {scenario.duration_s:g} s, "
                  f"policies {', '.join(policies)} → {out_dir}")
    try:
        outcome = run_benchmark(scenario, policies, out_dir, display=display,
                                sample_interval_s=arguments.sample_interval)
    except HarnessError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    if not any(entry.get("status") == "ran" for entry in outcome.report["policies"].values()):
        for name, entry in outcome.report["policies"].items():
            console.print(f"[red]{name}: {entry['status']}[/red]: {entry.get('reason', '')[-800:]}")
        console.print(f"[red]no policy ran[/red] · report: {outcome.out_dir / 'report.json'}")
        return 1
    print(summary_table(outcome.report))
    for name, reason in outcome.report["unavailable"].items():
        print(f"unavailable: {name}: {reason}")
    print(f"report: {outcome.out_dir / 'report.json'} · plots: {', '.join(outcome.plots)}")
    if not outcome.ok:
        console.print("[red]invariants violated:[/red] " + "; ".join(outcome.report["invariants"]["violations"]))
        return 1
    return 0


def _sweep(scenario: Scenario, policies: Sequence[str], out_dir: Path, arguments: argparse.Namespace,
           display: Display, console: Any) -> int:
    """``--seeds N``: the benchmark once per seed, then the median and spread of every figure."""
    from dataclasses import replace

    from benchmarks.seed_sweep import aggregate, sweep_table

    reports: dict[int, dict[str, Any]] = {}
    for seed in range(scenario.seed, scenario.seed + arguments.seeds):
        console.print(f"[bold]{scenario.name}[/bold] seed {seed}: policies {', '.join(policies)}")
        try:
            outcome = run_benchmark(replace(scenario, seed=seed), policies, out_dir / f"seed-{seed}",
                                    display=display, sample_interval_s=arguments.sample_interval)
        except HarnessError as error:
            console.print(f"[red]error:[/red] seed {seed}: {error}")
            return 2
        reports[seed] = outcome.report
        print(summary_table(outcome.report), flush=True)
    sweep = aggregate(reports)
    if any(event.kind == "heat" for event in scenario.events):
        from benchmarks.heat_share import run_heat_shares

        sweep["heat_share"] = {str(seed): run_heat_shares(out_dir / f"seed-{seed}") for seed in reports}
    sweep["created"] = now_text()
    write_json(out_dir / "report.json", sweep)
    table = sweep_table(sweep)
    (out_dir / "summary.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"report: {out_dir / 'report.json'}")
    return 0 if all(sweep["invariants_ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
