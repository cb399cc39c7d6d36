"""The planner's cluster view: cached per request burst, never behind a join, and not fooled by
a peer's gossiped load that still counts this node's own finished request."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from p2pinfer.membership.messages import Address, Load, Member
from p2pinfer.membership.view import Change, View, merge
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView
from p2pinfer.planning.spreading import Outstanding
from p2pinfer.runtime.cluster_view import NodeDirectory
from p2pinfer.types import NodeId


class ViewAgent:
    """The part of a gossip agent the directory reads: its view, members and change listeners."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.listeners: list[Callable[[Change], None]] = []

    def members(self) -> list[Member]:
        return list(self.view.members.values())

    def on_change(self, listener: Callable[[Change], None]) -> None:
        self.listeners.append(listener)

    def hear(self, records: list[Member]) -> None:
        """Records arrive by gossip, as the agent folds them in."""
        for change in merge(self.view, records, now=0.0).changes:
            for listener in self.listeners:
                listener(change)


def record(node: str, heartbeat: int = 0, in_flight: int = 0) -> Member:
    return Member(node_id=NodeId(node), incarnation=1, heartbeat=heartbeat, address=Address(f"{node}:1"),
                  variants={"digits-cnn-w1": [0.1, 0.1, 0.1]}, load=Load(in_flight=in_flight))


def test_a_member_that_joined_is_known_to_the_next_plan_even_within_the_cache_age():
    """The view is cached for 20 ms (one request asks for it several times), but a join must
    show at once: a pinned plan naming a node ``/v1/peers`` already lists was refused as
    unknown (seen once in a CI run)."""
    own = PeerView(node_id=NodeId("entry"), url="http://entry:1", alive=True, hosted={}, block_ms={},
                   units=("cpu",), queue_ms=0.0, slowdown=1.0)
    view = View(record("entry"))
    directory = NodeDirectory("entry", lambda: own, LinkLatencyModel(), ViewAgent(view))
    assert [peer.node_id for peer in directory.peers()] == ["entry"]
    merge(view, [record("tail")], now=0.0)
    assert [peer.node_id for peer in directory.peers()] == ["entry", "tail"]
    first = directory.peers()
    assert directory.peers() is first  # no join since: the cached list


def test_a_peers_gossiped_load_stops_counting_this_nodes_request_once_it_came_back():
    """Heard while this node's request ran there, "one in flight" at the tail says nothing once
    the request has come back; a record heard later that still says one in flight is someone
    else's work and counts."""
    own = PeerView(node_id=NodeId("entry"), url="http://entry:1", alive=True, hosted={}, block_ms={},
                   units=("cpu",), queue_ms=0.0, slowdown=1.0)
    view = View(record("entry"))
    agent = ViewAgent(view)
    outstanding = Outstanding()
    directory = NodeDirectory("entry", lambda: own, LinkLatencyModel(), agent, outstanding=outstanding)
    agent.hear([record("tail", heartbeat=1)])

    def tail_queue_ms() -> float:  # within the view's 20 ms cache: what changed must show at once
        return next(peer.queue_ms for peer in directory.peers() if peer.node_id == "tail")

    assert tail_queue_ms() == 0.0
    with outstanding.track(["tail"]):
        agent.hear([record("tail", heartbeat=2, in_flight=1)])  # our request, as gossip reports it
        assert tail_queue_ms() > 0.0
    assert tail_queue_ms() == 0.0  # back: the stale record no longer makes the tail look busy
    agent.hear([record("tail", heartbeat=3, in_flight=1)])  # heard after ours finished: another's
    assert tail_queue_ms() > 0.0


def test_a_stage_reply_is_fresher_than_the_record_heard_before_it_and_older_than_the_next():
    own = PeerView(node_id=NodeId("entry"), url="http://entry:1", alive=True, hosted={}, block_ms={},
                   units=("cpu",), queue_ms=0.0, slowdown=1.0)
    agent = ViewAgent(View(record("entry")))
    outstanding = Outstanding()
    directory = NodeDirectory("entry", lambda: own, LinkLatencyModel(), agent, outstanding=outstanding)
    agent.hear([record("tail", heartbeat=1, in_flight=3)])  # three jobs there, as gossip last said

    def tail_queue_ms() -> float:
        return next(peer.queue_ms for peer in directory.peers() if peer.node_id == "tail")

    per_job = tail_queue_ms() / 3
    assert per_job > 0
    with outstanding.track(["tail"]):
        directory.heard_load("tail", 1, 1, 2, counted=True)  # its reply to our request: one other job there
        assert tail_queue_ms() == pytest.approx(2 * per_job)  # ours is still counted until we are done
    assert tail_queue_ms() == pytest.approx(per_job)  # done: the other job is what is left
    directory.heard_load("tail", 0, 1, 2)  # a reply to a hop this node forwarded: nothing there after it
    assert tail_queue_ms() == 0.0
    agent.hear([record("tail", heartbeat=2, in_flight=3)])  # taken before the reply, relayed late: older
    assert tail_queue_ms() == 0.0
    agent.hear([record("tail", heartbeat=3, in_flight=2)])  # taken after the reply: newer, it counts
    assert tail_queue_ms() == pytest.approx(2 * per_job)
