"""A node's start with real processes: a second node under a live node's id fails its start
(one line, exit 2) whether it joins through a seed or through the holder, both sides log it,
and the holder's id keeps its address; a restart under the id at a new address, once the
old process is gone, is no conflict."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from p2pinfer.errors import NodeStartError
from p2pinfer.testing import wait_until

SECRET = "test-identity-secret"
NODE = ("--secret", SECRET, "--variants", "digits-cnn", "--gossip-interval", "0.1")


def peers(node) -> dict[str, dict]:
    with urllib.request.urlopen(f"{node.url}/v1/peers", timeout=10) as answer:
        return {peer["node_id"]: peer for peer in json.loads(answer.read())["peers"]}


def links(node) -> dict[str, dict]:
    with urllib.request.urlopen(f"{node.url}/v1/peers", timeout=10) as answer:
        return json.loads(answer.read())["links"]


def sees_alive(node, node_id: str, address: str) -> bool:
    peer = peers(node).get(node_id)
    return peer is not None and peer["status"] == "alive" and peer["address"] == address


def test_a_second_node_under_a_live_id_fails_its_start(node_factory):
    holder = node_factory("--node-id", "twin", *NODE)
    seed = node_factory("--node-id", "seed", *NODE, "--seed", holder.address)
    wait_until(lambda: sees_alive(seed, "twin", holder.address), timeout_s=30, message="the seed to see twin")
    # a new peer's link is probed on sight (runtime.link_prober), and /v1/peers says so
    wait_until(lambda: links(seed).get("twin", {}).get("bandwidth_measured") is True, timeout_s=10,
               message="the seed to measure its link to twin")
    assert links(seed)["twin"]["age_s"] is not None
    def start_twin(contact) -> NodeStartError:
        with pytest.raises(NodeStartError) as refused:
            node_factory("--node-id", "twin", *NODE, "--seed", contact.address, timeout_s=60)
        return refused.value

    # through a seed that probes the holder, and through the holder; both at once (each start
    # loads torch and the models: side by side they take the time of one)
    with ThreadPoolExecutor(max_workers=2) as pool:
        refusals = list(pool.map(start_twin, (seed, holder)))
    for refusal in refusals:
        lines = [line for line in str(refusal).splitlines() if "cannot start" in line]
        assert str(refusal).startswith("node exited with 2")
        assert len(lines) == 1 and "node id 'twin' is taken by a live member at " + holder.address in lines[0]
    wait_until(lambda: any("refused a join" in line for line in seed.output)
               and any("refused a join" in line for line in holder.output), timeout_s=10,
               message="both refusers to log the conflict")
    assert sees_alive(seed, "twin", holder.address) and holder.alive()
    # the holder crashes; a new process under its id at another port is a restart, not a twin
    holder.kill()
    moved = node_factory("--node-id", "twin", *NODE, "--seed", seed.address)
    wait_until(lambda: sees_alive(seed, "twin", moved.address), timeout_s=30, message="the seed to adopt the move")


def test_a_unit_this_machine_cannot_run_fails_the_start_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``--units cuda:0`` where torch has no CUDA: the backend's reason, once, exit 2, no
    traceback (``p2pinfer node`` in this process: what its ``main`` returns is the exit code)."""
    import torch

    from p2pinfer.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine runs cuda:0")
    code = main(["node", "--variants", "digits-cnn-w1", "--units", "cpu,cuda:0", "--device-profile", "edge-server",
                 "--port", "0", "--host", "127.0.0.1"])
    error = capsys.readouterr().err
    assert code == 2
    lines = [line for line in error.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "backend cuda@cuda:0/float32 is unavailable" in lines[0], error


def test_a_node_joins_through_a_localhost_seed_and_a_message_for_another_node_is_still_refused(node_factory):
    """A seed named ``localhost:P`` for a node bound to 127.0.0.1 is the node: its first
    contact, signed for that name, is accepted (it was refused as ``wrong_recipient`` forever,
    and the cluster never formed). Gossip to a known member is signed for its node id, and a
    message signed for node A (by id or by A's address) is still refused by node B."""
    import time

    import msgspec

    from p2pinfer.membership.http import GOSSIP_PATH, MSGPACK
    from p2pinfer.membership.messages import Exchange, encode_message
    from p2pinfer.protocol.auth import sign_request
    from p2pinfer.types import NodeId

    first = node_factory("--node-id", "first", *NODE)
    port = first.address.rsplit(":", 1)[1]
    second = node_factory("--node-id", "second", *NODE, "--seed", f"localhost:{port}")
    wait_until(lambda: sees_alive(first, "second", second.address) and sees_alive(second, "first", first.address),
               timeout_s=30, message="the two nodes to see each other through the localhost seed")

    def refusals(node) -> float:
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as answer:
            return sum(float(line.rsplit(" ", 1)[1]) for line in answer.read().decode().splitlines()
                       if line.startswith('p2pinfer_peer_auth_rejections_total{reason="wrong_recipient"}'))

    assert refusals(first) == refusals(second) == 0  # every message reached the node it was signed for
    body = encode_message(Exchange(sender=NodeId("outsider")))
    for recipient in ("first", first.address, f"localhost:{port}"):
        headers = sign_request(SECRET.encode(), "outsider", "POST", GOSSIP_PATH, body, time.time(), to=recipient)
        request = urllib.request.Request(f"{second.url}{GOSSIP_PATH}", data=body, method="POST",
                                         headers={**headers, "Content-Type": MSGPACK})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        answer = msgspec.json.decode(refused.value.read())
        assert refused.value.code == 401 and answer["reason"] == "wrong_recipient", (recipient, answer)
    assert refusals(second) == 3
