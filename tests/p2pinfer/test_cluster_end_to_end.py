"""Real ``p2pinfer node`` processes on loopback: membership, chains, failover, the selector.

Each test starts its own nodes (free ports, one shared secret), blocks on their readiness
lines, and waits on conditions read from the nodes' own HTTP routes — never on sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from p2pinfer import Client
from p2pinfer.errors import DeadlineExceeded
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import wait_until
from selector.calibration import CalibrationTable, calibrated_accuracy
from zoo.dataset import held_out
from zoo.model_slice import load_slice

SECRET = "test-cluster-secret"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def alive_ids(node) -> set[str]:
    try:
        view = get_json(f"{node.url}/v1/peers")
    except OSError:
        return set()
    return {peer["node_id"] for peer in view["peers"] if peer["status"] in ("alive", "suspect")}


def status_of(node, node_id: str) -> tuple[str, int] | None:
    view = get_json(f"{node.url}/v1/peers")
    for peer in view["peers"]:
        if peer["node_id"] == node_id:
            return peer["status"], peer["incarnation"]
    return None


def start_cluster(node_factory, count: int, variants: str, *extra: str):
    nodes = [node_factory("--node-id", "node-0", "--secret", SECRET, "--variants", variants,
                          "--gossip-interval", "0.1", *extra)]
    seed = nodes[0].url.removeprefix("http://")

    def join(index: int):
        return node_factory("--node-id", f"node-{index}", "--secret", SECRET, "--variants", variants,
                            "--gossip-interval", "0.1", "--seed", seed, *extra)

    with ThreadPoolExecutor(max_workers=count - 1) as pool:  # the others start side by side, as a fleet does
        nodes += list(pool.map(join, range(1, count)))
    everyone = {node.node_id for node in nodes}
    for node in nodes:
        wait_until(lambda node=node: alive_ids(node) == everyone, timeout_s=30,
                   message=f"{node.node_id} to see all {count} nodes")
    return nodes


def test_membership_failure_detection_rejoin_and_coordinator_takeover(node_factory):
    nodes = start_cluster(node_factory, 5, "digits-cnn-w0.25")
    assert all(get_json(f"{node.url}/v1/peers")["coordinator"] == "node-0" for node in nodes)
    # kill -9 a node: every other node marks it dead within the stated bound
    victim = nodes[4]
    _, incarnation_before = status_of(nodes[0], victim.node_id)
    victim.kill()
    killed_at = time.monotonic()
    for node in nodes[:4]:
        wait_until(lambda node=node: status_of(node, victim.node_id)[0] == "dead", timeout_s=15,
                   message=f"{node.node_id} to mark node-4 dead")
    detection_s = time.monotonic() - killed_at
    assert detection_s < 15
    # it comes back (same id and port) with a higher incarnation, and is alive again everywhere
    port = victim.port
    revived = node_factory("--node-id", "node-4", "--port", str(port), "--secret", SECRET,
                           "--variants", "digits-cnn-w0.25", "--gossip-interval", "0.1",
                           "--seed", nodes[0].url.removeprefix("http://"))
    for node in nodes[:4]:
        wait_until(lambda node=node: status_of(node, "node-4")[0] == "alive", timeout_s=20,
                   message=f"{node.node_id} to see node-4 alive again")
    assert status_of(nodes[1], "node-4")[1] > incarnation_before
    # the coordinator dies during a stream of requests: none fails, another node takes the role
    images, _ = held_out((1, 8, 8))
    entries = [nodes[1].url, nodes[2].url, revived.url]
    coordinator = nodes[0]
    answered = 0
    with Client(entries) as client:
        for index in range(60):
            if index == 20:
                coordinator.kill()
            result = client.infer(images[index].numpy(), deadline_ms=2000, family="digits-cnn")
            assert result.label in range(10)
            answered += 1
    assert answered == 60
    wait_until(lambda: get_json(f"{nodes[1].url}/v1/peers")["coordinator"] == "node-1", timeout_s=20,
               message="node-1 to take the coordinator role")


def test_merged_bandit_statistics_reach_every_node(node_factory):
    nodes = start_cluster(node_factory, 3, "digits-cnn")
    images, _ = held_out((1, 8, 8))
    with Client(nodes[0].url) as client:
        for index in range(30):
            client.infer(images[index].numpy(), deadline_ms=1000, family="digits-cnn", user=f"user-{index % 3}")
    learned = get_json(f"{nodes[0].url}/v1/health")["policy"]["observations"]
    assert learned >= 30
    for node in nodes[1:]:
        wait_until(lambda node=node: get_json(f"{node.url}/v1/health")["merged_observations"] >= 30,
                   timeout_s=30, message=f"{node.node_id} to merge node-0's statistics")


def compositions(blocks: int, parts: int):
    """Every way to cut blocks [0, blocks) into ``parts`` non-empty contiguous segments."""
    for cuts in itertools.combinations(range(1, blocks), parts - 1):
        edges = [0, *cuts, blocks]
        yield [(edges[i], edges[i + 1] - 1) for i in range(parts)]


def test_chains_through_three_real_nodes_equal_one_full_forward(node_factory):
    variant = "digits-resnet-w0.25"
    nodes = start_cluster(node_factory, 3, variant)
    model = load_slice(variant)
    images, _ = held_out((1, 64, 64))
    sample = images[:1]
    expected = torch.softmax(model.exit_logits(3, model.run(sample)), -1)[0].numpy()
    plans = [segments for parts in (1, 2, 3) for segments in compositions(4, parts)]
    assert len(plans) == 1 + 3 + 3  # every split point, two-way and three-way
    with Client(nodes[0].url) as client:
        for segments in plans:
            plan = [PlanSegment(node=nodes[i].node_id, unit="cpu", first_block=first, last_block=last)
                    for i, (first, last) in enumerate(segments)]
            result = client.infer(sample.numpy(), deadline_ms=10000, family="digits-resnet", variant=variant,
                                  plan=plan)
            assert [(s.node, s.first_block, s.last_block) for s in result.plan] == \
                [(s.node, s.first_block, s.last_block) for s in plan]
            assert np.allclose(result.probabilities, expected, atol=2e-6), segments
            assert len(result.timings) == len(plan)


@pytest.mark.parametrize("deadline_ms,expect_accurate", [(2000.0, True), (10.0, False)])
def test_the_selector_settles_on_an_arm_that_fits_the_deadline(node_factory, deadline_ms, expect_accurate):
    node = node_factory("--variants", "digits-resnet", "--policy", "linucb", "--max-batch", "1")
    images, labels = held_out((1, 64, 64))
    from zoo.manifest import read_manifest

    manifest = read_manifest()
    with Client(node.url) as client:
        results = []
        for index in range(80):  # a tight deadline may be missed while the policy learns: that is an answer too
            with contextlib.suppress(DeadlineExceeded):
                results.append(client.infer(images[index].numpy(), deadline_ms=deadline_ms, family="digits-resnet",
                                            qoe={"accuracy": 1.0, "latency": 0.2, "energy": 0.0}))
        assert len(results) >= 40
        settled = results[-25:]
        accuracy = [manifest.variant(r.variant).exit_accuracy(r.exit) for r in settled]
        flops = [sum(b.flops for b in manifest.variant(r.variant).blocks[:r.exit + 1]) for r in settled]
        full_flops = manifest.variant("digits-resnet-w1").flops_total
        if expect_accurate:  # the median arm: a bandit still explores (a CI rehearsal: ~5 of 25 at w1's exit 1, 0.70)
            assert np.median(accuracy) >= 0.93, [r.arm for r in settled]
        else:
            assert np.median(flops) <= 0.25 * full_flops, [r.arm for r in settled]
        # feedback for a request id changes the policy's statistics: a label that makes the
        # answer's accuracy differ from the calibrated estimate its provisional reward used
        # (a wrong label changes nothing when the estimate was already 0: a low-confidence
        # first exit; confirming changes nothing when it was already 1)
        last = results[-1]
        exit_info = next(e for e in manifest.variant(last.variant).exits if e.block == last.exit)
        table = exit_info.calibration
        estimated = calibrated_accuracy(
            CalibrationTable(tuple(table.confidence), tuple(table.accuracy)) if table is not None else None,
            float(max(last.probabilities)), fallback=exit_info.accuracy)
        label = last.label if estimated < 0.5 else (last.label + 1) % 10
        before = client.health()["policy"]["statistics_digest"]
        feedback = client.feedback(last.request_id, label=label)
        assert feedback.applied
        after = client.health()["policy"]["statistics_digest"]
        assert after != before


def test_two_compute_units_of_one_node_share_a_request(node_factory):
    variant = "digits-resnet-w0.25"
    node = node_factory("--node-id", "duo", "--variants", variant, "--units", "cpu,cpu:1")
    health = get_json(f"{node.url}/v1/peers")
    own = next(peer for peer in health["peers"] if peer["node_id"] == "duo")
    assert own["compute_units"] == ["cpu", "cpu:1"]
    model = load_slice(variant)
    images, _ = held_out((1, 64, 64))
    expected = torch.softmax(model.exit_logits(3, model.run(images[:1])), -1)[0].numpy()
    plan = [PlanSegment(node="duo", unit="cpu", first_block=0, last_block=1),
            PlanSegment(node="duo", unit="cpu:1", first_block=2, last_block=3)]
    with Client(node.url) as client:
        result = client.infer(images[:1].numpy(), deadline_ms=10000, family="digits-resnet", variant=variant,
                              plan=plan)
        assert [timing.unit for timing in result.timings] == ["cpu", "cpu:1"]
        assert np.allclose(result.probabilities, expected, atol=2e-6)
        with pytest.raises(Exception, match="no compute unit"):
            client.infer(images[:1].numpy(), deadline_ms=10000, family="digits-resnet", variant=variant,
                         plan=[PlanSegment(node="duo", unit="cuda:7", first_block=0, last_block=3)])


def test_kill_9_in_the_middle_of_a_chain_loses_no_request(node_factory):
    variant = "digits-resnet-w0.25"
    nodes = start_cluster(node_factory, 3, variant)
    images, _ = held_out((1, 64, 64))
    plan = [PlanSegment(node="node-0", unit="cpu", first_block=0, last_block=0),
            PlanSegment(node="node-1", unit="cpu", first_block=1, last_block=2),
            PlanSegment(node="node-2", unit="cpu", first_block=3, last_block=3)]
    outcomes: list[object] = []
    with Client(nodes[0].url) as client:
        for index in range(30):
            if index == 10:
                nodes[1].kill()
            try:
                outcomes.append(client.infer(images[index].numpy(), deadline_ms=5000, family="digits-resnet",
                                             variant=variant, plan=plan))
            except Exception as error:  # noqa: BLE001 - an explicit error is an answer too; counted below
                outcomes.append(error)
        metrics = client.metrics()
    assert len(outcomes) == 30  # exactly one answer each
    results = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    assert len(results) == 30, [repr(o) for o in outcomes if isinstance(o, Exception)]
    assert all(result.exit == 3 for result in results)
    assert all("node-1" not in [s.node for s in result.plan] for result in results[11:])
    assert sum(result.replans for result in results[10:]) >= 1
    replans = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("p2pinfer_replans_total"))
    assert replans >= 1
    # every re-plan happened at the entry (the killed node-1 re-plans nothing): counted once each
    assert replans == sum(result.replans for result in results)
