"""Member records and their merge: SWIM precedence, refutation, corrections, tombstones."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.membership.messages import Address, Member, Status
from p2pinfer.membership.view import ChangeKind, View, merge, supersedes
from p2pinfer.types import NodeId


def record(node: str = "b", incarnation: int = 1, heartbeat: int = 0, status: Status = Status.ALIVE,
           revision: int = 0, **fields) -> Member:
    return Member(node_id=NodeId(node), incarnation=incarnation, heartbeat=heartbeat, revision=revision,
                  address=Address(f"{node}.local:9000"), status=status, **fields)


def view_with(*records: Member, own: Member | None = None) -> View:
    view = View(own or record("a", incarnation=100))
    merge(view, records, now=0.0)
    return view


def test_higher_incarnation_wins_whatever_the_status():
    assert supersedes(record(incarnation=2, status=Status.ALIVE), record(incarnation=1, status=Status.DEAD))
    assert not supersedes(record(incarnation=1, status=Status.LEFT), record(incarnation=2, status=Status.ALIVE))


def test_same_incarnation_later_state_wins_and_left_is_final():
    order = [Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT]
    for earlier, later in zip(order, order[1:], strict=False):
        assert supersedes(record(status=later), record(status=earlier, heartbeat=99))
        assert not supersedes(record(status=earlier, heartbeat=99), record(status=later))
    assert not supersedes(record(status=Status.ALIVE, heartbeat=1000), record(status=Status.LEFT))


def test_same_incarnation_and_state_higher_heartbeat_wins():
    assert supersedes(record(heartbeat=5), record(heartbeat=4))
    assert not supersedes(record(heartbeat=4), record(heartbeat=4))
    assert not supersedes(record(heartbeat=3), record(heartbeat=4))


def test_merge_reports_joins_updates_refreshes_and_ignores_older():
    view = view_with()
    changes, _ = merge(view, [record(heartbeat=1)], now=1.0)
    assert [c.kind for c in changes] == [ChangeKind.JOINED]
    changes, _ = merge(view, [record(heartbeat=2, load=msgspec.structs.replace(record().load, queue_depth=3))], 2.0)
    assert [c.kind for c in changes] == [ChangeKind.REFRESHED]
    assert not changes[0].newsworthy
    changes, _ = merge(view, [record(heartbeat=3, revision=1, variants={"v": [1.0]})], 3.0)
    assert [c.kind for c in changes] == [ChangeKind.UPDATED] and changes[0].newsworthy
    changes, corrections = merge(view, [record(heartbeat=1)], 4.0)
    assert changes == [] and view.get("b").heartbeat == 3
    assert corrections == [view.get("b")]  # the sender lags a revision: send it ours


def test_merge_status_transitions_and_revival():
    view = view_with(record(heartbeat=4))
    kinds = []
    for incoming in (record(status=Status.SUSPECT, suspected_by=NodeId("c")), record(status=Status.DEAD),
                     record(incarnation=2), record(incarnation=2, status=Status.LEFT)):
        changes, _ = merge(view, [incoming], 1.0)
        kinds.append(changes[0].kind)
    assert kinds == [ChangeKind.SUSPECTED, ChangeKind.DIED, ChangeKind.REVIVED, ChangeKind.LEFT]
    assert not view.is_live(NodeId("b"))
    changes, _ = merge(view, [record(incarnation=2, heartbeat=50)], 2.0)
    assert changes == [] and view.get("b").status is Status.LEFT  # left is final for incarnation 2


def test_suspicion_about_self_is_refuted_with_a_higher_incarnation():
    view = View(record("a", incarnation=7, heartbeat=3))
    changes, _ = merge(view, [record("a", incarnation=7, status=Status.SUSPECT, suspected_by=NodeId("b"))], 1.0)
    assert [c.kind for c in changes] == [ChangeKind.REFUTED]
    assert view.own.incarnation == 8 and view.own.status is Status.ALIVE
    changes, _ = merge(view, [record("a", incarnation=12, status=Status.DEAD)], 2.0)
    assert view.own.incarnation == 13 and view.own.status is Status.ALIVE
    assert changes[0].member == view.own
    # An older rumour about itself changes nothing.
    assert merge(view, [record("a", incarnation=12, status=Status.DEAD)], 3.0).changes == []


def test_a_leaving_node_does_not_refute():
    view = View(record("a", incarnation=7, status=Status.LEFT))
    assert merge(view, [record("a", incarnation=7, status=Status.DEAD, heartbeat=9)], 1.0).changes == []
    assert view.own.status is Status.LEFT


def test_stale_local_suspect_record_is_sent_back_as_a_correction():
    view = view_with(record(status=Status.SUSPECT, suspected_by=NodeId("c")))
    _, corrections = merge(view, [record(heartbeat=10)], 1.0)  # b still thinks it is plainly alive
    assert corrections == [view.get("b")] and corrections[0].status is Status.SUSPECT


def test_distinct_suspectors_count_as_confirmations():
    view = view_with(record(status=Status.SUSPECT, suspected_by=NodeId("c")))
    changes, _ = merge(view, [record(status=Status.SUSPECT, suspected_by=NodeId("d"))], 1.0)
    assert [c.kind for c in changes] == [ChangeKind.CONFIRMED]
    assert merge(view, [record(status=Status.SUSPECT, suspected_by=NodeId("d"))], 2.0).changes == []
    assert view.suspicions[NodeId("b")].confirmers == {"c", "d"}


def test_reaped_tombstone_cannot_be_resurrected_by_a_stale_record():
    view = view_with(record(status=Status.DEAD))
    assert view.reap(now=100.0, tombstone_s=10.0) == ["b"]
    assert "b" not in view
    assert merge(view, [record(incarnation=1, heartbeat=99)], 101.0).changes == []
    changes, _ = merge(view, [record(incarnation=2)], 102.0)  # a restart outranks the grave
    assert [c.kind for c in changes] == [ChangeKind.JOINED] and view.is_live(NodeId("b"))


def test_digest_equal_for_equal_membership_and_live_list_consistent():
    records = [record(f"n{i}", incarnation=i + 1) for i in range(20)]
    first = view_with(*records)
    second = view_with(*reversed(records))
    assert first.digest() == second.digest()
    merge(second, [record("n3", incarnation=4, status=Status.DEAD)], 1.0)
    assert first.digest() != second.digest()
    assert sorted(second.live_ids) == sorted(m.node_id for m in second if m.status <= Status.SUSPECT)


statuses = st.sampled_from(list(Status))
records_strategy = st.lists(
    st.builds(lambda node, inc, hb, status: record(node, inc, hb, status),
              st.sampled_from(["b", "c", "d"]), st.integers(1, 3), st.integers(0, 3), statuses),
    max_size=12)


@settings(max_examples=150, deadline=None)
@given(records_strategy, st.randoms(use_true_random=False))
def test_merge_converges_whatever_the_order(records, rng: random.Random):
    """Two nodes that receive the same records in different orders hold the same view."""
    shuffled = list(records)
    rng.shuffle(shuffled)
    first, second = view_with(), view_with()
    merge(first, records, 0.0)
    for item in shuffled:
        merge(second, [item], 0.0)
    assert {m.node_id: (m.incarnation, m.status, m.heartbeat) for m in first} == \
        {m.node_id: (m.incarnation, m.status, m.heartbeat) for m in second}
    assert first.digest() == second.digest()
