"""How much of the work a heated node carried before and after it was heated.

``python -m benchmarks.heat_share RUN_DIR`` reads a benchmark run's ``report.json`` (its heat
events) and ``requests.jsonl`` (each answer's per-segment timings) and prints, per policy, the
share of all compute milliseconds and of answered requests that ran on the heated node before
the first heat event and after it. A thermal scenario only tests adaptation if the heated node
carries real work *before* the event: otherwise there is nothing to move.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def heat_shares(records: Iterable[Mapping[str, Any]], node: str, at_s: float) -> dict[str, dict[str, float | int]]:
    """Per policy: ``before``/``after`` share of compute ms on ``node`` and of answers touching it."""
    totals: dict[str, dict[str, list[float]]] = {}
    for record in records:
        timings = record.get("timings") or []
        if record.get("outcome") != "ok" or not timings:
            continue
        phase = "before" if float(record.get("sent_s") or 0.0) < at_s else "after"
        counts = totals.setdefault(str(record.get("policy")), {}).setdefault(phase, [0.0, 0.0, 0.0, 0.0])
        on_node = sum(float(t.get("compute_ms") or 0.0) for t in timings if t.get("node") == node)
        counts[0] += on_node
        counts[1] += sum(float(t.get("compute_ms") or 0.0) for t in timings)
        counts[2] += 1.0 if any(t.get("node") == node for t in timings) else 0.0
        counts[3] += 1.0
    shares: dict[str, dict[str, float | int]] = {}
    for policy, phases in totals.items():
        entry: dict[str, float | int] = {}
        for phase, (node_ms, all_ms, touching, answers) in phases.items():
            entry[f"compute_share_{phase}"] = round(node_ms / all_ms, 4) if all_ms else 0.0
            entry[f"answer_share_{phase}"] = round(touching / answers, 4) if answers else 0.0
            entry[f"answers_{phase}"] = int(answers)
        shares[policy] = entry
    return shares


def run_heat_shares(run_dir: Path) -> dict[str, Any]:
    report = json.loads((run_dir / "report.json").read_text())
    heats = [event for events in (report.get("events") or {}).values() for event in events
             if event.get("kind") == "heat"]
    if not heats:
        return {"node": None, "at_s": None, "policies": {}}
    first = min(heats, key=lambda event: event["at_s"])
    with (run_dir / "requests.jsonl").open() as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return {"node": first["node"], "at_s": first["at_s"],
            "policies": heat_shares(records, first["node"], float(first["at_s"]))}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m benchmarks.heat_share RUN_DIR", file=sys.stderr)
        return 2
    print(json.dumps(run_heat_shares(Path(arguments[0])), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
