"""The heated node's share of the work before and after its heat event."""

from __future__ import annotations

import pytest

from benchmarks.heat_share import heat_shares


def answer(sent_s: float, nodes: list[tuple[str, float]], policy: str = "linucb") -> dict:
    return {"policy": policy, "outcome": "ok", "sent_s": sent_s,
            "timings": [{"node": node, "compute_ms": ms} for node, ms in nodes]}


def test_shares_of_compute_and_answers_split_at_the_event():
    records = [answer(1.0, [("hot", 30.0)]), answer(2.0, [("hot", 10.0), ("edge", 10.0)]),
               answer(6.0, [("edge", 5.0)]), answer(7.0, [("hot", 5.0), ("edge", 15.0)]),
               {"policy": "linucb", "outcome": "deadline_exceeded", "sent_s": 8.0, "timings": []}]
    shares = heat_shares(records, "hot", at_s=5.0)["linucb"]
    assert shares["compute_share_before"] == pytest.approx(40 / 50)
    assert shares["answer_share_before"] == 1.0 and shares["answers_before"] == 2
    assert shares["compute_share_after"] == pytest.approx(5 / 25)
    assert shares["answer_share_after"] == 0.5 and shares["answers_after"] == 2
