"""benchmarks.paired_ab: two checkouts' nodes measured at the same time, as ratios."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from benchmarks import paired_ab

ROOT = Path(__file__).resolve().parents[2]


def _row(this_cpu: float, other_cpu: float, this_rps: float, other_rps: float) -> dict:
    return {"this": {"server_cpu_ms_per_request": this_cpu, "requests_per_s": this_rps},
            "other": {"server_cpu_ms_per_request": other_cpu, "requests_per_s": other_rps}}


def test_each_repeat_is_a_ratio_of_the_two_nodes_measured_together() -> None:
    ratios = paired_ab.paired_ratios([_row(0.5, 1.0, 800, 400), _row(0.9, 1.0, 500, 500), _row(1.2, 1.0, 400, 500)])
    assert ratios["cpu_per_request"] == {"median": 0.9, "min": 0.5, "max": 1.2, "per_repeat": [0.5, 0.9, 1.2]}
    assert ratios["requests_per_s"] == {"median": 1.0, "min": 0.8, "max": 2.0, "per_repeat": [2.0, 1.0, 0.8]}


def _paced_row(this_cpu: float, other_cpu: float, this_p50: float, other_p50: float,
               this_kept_up: bool = True, other_kept_up: bool = True) -> dict:
    return {name: {"server_cpu_ms_per_request": cpu, "requests_per_s": 1000.0, "p50_ms": p50, "sustained": kept_up}
            for name, cpu, p50, kept_up in (("this", this_cpu, this_p50, this_kept_up),
                                            ("other", other_cpu, other_p50, other_kept_up))}


def test_paced_repeats_compare_latency_too_and_only_where_both_nodes_kept_up() -> None:
    ratios = paired_ab.paired_ratios([_paced_row(0.3, 0.4, 1.0, 2.0), _paced_row(0.4, 0.4, 1.0, 1.0),
                                      _paced_row(0.9, 0.3, 50.0, 1.0, this_kept_up=False)])
    assert ratios["repeats_compared"] == 2
    assert ratios["cpu_per_request"]["per_repeat"] == [0.75, 1.0]
    assert ratios["p50"] == {"median": 0.75, "min": 0.5, "max": 1.0, "per_repeat": [0.5, 1.0]}
    assert paired_ab.paired_ratios([_paced_row(0.3, 0.4, 1.0, 2.0, other_kept_up=False)]) == {"repeats_compared": 0}


def test_a_rate_that_is_not_positive_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        paired_ab.main([str(ROOT), "--rate", "0"])
    assert "--rate must be positive" in capsys.readouterr().err


def test_host_busy_share_comes_from_cpu_time_deltas() -> None:
    Times = collections.namedtuple("Times", "user system idle iowait")
    assert paired_ab.host_busy_percent(Times(10.0, 5.0, 80.0, 5.0), Times(16.0, 7.0, 81.0, 6.0)) == 80.0
    assert paired_ab.host_busy_percent(Times(1.0, 1.0, 1.0, 0.0), Times(1.0, 1.0, 1.0, 0.0)) == 0.0


def test_another_checkout_that_is_not_p2pinfer_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        paired_ab.main([str(tmp_path)])
    assert "is not a checkout of p2pinfer" in capsys.readouterr().err


def test_an_a_a_run_measures_both_nodes_in_each_repeat(tmp_path: Path) -> None:
    """This checkout against itself, through the Open Inference route: both nodes answer in every
    repeat, and the ratios are near 1 (a wide band: one short repeat on a shared host)."""
    out = tmp_path / "paired.json"
    paired_ab.main([str(ROOT), "--repeats", "1", "--seconds", "0.5", "--clients", "2", "--route", "oip",
                    "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["route"] == "oip"
    (row,) = report["per_repeat"]
    assert row["this"]["completed"] > 0 and row["other"]["completed"] > 0
    ratios = report["this_over_other"]
    assert ratios["repeats_compared"] == 1
    for label in ("cpu_per_request", "requests_per_s"):
        assert 0.3 < ratios[label]["median"] < 3.0
    assert 0.0 < report["host"]["host_cpu_percent_median"] <= 100.0  # two nodes and their clients ran
