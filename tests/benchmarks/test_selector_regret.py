"""The regret benchmark runs end to end (tiny scale) and writes its JSON and PNG."""

from __future__ import annotations

import json

from benchmarks import selector_regret


def test_benchmark_smoke_run_writes_report_and_figure(tmp_path, capsys):
    report = selector_regret.main([
        "--out", str(tmp_path), "--rounds-scale", "0.02", "--seeds", "1", "--timing-calls", "30",
        "--policies", "linucb", "fixed (best in hindsight)", "--manifest", str(tmp_path / "no-manifest.json"),
        "--change-policies", "linucb",
    ])
    written = json.loads((tmp_path / "selector_regret.json").read_text())
    assert (tmp_path / "selector_regret.png").stat().st_size > 10_000
    assert written["environment"]["zoo_source"].startswith("built-in table")
    assert written["environment"]["arm_count"] == 30
    assert set(written["policies"]) == {"linucb", "fixed (best in hindsight)"}
    linucb = written["policies"]["linucb"]
    for key in ("cumulative_regret", "mean_qoe", "deadline_miss_rate", "stationary_gap_percent",
                "recovery_rounds_after_shift", "regret_log_log_slope", "decision_time", "targets"):
        assert key in linucb
    assert linucb["cumulative_regret"] >= 0.0 and 0.0 <= linucb["deadline_miss_rate"] <= 1.0
    assert report["policies"]["linucb"]["decision_time"]["select_p50_us"] > 0
    assert "gap/recovery/slope/p50" in capsys.readouterr().out
    change = written["change_environments"]["results"]
    assert set(change) == {"swap", "starvation", "starvation-hidden", "drift", "context-shift"}
    assert 0.0 <= change["swap"]["linucb"]["optimal_first_300"]["median"] <= 1.0
    assert written["host_cpu"]["cores"] >= 1
