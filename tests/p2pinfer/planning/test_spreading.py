"""Spreading: the expected wait at a replica, the entry's own outstanding requests, and the
placement that follows from them (the idle replica, a chain when one node is saturated)."""

from __future__ import annotations

import pytest

from p2pinfer.planning.peer_directory import PeerView, StaticDirectory
from p2pinfer.planning.placement import place
from p2pinfer.planning.spreading import MAX_PUSH_BACK_S, Outstanding, PushBack, expected_wait_ms
from p2pinfer.protocol.link_estimate import LinkEstimate
from zoo.manifest import read_manifest

MANIFEST = read_manifest()
VARIANT = MANIFEST.variant("digits-resnet-w0.25")
LINK = LinkEstimate(bandwidth_mbps=1000.0, rtt_ms=1.0)


def replica(node_id: str, queue_ms: float = 0.0, hosted: tuple[int, int] = (0, 3), block_ms: float = 20.0) -> PeerView:
    return PeerView(node_id=node_id, url=f"http://{node_id}", hosted={VARIANT.name: hosted},
                    block_ms={VARIANT.name: [block_ms] * 4}, queue_ms=queue_ms)


def test_expected_wait_takes_the_larger_of_gossip_and_own_outstanding():
    assert expected_wait_ms(0, 0, 80.0) == 0.0
    assert expected_wait_ms(2, 0, 80.0) == 160.0
    assert expected_wait_ms(1, 3, 80.0) == 240.0  # gossip is stale: we sent three since
    assert expected_wait_ms(3, 3, 80.0) == 240.0  # ours are in the gossiped count: not twice


def test_own_requests_that_finished_since_the_gossip_was_heard_leave_the_gossiped_count():
    assert expected_wait_ms(1, 0, 80.0, own_finished=1) == 0.0  # the one in flight was ours: back now
    assert expected_wait_ms(3, 0, 80.0, own_finished=1) == 160.0  # two others' jobs are still there
    assert expected_wait_ms(1, 0, 80.0, own_finished=4) == 0.0  # never below nothing
    assert expected_wait_ms(1, 2, 80.0, own_finished=1) == 160.0  # what we have there now still counts
    assert expected_wait_ms(0, 0, 80.0, 300.0, own_finished=1) == 300.0  # a refusal's wait too


def test_outstanding_remembers_which_requests_ran_across_the_moment_gossip_was_heard():
    now = [10.0]
    outstanding = Outstanding(clock=lambda: now[0])
    with outstanding.track(["b"]):
        now[0] = 11.0
    now[0] = 12.0
    with outstanding.track(["b", "c"]):  # 12 -> 14: in flight when b's load was heard at 13
        now[0] = 14.0
    now[0] = 15.0
    with outstanding.track(["b"]):  # started after 13: the record heard at 13 never counted it
        now[0] = 16.0
    assert outstanding.finished_since("b", 13.0) == 1
    assert outstanding.finished_since("b", 10.5) == 1  # the first one
    assert outstanding.finished_since("b", 11.5) == 0  # between requests: none was there
    assert outstanding.finished_since("c", 13.0) == 1 and outstanding.finished_since("d", 13.0) == 0
    with outstanding.track(["b"]):
        assert outstanding.finished_since("b", now[0]) == 0  # still in flight: ``count`` has it
        assert outstanding.count("b") == 1
    for _ in range(Outstanding.RECENT + 5):  # bounded: the oldest are forgotten
        with outstanding.track(["b"]):
            pass
    assert outstanding.finished_since("b", 13.0) == 0


def test_a_refusals_wait_is_a_floor_on_the_peers_queue_until_it_has_passed():
    now = [100.0]
    push_back = PushBack(clock=lambda: now[0])
    assert push_back.wait_ms("b") == 0.0
    push_back.refused("b", 0.3)
    assert push_back.wait_ms("b") == pytest.approx(300.0)
    assert expected_wait_ms(0, 0, 80.0, push_back.wait_ms("b")) == pytest.approx(300.0)  # gossip: idle; it refused
    assert expected_wait_ms(5, 0, 80.0, push_back.wait_ms("b")) == 400.0  # a longer queue stays longer
    now[0] += 0.1
    assert push_back.wait_ms("b") == pytest.approx(200.0)  # counting down
    push_back.refused("b", 0.05)  # a shorter wait does not cut the longer one short
    assert push_back.wait_ms("b") == pytest.approx(200.0)
    now[0] += 0.25
    assert push_back.wait_ms("b") == 0.0 and push_back.wait_ms("c") == 0.0
    push_back.refused("c", 3600.0)  # a peer cannot shut this node out for long
    assert push_back.wait_ms("c") == pytest.approx(MAX_PUSH_BACK_S * 1000)


def test_a_peer_that_refused_for_load_loses_the_next_request_to_an_idle_replica():
    directory = StaticDirectory("entry", [replica("entry", queue_ms=400.0), replica("busy"),
                                          replica("idle", block_ms=25.0)], default_link=LINK)
    assert [segment.node_id for segment in place(directory, None, VARIANT, 3).segments] == ["busy"]
    directory.mark_busy("busy", 0.5)
    assert [segment.node_id for segment in place(directory, None, VARIANT, 3).segments] == ["idle"]


def test_outstanding_counts_each_request_while_it_runs():
    outstanding = Outstanding()
    with outstanding.track(["b", "c"]):
        with outstanding.track(["b"]):
            assert outstanding.snapshot() == {"b": 2, "c": 1}
        assert outstanding.count("b") == 1
    assert outstanding.snapshot() == {} and outstanding.count("b") == 0


def test_work_goes_to_the_idle_replica_not_the_busy_one():
    directory = StaticDirectory("entry", [replica("entry", queue_ms=400.0), replica("busy", queue_ms=300.0),
                                          replica("idle")], default_link=LINK)
    chosen = place(directory, None, VARIANT, 3)
    assert [segment.node_id for segment in chosen.segments] == ["idle"]
    # an idle entry keeps its own work (no hop to pay)
    directory.update(replica("entry"))
    assert [segment.node_id for segment in place(directory, None, VARIANT, 3).segments] == ["entry"]


def test_a_chain_is_chosen_when_the_only_whole_replica_is_saturated():
    directory = StaticDirectory("entry", [replica("entry", queue_ms=500.0), replica("front", hosted=(0, 1)),
                                          replica("back", hosted=(2, 3))], default_link=LINK)
    chosen = place(directory, None, VARIANT, 3)
    assert [(s.node_id, s.first_block, s.last_block) for s in chosen.segments] == [("front", 0, 1), ("back", 2, 3)]
