"""Where a run's deadline misses came from: per policy, the missed requests grouped by user
group, entry node, where they went and how they ended.

    python -m benchmarks.miss_breakdown RUN_DIR [--policy adaptive-linucb] [--top 12] [--early-s 2]

``RUN_DIR`` is a ``bench`` output (its ``requests.jsonl`` or archived ``requests.jsonl.gz``, or
one per ``seed-*`` folder). A miss is a request not answered within its deadline: ``late``
(answered after it), or the error code that ended it (``refused_before_start``, ``overloaded``,
...). ``went`` is the executed plan (``pi`` or ``jetson>edge``) for an answer, the node that
raised the error for a failure (the entry's own errors carry no node prefix). Also: the misses
of requests sent in a run's first seconds (``--early-s``), and per route (entry -> the one node
an answer's plan ran on) the median of latency minus prediction: a route the planner prices
early shows a positive median (session 9: the Pi's plans on the Jetson, +10 ms, then -0.4 ms).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EARLY_S = 2.0


def records(run_dir: Path) -> Iterator[dict[str, Any]]:
    files = [path for pattern in ("requests.jsonl*", "seed-*/requests.jsonl*") for path in sorted(run_dir.glob(pattern))
             if path.name in ("requests.jsonl", "requests.jsonl.gz")]
    if not files:
        raise SystemExit(f"no requests.jsonl(.gz) in {run_dir} or its seed-* folders")
    for path in files:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as lines:
            for line in lines:
                yield json.loads(line)


def entry_of(record: dict[str, Any]) -> str:
    """The entry node the request was sent to ("?" in logs that do not say)."""
    return str(record.get("assigned_entry") or record.get("entry_node") or "?")


def miss_kind(record: dict[str, Any]) -> tuple[str, str] | None:
    """(how it ended, where it went) for a miss; None for a request answered in time."""
    if record.get("outcome") == "ok":
        if record.get("deadline_met"):
            return None
        plan = record.get("plan") or []
        return "late", ">".join(segment[0] for segment in plan) or "?"
    error = str(record.get("error") or "")
    how = str(record.get("outcome") or "error")
    node = re.match(r"([\w.-]+): ", error)  # a peer's error comes back prefixed with its node
    return how, node.group(1) if node and node.group(1) != "request" else entry_of(record)


def breakdown(run_dir: Path, policy: str | None = None, early_s: float = EARLY_S) -> dict[str, dict[str, Any]]:
    """Per policy: requests, misses, the misses counted per (group, entry, went, kind), the
    misses of requests sent in the first ``early_s`` seconds of a run (a cold start: links and
    routes not learnt yet), and per route (``route_residuals``) how far answers were from their
    predictions."""
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    groups: dict[str, collections.Counter[tuple[str, str, str, str]]] = collections.defaultdict(collections.Counter)
    routes: dict[str, dict[tuple[str, str], list[tuple[float, bool]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for record in records(run_dir):
        name = str(record.get("policy"))
        if policy is not None and name != policy:
            continue
        totals[name]["requests"] += 1
        residual = route_residual(record)
        if residual is not None:
            routes[name][residual[0]].append((residual[1], bool(record.get("deadline_met"))))
        kind = miss_kind(record)
        if kind is None:
            continue
        totals[name]["misses"] += 1
        sent_s = record.get("sent_s")
        if sent_s is not None and float(sent_s) < early_s:
            totals[name]["early_misses"] += 1
        how, went = kind
        groups[name][(str(record.get("group")), entry_of(record), went, how)] += 1
    return {name: {"requests": totals[name]["requests"], "misses": totals[name]["misses"],
                   "early_misses": totals[name]["early_misses"], "early_s": early_s,
                   "by_cause": [{"group": group, "entry": entry, "went": went, "kind": how, "misses": count}
                                for (group, entry, went, how), count in groups[name].most_common()],
                   "route_residuals": [{"entry": entry, "went": went, "answers": len(rows),
                                        "median_residual_ms": round(statistics.median(r for r, _ in rows), 2),
                                        "late": sum(1 for _, met in rows if not met)}
                                       for (entry, went), rows in sorted(routes[name].items())]}
            for name in sorted(totals)}


def route_residual(record: dict[str, Any]) -> tuple[tuple[str, str], float] | None:
    """((entry, node), latency - prediction) of an answer whose plan, the planner's own (a
    prediction, not re-planned), ran on one node; None for any other record."""
    plan = record.get("plan") or []
    latency, predicted = record.get("latency_ms"), record.get("predicted_ms")
    if record.get("outcome") != "ok" or latency is None or predicted is None or record.get("replans"):
        return None
    nodes = {segment[0] if isinstance(segment, list) else segment.get("node") for segment in plan}
    if len(nodes) != 1:
        return None
    return (entry_of(record), str(nodes.pop())), float(latency) - float(predicted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--policy")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--early-s", type=float, default=EARLY_S, help="a run's first seconds (cold start)")
    parser.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    arguments = parser.parse_args(argv)
    result = breakdown(arguments.run_dir, arguments.policy, arguments.early_s)
    if arguments.json:
        print(json.dumps(result, indent=1))
        return
    for name, entry in result.items():
        share = entry["misses"] / max(entry["requests"], 1)
        print(f"{name}: {entry['misses']} misses of {entry['requests']} requests ({share:.1%}); "
              f"{entry['early_misses']} sent in the first {entry['early_s']:g} s")
        for row in entry["by_cause"][:arguments.top]:
            print(f"  {row['misses']:4d}  {row['group']:10s} entry {row['entry']:8s} went {row['went']:16s} "
                  f"{row['kind']}")
        for route in entry["route_residuals"]:
            print(f"  route {route['entry']:>8s} -> {route['went']:8s} {route['answers']:5d} answers, "
                  f"median residual {route['median_residual_ms']:+6.1f} ms, {route['late']} late")


if __name__ == "__main__":
    main()
