"""The real pretrained family across two real nodes: every split of text-orientation-w1
between an entry and a peer answers what the local forward answers."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import torch

from p2pinfer import Client
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import wait_until
from zoo.manifest import PRETRAINED_ZOO_DIR, read_manifest
from zoo.model_slice import load_slice
from zoo.orientation_data import held_out

SECRET = "real-family-secret"
VARIANT = "text-orientation-w1"


def peers_of(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/v1/peers", timeout=10) as answer:
        return {peer["node_id"] for peer in json.loads(answer.read())["peers"]}


def test_every_two_node_split_of_the_real_family_equals_the_local_forward(node_factory):
    variant = read_manifest(PRETRAINED_ZOO_DIR).variant(VARIANT)
    last = variant.block_count - 1
    common = ("--secret", SECRET, "--zoo", str(PRETRAINED_ZOO_DIR), "--variants", VARIANT, "--gossip-interval", "0.1")
    entry = node_factory("--node-id", "entry", *common)
    node_factory("--node-id", "peer", *common, "--seed", entry.url.removeprefix("http://"))
    wait_until(lambda: {"entry", "peer"} <= peers_of(entry.url), timeout_s=30, message="the entry to see its peer")
    images, labels = held_out(count=2)
    model = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    with torch.inference_mode():
        expected = torch.softmax(model.exit_logits(last, model.run(images)), -1).numpy()
    with Client(entry.url) as client:
        for cut in range(last):  # entry runs blocks [0, cut], the peer the rest
            plan = [PlanSegment(node="entry", unit="cpu", first_block=0, last_block=cut),
                    PlanSegment(node="peer", unit="cpu", first_block=cut + 1, last_block=last)]
            for index in range(len(images)):
                result = client.infer(images[index:index + 1].numpy(), deadline_ms=30_000, family=variant.family,
                                      variant=VARIANT, exit=last, plan=plan)
                assert [segment.node for segment in result.plan] == ["entry", "peer"]
                assert np.abs(np.asarray(result.probabilities) - expected[index]).max() <= 1e-5, cut
                assert result.label == int(labels[index])
