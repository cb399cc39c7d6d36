"""Short runs of every bundled scenario on two real nodes hosting digits-cnn: the report's
schema and invariants hold (see ``conftest.check_report``), and each scenario's own promise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.bench import main as bench_main
from benchmarks.demo import main as demo_main
from benchmarks.scenario import with_traces


def test_steady_through_the_command_line_with_two_policies(tmp_path: Path, report_checker):
    out = tmp_path / "steady"
    code = bench_main(["steady", "--policies", "fixed,random", "--duration", "3", "--out", str(out),
                       "--nodes", "pi,jetson", "--no-progress", "--sample-interval", "0.25"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["policies_requested"] == ["fixed", "random"]
    assert report["policies"]["fixed"]["status"] == "ran"
    # "random" either ran or is reported as unavailable with a reason: never a crash
    random_entry = report["policies"]["random"]
    assert random_entry["status"] == "ran" or report["unavailable"]["random"] == random_entry["reason"]
    assert report["scenario"]["duration_s"] == 3 and report["seed"] == 7
    groups = report["policies"]["fixed"]["per_group"]
    assert set(groups) == {"camera", "robot", "analyst"}  # open- and closed-loop users both sent
    assert (out / "nodes.jsonl").stat().st_size > 0

    class Outcome:
        out_dir = out

    report_checker(Outcome())
    # check_report reads the files, not objects in memory: a tampered report fails it
    report["policies"]["fixed"]["ok"] += 1
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(AssertionError):
        report_checker(Outcome())


def test_bandwidth_trace_with_a_user_trace(small_run, tmp_path: Path):
    trace = tmp_path / "my-trace.txt"
    trace.write_text("# any file of the same format\n0.0 2.0\n0.4 8.5\n0.9 0.0\n1.3 4.0\n")
    report, outcome = small_run("bandwidth-trace", ["pi", "edge"],
                                transform=lambda scenario: with_traces(scenario, trace, 3.0))
    (link,) = report["scenario"]["links"].values()
    assert link["trace"] == str(trace.resolve()) and link["trace_scale"] == 3.0
    assert report["policies"]["fixed"]["ok"] > 0


def test_thermal_heat_events_are_applied_or_reported_unsupported(small_run):
    report, _ = small_run("thermal", ["pi", "jetson"])
    events = report["events"]["fixed"]
    assert [event["kind"] for event in events] == ["heat", "heat"]
    assert all(event["status"] in ("applied", "unsupported") for event in events), events


def test_load_swing_bursts_follow_the_events(small_run):
    report, outcome = small_run("load-swing", ["jetson", "edge"], duration_s=4.0)
    burst = [record for record in outcome.records if record.group == "burst"]
    windows = [(4 * 10 / 40, 4 * 18 / 40), (4 * 26 / 40, 4 * 33 / 40)]
    assert burst and all(any(low <= record.scheduled_s < high for low, high in windows) for record in burst)
    assert report["policies"]["fixed"]["per_group"]["burst"]["requests"] == len(burst)


def test_node_failure_loses_no_request(small_run):
    report, outcome = small_run("node-failure", ["pi", "edge"], duration_s=4.0)
    fixed = report["policies"]["fixed"]
    assert fixed["lost"] == 0, fixed["errors"]
    events = {event["kind"]: event for event in report["events"]["fixed"]}
    assert events["kill"]["status"] == "applied" and events["restart"]["status"] == "applied", events
    records = outcome.records
    assert all(record.outcome == "ok" or record.error for record in records)  # explicit error messages
    # users of the killed node were answered by the other one while it was down
    assert {record.entry_node for record in records if record.ok and record.assigned_entry == "edge"} >= {"pi"}


def test_fairness_reports_jain_over_users(small_run):
    report, _ = small_run("fairness", ["jetson", "edge"])
    fixed = report["policies"]["fixed"]
    assert set(fixed["per_group"]) == {"heavy", "light"}
    assert 0 < fixed["jain_fairness"] <= 1
    assert fixed["per_user"]["heavy-0"]["requests"] > fixed["per_user"]["light-0"]["requests"]


def test_demo_command_on_a_small_cluster(tmp_path: Path, capsys):
    scenario = tmp_path / "tiny-demo.toml"
    scenario.write_text("""
duration_s = 2
seed = 5
feedback_share = 0.5
[[cluster.nodes]]
name = "device"
device_profile = "rpi4"
variants = "digits-cnn"
[[cluster.nodes]]
name = "edge"
device_profile = "edge-server"
variants = "digits-cnn"
[links."device<->edge"]
bandwidth_mbps = 20
rtt_ms = 5
[[users]]
group = "camera"
count = 2
rate_per_s = 4
deadline = { kind = "uniform", low_ms = 50, high_ms = 150 }
[[users]]
group = "analyst"
count = 1
think_ms = 100
deadline = { kind = "fixed", ms = 200 }
""")
    out = tmp_path / "demo"
    assert demo_main(["--scenario", str(scenario), "--out", str(out), "--no-live"]) == 0
    report = json.loads((out / "report.json").read_text())
    (entry,) = [entry for entry in report["policies"].values() if entry["status"] == "ran"]
    assert entry["requests"] > 0 and entry["feedback"]["sent"] > 0
    # the demo says where the answered requests ran, and the counts add up
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    answered = sum(1 for record in records if record["outcome"] == "ok" and record["plan"])
    (line,) = [text for text in capsys.readouterr().out.splitlines() if text.startswith("where ")]
    counts = re.match(r"where (\d+) answered requests ran: (\d+) on their entry node, (\d+) offloaded whole, "
                      r"(\d+) split across nodes", line)
    assert counts is not None, line
    total, local, offloaded, split = map(int, counts.groups())
    assert total == answered == local + offloaded + split > 0


def test_a_scenario_on_the_real_family_sends_camera_jpegs(tmp_path: Path):
    """``zoo = "pretrained"``: the nodes serve zoo/pretrained and the users send JPEGs (the
    held-out pages as a camera would), answered with the true orientation."""
    scenario = tmp_path / "camera.toml"
    scenario.write_text("""
duration_s = 2
seed = 3
zoo = "pretrained"
[[cluster.nodes]]
name = "edge"
device_profile = "edge-server"
variants = "text-orientation-w1"
[[users]]
group = "camera"
count = 1
rate_per_s = 4
family = "text-orientation"
deadline = { kind = "fixed", ms = 2000 }
""")
    out = tmp_path / "camera"
    assert bench_main([str(scenario), "--policies", "fixed", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    answered = [record for record in records if record["outcome"] == "ok"]
    assert answered and len(answered) == len(records)
    assert all(record["variant"] == "text-orientation-w1" for record in answered)
    assert sum(record["correct"] for record in answered) >= 0.9 * len(answered)


def test_seeds_run_the_benchmark_per_seed_and_report_median_spread_and_host_cpu(tmp_path: Path):
    out = tmp_path / "sweep"
    code = bench_main(["steady", "--policies", "fixed", "--duration", "2", "--out", str(out), "--seeds", "2",
                       "--nodes", "pi,jetson", "--no-progress", "--sample-interval", "0.5"])
    assert code == 0
    sweep = json.loads((out / "report.json").read_text())
    assert sweep["kind"] == "seed-sweep" and sweep["seeds"] == [7, 8]
    for seed in (7, 8):
        report = json.loads((out / f"seed-{seed}" / "report.json").read_text())
        assert report["seed"] == seed and report["host"]["cpu_count"] >= 1
        assert 0.0 <= report["host"]["host_cpu"] <= report["host"]["cpu_count"]
    miss = sweep["policies"]["fixed"]["deadline_miss_rate"]
    assert len(miss["values"]) == 2 and miss["min"] <= miss["median"] <= miss["max"]
    assert sweep["host"]["host_cpu"]["median"] is not None
    assert bench_main(["steady", "--seeds", "0", "--out", str(tmp_path / "none")]) == 2
