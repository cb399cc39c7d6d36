"""One scenario run with several seeds: the median and the spread of every figure.

``p2pinfer bench SCENARIO --seeds 3`` runs the whole benchmark (every policy, the oracle) once
per seed (the scenario's seed, +1, +2 ...; arrivals, inputs, deadlines and link jitter all
follow the seed) into ``OUT/seed-S/``, then writes ``OUT/report.json``: per policy and figure
the ``median``, ``min``, ``max`` and the per-seed ``values``; the same for the oracle, for the
issue's targets (best adaptive miss rate, share of the static-to-oracle QoE gap closed) and
for the host's CPU use during each run (``host_cpu``: mean cores busy on the whole host,
``run_cpu``: cores used by the harness and its nodes). One run on a shared host is noise;
three give a median and a spread to judge it by.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FIGURES = ("deadline_miss_rate", "mean_qoe", "mean_accuracy", "goodput_rps", "error_count", "requests")
LATENCY_FIGURES = ("p50", "p95", "p99")
TARGET_FIGURES = ("best_adaptive_miss_rate", "lowest_adaptive_miss", "share_of_oracle_gap_closed",
                  "qoe_gain_over_static", "best_adaptive_qoe", "best_static_qoe", "oracle_qoe")
HOST_FIGURES = ("host_cpu", "host_cpu_max", "run_cpu")


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min, max of the known values (None ignored), with every value as measured."""
    known = [float(value) for value in values if value is not None]
    if not known:
        return {"median": None, "min": None, "max": None, "values": list(values)}
    return {"median": round(statistics.median(known), 6), "min": round(min(known), 6),
            "max": round(max(known), 6), "values": list(values)}


def _figure(entry: Mapping[str, Any] | None, name: str) -> float | None:
    if not entry:
        return None
    if name in LATENCY_FIGURES:
        latency = entry.get("latency_ms") or {}
        value = latency.get(name) if isinstance(latency, Mapping) else None
    else:
        value = entry.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _targets(report: Mapping[str, Any]) -> dict[str, float | None]:
    targets = report.get("targets") or {}
    lowest = targets.get("lowest_adaptive_miss_rate")
    values: dict[str, float | None] = {name: targets.get(name) for name in TARGET_FIGURES}
    values["lowest_adaptive_miss"] = float(lowest[0]) if isinstance(lowest, (list, tuple)) and lowest else None
    return values


def aggregate(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The seed sweep's report from each seed's ``report.json`` (seed -> report)."""
    seeds = sorted(reports)
    policies: dict[str, dict[str, Any]] = {}
    names = sorted({name for report in reports.values() for name in (report.get("policies") or {})})
    for name in names:
        entries = [(reports[seed].get("policies") or {}).get(name) for seed in seeds]
        policies[name] = {figure: spread([_figure(entry, figure) for entry in entries])
                          for figure in (*FIGURES, *LATENCY_FIGURES)}
        policies[name]["status"] = [entry.get("status") if entry else None for entry in entries]
    oracle = {figure: spread([_figure(reports[seed].get("oracle"), figure) for seed in seeds])
              for figure in ("deadline_miss_rate", "mean_qoe", "mean_accuracy")}
    targets = {figure: spread([_targets(reports[seed])[figure] for seed in seeds]) for figure in TARGET_FIGURES}
    best = [str((reports[seed].get("targets") or {}).get("best_adaptive")) for seed in seeds]
    host = {figure: spread([_figure(reports[seed].get("host"), figure) for seed in seeds]) for figure in HOST_FIGURES}
    first = reports[seeds[0]] if seeds else {}
    return {
        "kind": "seed-sweep",
        "scenario": (first.get("scenario") or {}).get("name"),
        "duration_s": first.get("duration_s"),
        "seeds": seeds,
        "runs": {str(seed): f"seed-{seed}/report.json" for seed in seeds},
        "policies": policies,
        "oracle": oracle,
        "targets": {**targets, "best_adaptive_by_seed": best},
        "host": {**host, "cpu_count": (first.get("host") or {}).get("cpu_count")},
        "invariants_ok": [bool((reports[seed].get("invariants") or {}).get("ok")) for seed in seeds],
    }


def sweep_table(sweep: Mapping[str, Any]) -> str:
    """A markdown table: per policy, the median [min, max] of miss rate, QoE, accuracy, p95."""
    def cell(figure: Mapping[str, Any], percent: bool = False, digits: int = 3) -> str:
        if figure["median"] is None:
            return "–"
        scale = 100.0 if percent else 1.0
        unit = "%" if percent else ""
        decimals = 1 if percent else digits
        return (f"{figure['median'] * scale:.{decimals}f}{unit} "
                f"[{figure['min'] * scale:.{decimals}f}, {figure['max'] * scale:.{decimals}f}]")

    lines = [f"{sweep.get('scenario')}: seeds {sweep.get('seeds')}, median [min, max]", "",
             "| policy | miss rate | mean QoE | accuracy | p95 ms |", "|---|---:|---:|---:|---:|"]
    for name, entry in (sweep.get("policies") or {}).items():
        lines.append(f"| {name} | {cell(entry['deadline_miss_rate'], True)} | {cell(entry['mean_qoe'])} | "
                     f"{cell(entry['mean_accuracy'], True)} | {cell(entry['p95'], digits=1)} |")
    oracle = sweep.get("oracle") or {}
    if oracle:
        lines.append(f"| *oracle* | {cell(oracle['deadline_miss_rate'], True)} | {cell(oracle['mean_qoe'])} | "
                     f"{cell(oracle['mean_accuracy'], True)} | – |")
    targets = sweep.get("targets") or {}
    host = sweep.get("host") or {}
    gap = cell(targets["share_of_oracle_gap_closed"], digits=2)
    lines += ["", f"best adaptive miss rate: {cell(targets['best_adaptive_miss_rate'], True)}; "
                  f"lowest adaptive miss rate: {cell(targets['lowest_adaptive_miss'], True)}; "
                  f"share of the static-to-oracle QoE gap closed: {gap}",
              f"host CPU (cores busy of {host.get('cpu_count')}): {cell(host['host_cpu'], digits=2)}; "
              f"harness + nodes: {cell(host['run_cpu'], digits=2)}"]
    return "\n".join(lines)


def reaggregate(out_dir: Path) -> dict[str, Any]:
    """The sweep's report again from ``OUT/seed-*/report.json``, the targets recomputed."""
    from benchmarks.heat_share import run_heat_shares
    from benchmarks.report import issue_targets

    reports: dict[int, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("seed-*/report.json")):
        report = json.loads(path.read_text())
        report["targets"] = issue_targets(report)
        reports[int(path.parent.name.removeprefix("seed-"))] = report
    sweep = aggregate(reports)
    if any(event.get("kind") == "heat" for report in reports.values()
           for events in (report.get("events") or {}).values() for event in events):
        sweep["heat_share"] = {str(seed): run_heat_shares(out_dir / f"seed-{seed}") for seed in reports}
    return sweep


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.seed_sweep OUT``: rewrite OUT/report.json and OUT/summary.md."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m benchmarks.seed_sweep OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(arguments[0])
    sweep = reaggregate(out_dir)
    (out_dir / "report.json").write_text(json.dumps(sweep, indent=1) + "\n")
    (out_dir / "summary.md").write_text(sweep_table(sweep) + "\n")
    print(sweep_table(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
