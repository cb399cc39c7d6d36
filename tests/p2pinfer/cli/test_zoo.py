"""``p2pinfer zoo import`` end to end: a classifier imported by the CLI is served by real
nodes started with ``--zoo DIR`` through every route (native, Open Inference, a split over
``/v1/stage``), with the outputs of the source model."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pinfer import Client
from p2pinfer.cli.main import main
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.testing import wait_until
from tests.zoo.test_importing import small_cnn
from zoo.manifest import read_manifest

SECRET = "zoo-import-secret"
FAMILY = "imported-cnn"
TOLERANCE = 1e-4


def post_json(url: str, document: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def imported_zoo(tmp_path_factory) -> Path:
    zoo_dir = tmp_path_factory.mktemp("imported-zoo")
    status = main(["zoo", "import", "tests.zoo.test_importing:small_cnn", "--name", FAMILY, "--zoo", str(zoo_dir),
                   "--blocks", "3", "--input-shape", "3,16,16"])
    assert status == 0
    return zoo_dir


def test_a_bad_source_is_refused_with_a_clear_message(tmp_path, capsys):
    assert main(["zoo", "import", "no/such/model.onnx", "--name", "x", "--zoo", str(tmp_path)]) == 2
    assert "import failed" in capsys.readouterr().err


def test_nodes_serve_an_imported_family_on_every_route(imported_zoo, node_factory):
    variant = read_manifest(imported_zoo).variant(FAMILY)
    assert variant.block_count == 3 and variant.num_classes == 10
    entry = node_factory("--node-id", "entry", "--secret", SECRET, "--zoo", str(imported_zoo),
                         "--variants", f"{FAMILY}:0-1", "--gossip-interval", "0.1")
    node_factory("--node-id", "tail", "--secret", SECRET, "--zoo", str(imported_zoo),
                 "--variants", f"{FAMILY}:1-2", "--gossip-interval", "0.1",
                 "--seed", entry.url.removeprefix("http://"))
    wait_until(lambda: {p["node_id"] for p in get_json(f"{entry.url}/v1/peers")["peers"]} >= {"entry", "tail"},
               timeout_s=30, message="the entry to see the tail")
    sample = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.softmax(small_cnn()(sample), -1)[0].numpy()
    plans = [[PlanSegment(node="entry", unit="cpu", first_block=0, last_block=0),
              PlanSegment(node="tail", unit="cpu", first_block=1, last_block=2)],
             [PlanSegment(node="entry", unit="cpu", first_block=0, last_block=1),
              PlanSegment(node="tail", unit="cpu", first_block=2, last_block=2)]]
    with Client(entry.url) as client:
        for plan in plans:  # a split over /v1/stage at each cut between the two nodes
            result = client.infer(sample.numpy(), deadline_ms=20_000, family=FAMILY, variant=FAMILY, plan=plan)
            assert [(s.node, s.first_block, s.last_block) for s in result.plan] == \
                [(s.node, s.first_block, s.last_block) for s in plan]
            assert np.abs(np.asarray(result.probabilities) - expected).max() <= TOLERANCE
        chosen = client.infer(sample.numpy(), deadline_ms=20_000, family=FAMILY)  # the node places it itself
        assert np.abs(np.asarray(chosen.probabilities) - expected).max() <= TOLERANCE
        assert {segment.node for segment in chosen.plan} == {"entry", "tail"}  # nobody hosts all three blocks
    metadata = get_json(f"{entry.url}/v2/models/{FAMILY}")
    assert metadata["inputs"][0]["shape"][1:] == [3, 16, 16]
    answer = post_json(f"{entry.url}/v2/models/{FAMILY}/infer", {
        "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32",
                    "data": sample.flatten().tolist()}], "parameters": {"deadline_ms": 20_000}})
    probabilities = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
    assert np.abs(probabilities[:10] - expected).max() <= TOLERANCE


def test_zoo_demo_classifies_the_pretrained_family_with_its_own_data(capsys):
    """``zoo demo --zoo zoo/pretrained``: each variant loads from that zoo and reads rendered
    pages at its first exit (block 1) and final exit. It fed digits, loaded weights from the
    embedded zoo and asked for an exit at block 0 (three failures before the table)."""
    from zoo.manifest import PRETRAINED_ZOO_DIR

    assert main(["zoo", "demo", "--zoo", str(PRETRAINED_ZOO_DIR)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "text-orientation-" in line]
    assert len(rows) == len(read_manifest(PRETRAINED_ZOO_DIR).variants)
    assert all("8/8" in row for row in rows), rows
