"""The decision-time benchmark keeps running against the current selection API (its figures
come from running it, not from here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.decision_time import KINDS, measure, run_round


def test_every_kind_of_decision_is_timed() -> None:
    timings = measure(5)
    assert set(timings) == set(KINDS)
    assert all(len(values) == 5 and all(value > 0 for value in values) for values in timings.values())


def test_a_round_runs_in_a_fresh_process_on_the_given_checkout() -> None:
    checkout = Path(__file__).resolve().parents[2]
    medians = run_round(checkout, 3)
    assert set(medians) == set(KINDS) and all(value > 0 for value in medians.values())
