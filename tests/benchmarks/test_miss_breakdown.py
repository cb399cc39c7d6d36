"""The miss breakdown counts what a run's request log says, per policy and cause."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from benchmarks.miss_breakdown import breakdown


def write_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as lines:
        for record in records:
            lines.write(json.dumps(record) + "\n")


def test_misses_are_grouped_by_entry_destination_and_kind_across_seeds(tmp_path: Path) -> None:
    on_time = {"policy": "p", "group": "robot", "assigned_entry": "jetson", "outcome": "ok", "deadline_met": True,
               "plan": [["jetson", "cpu", 0, 3]]}
    late = {**on_time, "deadline_met": False, "plan": [["jetson", "cpu", 0, 1], ["edge", "cpu", 2, 3]]}
    refused_at_pi = {"policy": "p", "group": "robot", "assigned_entry": "jetson", "outcome": "refused_before_start",
                     "error": "pi: request r1: blocks 0-3 of digits-resnet-w0.25 need ~57.0 ms, 50.0 ms left"}
    refused_here = {**refused_at_pi, "error": "request r2: blocks 0-3 of digits-resnet-w0.25 need ~70 ms, 60 ms left"}
    write_log(tmp_path / "seed-1" / "requests.jsonl.gz", [on_time, late, refused_at_pi])
    write_log(tmp_path / "seed-2" / "requests.jsonl.gz", [on_time, refused_at_pi, refused_here,
                                                          {**on_time, "policy": "q"}])
    result = breakdown(tmp_path)
    assert result["q"] == {"requests": 1, "misses": 0, "by_cause": [], "early_misses": 0, "early_s": 2.0,
                           "route_residuals": []}
    assert result["p"]["requests"] == 6 and result["p"]["misses"] == 4
    assert result["p"]["by_cause"] == [
        {"group": "robot", "entry": "jetson", "went": "pi", "kind": "refused_before_start", "misses": 2},
        {"group": "robot", "entry": "jetson", "went": "jetson>edge", "kind": "late", "misses": 1},
        {"group": "robot", "entry": "jetson", "went": "jetson", "kind": "refused_before_start", "misses": 1}]
    assert breakdown(tmp_path, policy="q").keys() == {"q"}
    assert result["p"]["early_misses"] == 0  # no record says when it was sent


def test_early_misses_and_route_residuals(tmp_path: Path) -> None:
    """Misses sent in a run's first seconds are counted apart, and each route's answers (the
    planner's one-node plans, not re-planned) give the median of latency minus prediction."""
    answer = {"policy": "p", "group": "robot", "entry_node": "pi", "outcome": "ok", "deadline_met": True,
              "plan": [["jetson", "cpu", 0, 2]], "latency_ms": 50.0, "predicted_ms": 40.0, "sent_s": 5.0}
    write_log(tmp_path / "requests.jsonl.gz", [
        answer, {**answer, "latency_ms": 62.0, "deadline_met": False, "sent_s": 0.4},
        {**answer, "latency_ms": 61.0, "deadline_met": False, "sent_s": 9.0},
        {**answer, "plan": [["edge", "cpu", 0, 2]], "latency_ms": 38.0},
        {**answer, "plan": [["pi", "cpu", 0, 0], ["edge", "cpu", 1, 2]]},  # a split: no route
        {**answer, "replans": 1, "latency_ms": 90.0},  # re-planned: not the planner's prediction
        {**answer, "predicted_ms": None}])  # a pinned plan
    result = breakdown(tmp_path)["p"]
    assert result["misses"] == 2 and result["early_misses"] == 1
    assert result["route_residuals"] == [
        {"entry": "pi", "went": "edge", "answers": 1, "median_residual_ms": -2.0, "late": 0},
        {"entry": "pi", "went": "jetson", "answers": 3, "median_residual_ms": 21.0, "late": 2}]
    assert breakdown(tmp_path, early_s=10.0)["p"]["early_misses"] == 2
