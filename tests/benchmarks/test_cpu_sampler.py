"""The CPU-time sampler behind ``benchmarks.overhead --sample-cpu``: stacks taken on CPU time
in a real node process, and the per-function arithmetic of its summary."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from benchmarks.cpu_sampler import CpuSampler, summarize


def test_summary_counts_each_function_once_per_sample_and_scales_to_the_cpu_per_request() -> None:
    collapsed = "\n".join([
        "main (/x/p2pinfer/cli/main.py:10);infer (/x/p2pinfer/runtime/routes.py:5);run (/y/site-packages/ort/s.py:9) 6",
        "main (/x/p2pinfer/cli/main.py:10);infer (/x/p2pinfer/runtime/routes.py:6) 2",
        "main (/x/p2pinfer/cli/main.py:11);main (/x/p2pinfer/cli/main.py:12) 2",  # recursion: counted once
    ])
    summary = summarize(collapsed, cpu_us_per_request=1000.0)
    rows = {row["function"]: row for row in summary["top_inclusive"]}  # type: ignore[union-attr]
    assert summary["samples"] == 10
    assert rows["main (cli/main.py)"] == {"function": "main (cli/main.py)", "inclusive_us_per_request": 1000.0,
                                          "own_us_per_request": 200.0}
    assert rows["infer (runtime/routes.py)"]["inclusive_us_per_request"] == 800.0
    assert rows["infer (runtime/routes.py)"]["own_us_per_request"] == 200.0  # its lines: both counted together
    assert rows["run (ort/s.py)"]["own_us_per_request"] == 600.0
    assert summary["top_own"][0]["function"] == "run (ort/s.py)"  # type: ignore[index]
    assert summary["functions"] == {"main (cli/main.py)": [1000.0, 200.0], "infer (runtime/routes.py)": [800.0, 200.0],
                                    "run (ort/s.py)": [600.0, 600.0]}


def test_samples_land_on_cpu_time_only_while_armed(tmp_path: Path) -> None:
    """Armed by SIGUSR1, a busy loop is sampled (on this main thread); SIGUSR2 writes the
    stacks; a sleep while armed costs no CPU and adds (almost) no samples."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGPROF)}
    out = tmp_path / "stacks.txt"
    try:
        sampler = CpuSampler()
        sampler.control(out)
        signal.raise_signal(signal.SIGUSR1)
        started = time.process_time()
        while time.process_time() - started < 0.3:  # 0.3 s of CPU: ~75 ticks at 250 Hz
            sum(range(1000))
        busy = sum(sampler.stacks.values())
        time.sleep(0.3)
        idle = sum(sampler.stacks.values()) - busy
        signal.raise_signal(signal.SIGUSR2)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert busy >= 10 and idle <= busy / 3
    written = out.read_text().splitlines()
    assert sum(int(line.rpartition(" ")[2]) for line in written) == busy + idle
    assert any("test_samples_land_on_cpu_time_only_while_armed" in line for line in written)


@pytest.mark.slow
def test_a_node_under_the_sampler_reports_its_cpu_by_function() -> None:
    from benchmarks.overhead import sample_node_cpu

    report = sample_node_cpu(seconds=4.0, clients=4, backend="cpu-eager")
    functions = {row["function"] for row in report["top_inclusive"]}
    assert report["samples"] > 50 and report["requests_per_s"] > 0
    assert any(function.startswith("Controller.infer") for function in functions)


def test_side_by_side_pairs_the_functions_both_servers_run_inclusive_and_own() -> None:
    from benchmarks.overhead import side_by_side

    node = {"top_own": [{"function": "write (a)", "own_us_per_request": 24.0},
                        {"function": "Controller.infer (b)", "own_us_per_request": 9.0},
                        {"function": "decode (c)", "own_us_per_request": 8.0}],
            "functions": {"write (a)": [24.0, 24.0], "Controller.infer (b)": [120.0, 9.0], "decode (c)": [11.0, 8.0]}}
    floor = {"functions": {"write (a)": [16.0, 0.6], "decode (c)": [8.0, 6.0]}}
    assert side_by_side(node, floor) == [
        {"function": "write (a)", "node_inclusive_us": 24.0, "floor_inclusive_us": 16.0, "node_own_us": 24.0,
         "floor_own_us": 0.6},
        {"function": "decode (c)", "node_inclusive_us": 11.0, "floor_inclusive_us": 8.0, "node_own_us": 8.0,
         "floor_own_us": 6.0}]  # the node's own function is not the floor's: left out
    assert len(side_by_side(node, floor, top=1)) == 1


@pytest.mark.slow
def test_the_floor_under_the_sampler_reports_its_cpu_by_function() -> None:
    from benchmarks.overhead import sample_node_cpu

    report = sample_node_cpu(seconds=4.0, clients=4, backend="cpu-eager", floor=True)
    assert report["server"] == "floor" and report["samples"] > 50 and report["requests_per_s"] > 0
    assert any(function.startswith("FloorAnswerer.answer") for function in report["functions"])
    assert not any(function.startswith("Controller.") for function in report["functions"])
