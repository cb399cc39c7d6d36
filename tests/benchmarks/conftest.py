"""Fixtures of the benchmark-harness tests: small runs of real scenarios and the checks every
report must pass (schema, accounting, oracle bounds, valid PNGs)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench import BenchmarkOutcome, run_benchmark
from benchmarks.report import read_requests
from benchmarks.scenario import Scenario, load_scenario, with_duration, with_family, with_nodes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POLICY_KEYS = {"policy", "status", "requests", "ok", "error_count", "errors", "on_time", "lost", "deadline_miss_rate",
               "mean_accuracy", "mean_qoe", "latency_ms", "client_latency_ms", "goodput_rps", "per_user", "per_group",
               "jain_fairness", "degraded", "replans", "arms", "feedback", "latency_floor_ms", "wall_s"}
TOP_KEYS = {"schema_version", "created", "scenario", "seed", "duration_s", "policies_requested", "policies",
            "unavailable", "oracle", "events", "arrivals", "warnings", "policies_known", "qoe_function", "definitions",
            "invariants", "files", "targets"}


def assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.is_file(), f"{path} missing"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def check_report(outcome: BenchmarkOutcome) -> dict[str, Any]:
    """What every run directory must hold, re-read from disk: the schema, the accounting
    (ok + errors = sent, per-user and per-group sums), the oracle's bounds, valid plots."""
    out_dir = outcome.out_dir
    report = json.loads((out_dir / "report.json").read_text())
    assert set(report) >= TOP_KEYS, f"missing keys {TOP_KEYS - set(report)}"
    assert report["invariants"] == {"ok": True, "violations": []}, report["invariants"]
    records = read_requests(out_dir / "requests.jsonl")
    ran = {name: entry for name, entry in report["policies"].items() if entry["status"] == "ran"}
    assert ran, "no policy ran: " + "; ".join(f"{name}: {entry['status']}: {entry.get('reason', '')[-400:]}"
                                             for name, entry in report["policies"].items())
    for name, entry in report["policies"].items():
        if entry["status"] != "ran":
            assert name in report["unavailable"] and entry["reason"]
            continue
        assert set(entry) >= POLICY_KEYS, f"{name}: missing {POLICY_KEYS - set(entry)}"
        mine = [record for record in records if record.policy == name]
        assert entry["requests"] == len(mine) > 0
        assert entry["ok"] + entry["error_count"] == entry["requests"]
        assert entry["ok"] == sum(1 for record in mine if record.outcome == "ok")
        assert sum(user["requests"] for user in entry["per_user"].values()) == entry["requests"]
        assert sum(group["requests"] for group in entry["per_group"].values()) == entry["requests"]
        assert len({record.key for record in mine}) == len(mine)
        assert all(record.outcome for record in mine)
        for quantile in ("p50", "p95", "p99"):
            floor, measured = entry["latency_floor_ms"][quantile], entry["latency_ms"][quantile]
            if measured is not None:
                assert floor is not None and floor <= measured + 1e-3, (name, quantile, floor, measured)
        assert entry["jain_fairness"] is None or 0 < entry["jain_fairness"] <= 1 + 1e-9
        assert 0 <= entry["deadline_miss_rate"] <= 1
        if report["oracle"]["mean_qoe"] is not None:
            assert report["oracle"]["mean_qoe"] >= entry["mean_qoe"] - 1e-6
    assert report["arrivals"]["open_loop_scheduled"] == sum(
        1 for record in records if record.scheduled_s is not None and record.policy == next(iter(ran)))
    assert {"latency_cdf.png", "deadline_miss_over_time.png", "arms_over_time.png",
            "nodes_over_time.png"} <= set(report["files"]["plots"])
    for name in report["files"]["plots"]:
        assert_valid_png(out_dir / name)
    summary = (out_dir / "summary.md").read_text()
    assert "| policy |" in summary and all(f"| {name} |" in summary for name in ran)
    return report


@pytest.fixture
def report_checker() -> Callable[[Any], dict[str, Any]]:
    """``check_report`` for tests that run the command line and hold only the output folder."""
    return check_report


@pytest.fixture
def small_run(tmp_path: Path) -> Callable[..., tuple[dict[str, Any], BenchmarkOutcome]]:
    """Run a bundled scenario on a subset of its nodes for a few seconds and check its report."""

    def run(name: str, nodes: Sequence[str], duration_s: float = 3.0, policies: Sequence[str] = ("fixed",),
            transform: Callable[[Scenario], Scenario] | None = None) -> tuple[dict[str, Any], BenchmarkOutcome]:
        # the bundled scenarios run digits-resnet; the tests run them on the cheap digits-cnn
        scenario = with_family(with_duration(with_nodes(load_scenario(name), nodes), duration_s), "digits-cnn")
        if transform is not None:
            scenario = transform(scenario)
        outcome = run_benchmark(scenario, list(policies), tmp_path / name, sample_interval_s=0.25)
        return check_report(outcome), outcome

    return run
