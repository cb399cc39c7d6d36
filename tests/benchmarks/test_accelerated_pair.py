"""benchmarks.accelerated_pair's verdicts, from hand-made answers (the script itself needs a GPU to mean much)."""

from __future__ import annotations

from benchmarks.accelerated_pair import SETTLE_WITHIN, settle_report

ACCURACY = {"w1@3": 0.983, "w0.25@3": 0.974, "p0.4@2": 0.941, "w1@0": 0.39}


def answers(arms: list[str], failed_at: tuple[int, ...] = ()) -> list[dict]:
    return [{"ok": False, "error": "DeadlineExceeded"} if index in failed_at else
            {"ok": True, "arm": arm, "on_time": True, "nodes": ["accelerated"]} for index, arm in enumerate(arms)]


def test_a_cold_start_failure_and_a_less_accurate_arm_are_both_flagged() -> None:
    bandit = answers(["w1@0"] * SETTLE_WITHIN + ["p0.4@2"] * 200, failed_at=(0, 1))
    report = settle_report(bandit, {"w1@3": 1.0, "w0.25@3": 1.0, "p0.4@2": 1.0, "w1@0": 1.0}, ACCURACY)
    assert report["failed"] == report["failed_in_first_10"] == 2 and report["failures"] == ["DeadlineExceeded"]
    assert report["best_feasible_arm"] == "w1@3" and report["arms_tied_with_best"] == ["w0.25@3", "w1@3"]
    assert report[f"share_on_tied_from_request_{SETTLE_WITHIN}"] == 0.0  # 4 points under the best: not tied
    assert report["targets_met"] == {"no_failed_request": False, "settled_on_best": False}


def test_the_best_arm_is_the_most_accurate_that_answers_on_time_and_ties_count() -> None:
    # w1@3 misses its deadline too often to be feasible: the best is w0.25@3
    bandit = answers(["p0.4@2"] * SETTLE_WITHIN + ["w0.25@3"] * 90 + ["p0.4@2"] * 10)
    report = settle_report(bandit, {"w1@3": 0.6, "w0.25@3": 0.95, "p0.4@2": 1.0, "w1@0": 1.0}, ACCURACY)
    assert report["best_feasible_arm"] == "w0.25@3" and report["best_feasible_accuracy"] == 0.974
    assert report[f"share_on_best_from_request_{SETTLE_WITHIN}"] == 0.9  # the first 100 do not count
    assert report["targets_met"] == {"no_failed_request": True, "settled_on_best": True}
    assert report["arms_chosen"] == {"p0.4@2": 10, "w0.25@3": 90}
