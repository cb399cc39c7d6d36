"""The split sweep on a tiny setting: one device, two bandwidths, one request per plan per cell
(raw pixels at 2 Mbit/s take 2.4 s, so the lowest bandwidth is 2, not the sweep's 0.5)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import split_sweep


def test_a_tiny_sweep_reports_every_strategy_and_never_plans_raw_pixels_on_the_slow_link(tmp_path: Path) -> None:
    split_sweep.main(["--devices", "jetson-orin-nano", "--bandwidths", "2,100", "--requests", "1",
                      "--out", str(tmp_path), "--no-plot"])
    report = json.loads((tmp_path / "split_sweep.json").read_text())
    assert report["variant"] == split_sweep.VARIANT and report["devices"] == ["jetson-orin-nano"]
    assert [cell["bandwidth_mbps"] for cell in report["cells"]] == [2.0, 100.0]
    for cell in report["cells"]:
        assert set(cell["strategies"]) == set(split_sweep.STRATEGIES)
        assert all(entry["p50_ms"] > 0 for entry in cell["strategies"].values())
        assert cell["fastest_named"] in split_sweep.STRATEGIES
        assert cell["planner_over_hindsight"] > 0 and 0 <= cell["host_cpu_percent"] <= 100
        # hindsight is the fastest measured candidate, so no named plan beats it
        named = [cell["strategies"][s]["p50_ms"] for s in split_sweep.STRATEGIES if s not in ("planner", "hindsight")]
        assert cell["strategies"]["hindsight"]["p50_ms"] <= min(named)
        assert cell["strategies"]["offload-raw"]["plan"] == "edge[0-4]:float32"
    slowest = report["cells"][0]
    for plan in slowest["strategies"]["planner"]["plans"]:
        assert not plan.startswith("edge[0-4]:float32"), plan  # 602 KB of float32 pixels over 2 Mbit/s: never
    assert {entry["codec"] for entry in report["codec_accuracy"]} >= {"float16", "uint8"}
    assert report["planner_over_hindsight"]["cells"] == 2
