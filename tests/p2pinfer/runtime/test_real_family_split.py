"""The real pretrained family across two real nodes: every split of text-orientation-w1
between an entry and a peer answers what the local forward answers."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from p2pinfer import Client
from p2pinfer.errors import BadShape
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import wait_until
from zoo.manifest import PRETRAINED_ZOO_DIR, read_manifest
from zoo.model_slice import load_slice
from zoo.orientation_data import HELD_OUT_SEED, camera_jpeg, held_out, preprocess, sample

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


def test_a_lower_resolution_variant_gets_its_own_input(node_factory):
    """text-orientation-r160 takes 160x160 beside w1's 224: a request pinned to it sends 160 (a
    224 tensor is refused naming the variant), a client's JPEG is decoded again at 160 (as its
    manifest accuracy was measured), and when the node itself picks r160 for a 224 tensor the
    tensor is resized. Before, the route checked every input against w1's 224, so a 160 tensor
    was refused and a JPEG or a 224 tensor reached r160 at 224 (bad_shape)."""
    low = read_manifest(PRETRAINED_ZOO_DIR).variant("text-orientation-r160")
    last = low.block_count - 1
    variants = ("--zoo", str(PRETRAINED_ZOO_DIR), "--variants", "text-orientation-w1,text-orientation-r160")
    entry = node_factory("--node-id", "entry", *variants)
    fixed = node_factory("--node-id", "fixed", *variants, "--policy", "fixed", "--arm", f"{low.name}@{last}")
    model = load_slice(low, zoo_dir=PRETRAINED_ZOO_DIR)
    index = 5
    jpeg = camera_jpeg(HELD_OUT_SEED, index)
    at_160 = preprocess(Image.open(io.BytesIO(jpeg)), 160)[None]
    at_224 = preprocess(Image.open(io.BytesIO(jpeg)), 224)[None]
    resized = torch.nn.functional.interpolate(at_224, size=(160, 160), mode="bilinear", align_corners=False,
                                              antialias=True)
    with torch.inference_mode():
        expected_160 = torch.softmax(model.exit_logits(last, model.run(at_160)), -1)[0].numpy()
        expected_resized = torch.softmax(model.exit_logits(last, model.run(resized)), -1)[0].numpy()
    pinned = {"deadline_ms": 30_000, "family": low.family, "variant": low.name, "exit": last}
    with Client(entry.url) as client:
        from_tensor = client.infer(at_160.numpy(), **pinned)
        from_jpeg = client.infer_image(jpeg, **pinned)
        with pytest.raises(BadShape, match=low.name):
            client.infer(at_224.numpy(), **pinned)
    with Client(fixed.url) as client:
        from_large = client.infer(at_224.numpy(), deadline_ms=30_000, family=low.family)
        jpeg_unpinned = client.infer_image(jpeg, deadline_ms=30_000, family=low.family)
    assert from_tensor.variant == from_jpeg.variant == from_large.variant == jpeg_unpinned.variant == low.name
    assert np.abs(np.asarray(from_tensor.probabilities) - expected_160).max() <= 1e-4
    assert np.abs(np.asarray(from_jpeg.probabilities) - expected_160).max() <= 1e-4
    assert np.abs(np.asarray(jpeg_unpinned.probabilities) - expected_160).max() <= 1e-4
    assert np.abs(np.asarray(from_large.probabilities) - expected_resized).max() <= 1e-4
    assert from_jpeg.label == sample(HELD_OUT_SEED, index).label
