"""Real ``p2pinfer node`` processes: a request's ``min_accuracy`` is a hard floor on the arm the
node answers with, a floor no arm reaches is a typed 422, a malformed one a typed 400."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from p2pinfer import Client
from p2pinfer.errors import AccuracyUnavailable, BadMinAccuracy, NoFeasiblePlan
from zoo.dataset import held_out
from zoo.manifest import read_manifest

FAMILY = "digits-cnn"


def test_min_accuracy_is_honoured_end_to_end(node_factory):
    node = node_factory("--node-id", "solo", "--variants", FAMILY, "--secret", "floor-secret")
    manifest = read_manifest()
    accuracy = {f"{v.name}@{e.block}": e.accuracy for v in manifest.variants_of(FAMILY) for e in v.exits}
    floor = 0.985
    assert 0 < sum(a >= floor for a in accuracy.values()) < len(accuracy)  # the floor masks some arms, not all
    images, _ = held_out(tuple(manifest.variant(f"{FAMILY}-w1").input_shape))
    with Client(node.url, timeout_s=30) as client:
        for index in range(12):
            result = client.infer(images[index].unsqueeze(0).numpy(), deadline_ms=2_000, family=FAMILY,
                                  min_accuracy=floor)
            assert accuracy[result.arm] >= floor, result.arm
        with pytest.raises(AccuracyUnavailable) as caught:
            client.infer(images[0].unsqueeze(0).numpy(), deadline_ms=2_000, family=FAMILY, min_accuracy=0.999)
        assert isinstance(caught.value, NoFeasiblePlan) and "0.99" in caught.value.message
        with pytest.raises(BadMinAccuracy):  # the SDK refuses it before sending
            client.infer(images[0].unsqueeze(0).numpy(), deadline_ms=2_000, family=FAMILY, min_accuracy=1.5)
    body = json.dumps({"deadline_ms": 2000, "family": FAMILY, "min_accuracy": -0.5,
                       "data": images[0].unsqueeze(0).tolist()}).encode()
    request = urllib.request.Request(f"{node.url}/v1/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and json.loads(refused.value.read())["code"] == "bad_min_accuracy"
