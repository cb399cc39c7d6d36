"""The entry-cost benchmark's arithmetic (its figures come from running it, not from here), and
one short real round, kept out of the default run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.entry_cost import PARTS, combine, latency_parts, run_round, summarize_round


def answer(latency_ms: float, *segments: tuple[str, float, float, float]) -> dict:
    return {"latency_ms": latency_ms, "timings": [{"node": node, "compute_ms": compute, "transfer_ms": transfer,
                                                   "queue_ms": queue} for node, compute, transfer, queue in segments]}


def test_what_no_segment_accounts_for_is_the_rest_of_the_latency() -> None:
    parts = latency_parts(answer(25.0, ("edge", 4.0, 13.5, 0.5)))
    assert parts == {"latency": 25.0, "compute": 4.0, "transfer": 13.5, "queue": 0.5, "other": 7.0}
    split = latency_parts(answer(30.0, ("pi", 6.0, 0.0, 0.0), ("edge", 2.0, 12.0, 1.0)))
    assert split["compute"] == 8.0 and split["other"] == pytest.approx(9.0)


def test_a_round_counts_failures_and_the_share_that_ran_on_the_peer() -> None:
    answers = [answer(20.0, ("edge", 4.0, 12.0, 0.0)), None, answer(40.0, ("pi", 30.0, 0.0, 0.0)),
               answer(24.0, ("edge", 4.0, 14.0, 0.0))]
    summary = summarize_round(answers, "edge")
    assert summary["answered"] == 3 and summary["requests"] == 4
    assert summary["offloaded_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["median_ms"]["latency"] == 24.0 and summary["median_ms"]["compute"] == 4.0
    assert set(summary["median_ms"]) == set(PARTS)
    rounds = [{"cpu_ms_per_request": {"entry": entry, "peer": 2.0}, **summary} for entry in (5.0, 7.0, 6.0)]
    combined = combine(rounds)
    assert combined["cpu_ms_per_request"]["entry"]["median"] == 6.0
    assert combined["cpu_ms_per_request"]["entry"]["min"] == 5.0


@pytest.mark.slow
def test_a_real_round_offloads_and_charges_both_nodes() -> None:
    checkout = Path(__file__).resolve().parents[2]
    figures = run_round(checkout, requests=20, gap_ms=0.0)
    assert figures["answered"] == 20
    assert figures["cpu_ms_per_request"]["entry"] > 0 and figures["cpu_ms_per_request"]["peer"] > 0
    assert figures["median_ms"]["transfer"] > 0  # the requests crossed the emulated link
