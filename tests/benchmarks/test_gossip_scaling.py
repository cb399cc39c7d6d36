"""The gossip-scaling benchmark reads the served gossip bytes from a node's /metrics."""

from __future__ import annotations

from benchmarks.gossip_scaling import gossip_bytes


def test_gossip_bytes_sums_request_and_reply_bytes():
    text = "\n".join([
        "# HELP p2pinfer_gossip_events Gossip and failure-detector events so far",
        'p2pinfer_gossip_events{kind="rounds"} 12.0',
        'p2pinfer_gossip_events{kind="received_bytes"} 1500.0',
        'p2pinfer_gossip_events{kind="replied_bytes"} 2500.0',
    ])
    assert gossip_bytes(text) == 4000.0
    assert gossip_bytes("") == 0.0
