"""Where a run's deadline misses came from: per policy, the missed requests grouped by user
group, entry node, where they went and how they ended.

    python -m benchmarks.miss_breakdown RUN_DIR [--policy adaptive-linucb] [--top 12]

``RUN_DIR`` is a ``bench`` output (its ``requests.jsonl`` or archived ``requests.jsonl.gz``, or
one per ``seed-*`` folder). A miss is a request not answered within its deadline: ``late``
(answered after it), or the error code that ended it (``refused_before_start``, ``overloaded``,
...). ``went`` is the executed plan (``pi`` or ``jetson>edge``) for an answer, the node that
raised the error for a failure (the entry's own errors carry no node prefix).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


def breakdown(run_dir: Path, policy: str | None = None) -> dict[str, dict[str, Any]]:
    """Per policy: requests, misses, and the misses counted per (group, entry, went, kind)."""
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    groups: dict[str, collections.Counter[tuple[str, str, str, str]]] = collections.defaultdict(collections.Counter)
    for record in records(run_dir):
        name = str(record.get("policy"))
        if policy is not None and name != policy:
            continue
        totals[name]["requests"] += 1
        kind = miss_kind(record)
        if kind is None:
            continue
        totals[name]["misses"] += 1
        how, went = kind
        groups[name][(str(record.get("group")), entry_of(record), went, how)] += 1
    return {name: {"requests": totals[name]["requests"], "misses": totals[name]["misses"],
                   "by_cause": [{"group": group, "entry": entry, "went": went, "kind": how, "misses": count}
                                for (group, entry, went, how), count in groups[name].most_common()]}
            for name in sorted(totals)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--policy")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    arguments = parser.parse_args(argv)
    result = breakdown(arguments.run_dir, arguments.policy)
    if arguments.json:
        print(json.dumps(result, indent=1))
        return
    for name, entry in result.items():
        share = entry["misses"] / max(entry["requests"], 1)
        print(f"{name}: {entry['misses']} misses of {entry['requests']} requests ({share:.1%})")
        for row in entry["by_cause"][:arguments.top]:
            print(f"  {row['misses']:4d}  {row['group']:10s} entry {row['entry']:8s} went {row['went']:16s} "
                  f"{row['kind']}")


if __name__ == "__main__":
    main()
