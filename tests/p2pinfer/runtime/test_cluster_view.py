"""The planner's cluster view: cached per request burst, never behind a join."""

from __future__ import annotations

from p2pinfer.membership.messages import Address, Member
from p2pinfer.membership.view import View, merge
from p2pinfer.planning.latency_model import LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView
from p2pinfer.runtime.cluster_view import NodeDirectory
from p2pinfer.types import NodeId


class ViewAgent:
    """The part of a gossip agent the directory reads: its view and members."""

    def __init__(self, view: View) -> None:
        self.view = view

    def members(self) -> list[Member]:
        return list(self.view.members.values())


def record(node: str) -> Member:
    return Member(node_id=NodeId(node), incarnation=1, address=Address(f"{node}:1"),
                  variants={"digits-cnn-w1": [0.1, 0.1, 0.1]})


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
