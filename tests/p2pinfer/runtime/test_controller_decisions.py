"""The controller's pure decisions, without a node."""

from __future__ import annotations

from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.runtime.controller import SHEDDABLE_WAIT_SHARE, first_try_wait_share


def segment(node: str, first: int, last: int) -> PlanSegment:
    return PlanSegment(node=node, unit="cpu", first_block=first, last_block=last)


def test_only_a_plan_on_this_node_waits_half_its_slack_on_its_first_try() -> None:
    """Half a slack leaves time to shed to a cheaper arm when the refusal is free (this node's
    unit refuses at once); a plan through a peer has paid the hop by the time it is refused."""
    assert first_try_wait_share(True, [segment("jetson", 0, 3)], "jetson") == SHEDDABLE_WAIT_SHARE < 1.0
    assert first_try_wait_share(True, [segment("jetson", 0, 1), segment("jetson", 2, 3)], "jetson") < 1.0
    assert first_try_wait_share(True, [segment("edge", 0, 3)], "jetson") == 1.0
    assert first_try_wait_share(True, [segment("jetson", 0, 1), segment("edge", 2, 3)], "jetson") == 1.0
    assert first_try_wait_share(False, [segment("jetson", 0, 3)], "jetson") == 1.0  # nothing to shed to
