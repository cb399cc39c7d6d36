"""SWIM failure detection on a fake clock: suspect -> dead, confirmations, refutation, probes."""

from __future__ import annotations

import random

import pytest

from p2pinfer.membership import swim
from p2pinfer.membership.messages import Address, Member, Status
from p2pinfer.membership.view import ChangeKind, View, merge
from p2pinfer.types import NodeId


def record(node: str, incarnation: int = 1, status: Status = Status.ALIVE, **fields) -> Member:
    return Member(node_id=NodeId(node), incarnation=incarnation, address=Address(f"{node}:1"), status=status,
                  **fields)


def cluster_view(owner: str = "a", others: tuple[str, ...] = ("b", "c", "d", "e")) -> View:
    view = View(record(owner, incarnation=50))
    merge(view, [record(node) for node in others], now=0.0)
    return view


def test_suspicion_timeouts_scale_with_log_n():
    small_min, small_max = swim.suspicion_timeouts(5, interval_s=1.0)
    large_min, large_max = swim.suspicion_timeouts(1000, interval_s=1.0)
    assert small_min == pytest.approx(4.0) and small_max == pytest.approx(24.0)
    assert large_min == pytest.approx(12.0) and large_max == pytest.approx(72.0)
    # Lifeguard: the timeout falls from max to min as independent confirmations arrive.
    timeouts = [swim.suspicion_timeout(c, 4.0, 24.0, expected_confirmations=3) for c in range(5)]
    assert timeouts[0] == 24.0 and timeouts[3] == pytest.approx(4.0) and timeouts[4] == 4.0
    assert timeouts == sorted(timeouts, reverse=True)


def test_suspect_becomes_dead_only_after_the_timeout():
    view = cluster_view()
    change = swim.suspect(view, NodeId("b"), now=10.0)
    assert change.kind is ChangeKind.SUSPECTED and change.member.suspected_by == "a"
    assert view.get("b").status is Status.SUSPECT and view.is_live(NodeId("b"))
    minimum, maximum = 4.0, 24.0
    assert swim.expire_suspicions(view, 10.0 + maximum - 0.01, minimum, maximum, 3) == []
    died = swim.expire_suspicions(view, 10.0 + maximum, minimum, maximum, 3)
    assert [c.kind for c in died] == [ChangeKind.DIED]
    assert view.get("b").status is Status.DEAD and not view.is_live(NodeId("b"))
    assert view.get("b").incarnation == 1  # death is declared for the suspected incarnation


def test_confirmations_shorten_the_timeout():
    view = cluster_view()
    swim.suspect(view, NodeId("b"), now=0.0)
    for suspector in ("c", "d", "e"):
        merge(view, [record("b", status=Status.SUSPECT, suspected_by=NodeId(suspector))], now=1.0)
    assert swim.expire_suspicions(view, 3.9, 4.0, 24.0, 3) == []
    assert [c.kind for c in swim.expire_suspicions(view, 4.0, 4.0, 24.0, 3)] == [ChangeKind.DIED]


def test_own_failed_probe_confirms_an_existing_suspicion_once():
    view = cluster_view()
    merge(view, [record("b", status=Status.SUSPECT, suspected_by=NodeId("c"))], now=0.0)
    change = swim.suspect(view, NodeId("b"), now=1.0)
    assert change.kind is ChangeKind.CONFIRMED and change.member.suspected_by == "a"
    assert swim.suspect(view, NodeId("b"), now=2.0) is None


def test_refutation_before_the_timeout_cancels_the_suspicion():
    view = cluster_view()
    swim.suspect(view, NodeId("b"), now=0.0)
    changes, _ = merge(view, [record("b", incarnation=2)], now=1.0)  # b heard and refuted
    assert [c.kind for c in changes] == [ChangeKind.REVIVED]
    assert swim.expire_suspicions(view, 1000.0, 4.0, 24.0, 3) == []
    assert view.get("b").status is Status.ALIVE


def test_suspected_node_refutes_and_its_refutation_wins_everywhere():
    accused = View(record("b", incarnation=1))
    accuser = cluster_view()
    suspicion = swim.suspect(accuser, NodeId("b"), now=0.0).member
    refutation = merge(accused, [suspicion], now=0.0).changes[0].member
    assert refutation.incarnation == 2 and refutation.status is Status.ALIVE
    merge(accuser, [refutation], now=1.0)
    assert accuser.get("b").status is Status.ALIVE and "b" not in accuser.suspicions


def test_probe_schedule_is_round_robin_over_live_members():
    view = cluster_view(others=tuple(f"n{i}" for i in range(10)))
    schedule = swim.ProbeSchedule()
    rng = random.Random(1)
    first_cycle = [schedule.next_target(view, rng) for _ in range(10)]
    assert sorted(first_cycle) == sorted(f"n{i}" for i in range(10))
    swim.suspect(view, NodeId("n3"), now=0.0)
    merge(view, [record("n4", status=Status.DEAD)], now=0.0)
    second_cycle = [schedule.next_target(view, rng) for _ in range(9)]
    assert "n4" not in second_cycle and "n3" in second_cycle  # suspects are still probed


def test_probe_schedule_with_no_peer():
    assert swim.ProbeSchedule().next_target(View(record("a")), random.Random(0)) is None


def test_local_health_multiplier():
    health = swim.LocalHealth(maximum=3)
    assert health.multiplier == 1
    for _ in range(5):
        health.worse()
    assert health.multiplier == 4
    health.better()
    assert health.multiplier == 3


def test_leave_is_final_for_the_incarnation():
    view = cluster_view()
    left = swim.leave(view.get("b"))
    merge(view, [left], now=0.0)
    assert view.get("b").status is Status.LEFT
    merge(view, [record("b", heartbeat=100)], now=1.0)
    assert view.get("b").status is Status.LEFT
