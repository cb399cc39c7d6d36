"""``p2pinfer zoo exits`` end to end: the command trains an imported family's exits, a real
node started with ``--zoo DIR`` answers a request pinned to an early exit from that head,
the bandit's arms include the new exits, and bad data is one line and exit status 2."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pinfer import Client
from p2pinfer.cli.main import main
from p2pinfer.planning.peer_directory import PeerView, StaticDirectory
from p2pinfer.planning.selection import ArmSelection, NodeState
from p2pinfer.protocol.schema import InferRequest
from tests.zoo.test_exits import EPOCHS, FAMILY, INPUT_SHAPE, import_tiny, quadrant_images, write_data
from zoo.imported_exits import TRAINING_FILE
from zoo.manifest import read_manifest
from zoo.model_slice import load_slice

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exits_zoo(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny CNN imported (one exit, its logits) and its quadrant data."""
    root = tmp_path_factory.mktemp("zoo-exits")
    import_tiny(root / "zoo")
    return root / "zoo", write_data(root / "data")


@pytest.fixture(scope="module")
def trained_zoo(exits_zoo) -> tuple[Path, Path, str]:
    """``p2pinfer zoo exits`` run on ``exits_zoo``: the zoo, the data and what the command printed."""
    zoo_dir, data_dir = exits_zoo
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = main(["zoo", "exits", FAMILY, "--zoo", str(zoo_dir), "--data", str(data_dir),
                       "--epochs", str(EPOCHS)])
    assert status == 0
    return zoo_dir, data_dir, output.getvalue()


def test_the_command_prints_and_records_every_exit(trained_zoo):
    zoo_dir, _, printed = trained_zoo
    variant = read_manifest(zoo_dir).variant(FAMILY)
    assert variant.exit_blocks == [0, 1, 2]
    for exit_info in variant.exits:
        assert f"exit after block {exit_info.block}: accuracy {exit_info.accuracy:.4f}" in printed
    assert min(e.accuracy for e in variant.exits) >= 0.9


def test_help_documents_the_data_format(capsys):
    with pytest.raises(SystemExit) as done:
        main(["zoo", "exits", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "train.npz" in text and "held_out.npz" in text and "'labels', int64" in text
    assert "allow_pickle=False" in text


def test_bad_data_exits_2_with_one_line(exits_zoo, tmp_path, capsys):
    zoo_dir, data_dir = exits_zoo
    bad = tmp_path / "data"
    write_data(bad)
    np.savez(bad / TRAINING_FILE, inputs=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    assert main(["zoo", "exits", FAMILY, "--zoo", str(zoo_dir), "--data", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(bad / TRAINING_FILE) in error and "inputs have shape" in error
    assert main(["zoo", "exits", "no-such-family", "--zoo", str(zoo_dir), "--data", str(data_dir)]) == 2
    assert "no family or variant 'no-such-family'" in capsys.readouterr().err


def test_a_node_answers_a_request_pinned_to_an_early_exit_from_its_head(trained_zoo, node_factory):
    zoo_dir, _, _ = trained_zoo
    variant = read_manifest(zoo_dir).variant(FAMILY)
    node = node_factory("--node-id", "solo", "--zoo", str(zoo_dir), "--variants", FAMILY)
    images, labels = quadrant_images(5, 2)
    model = load_slice(variant, zoo_dir=zoo_dir)
    with Client(node.url) as client:
        for exit_block in (0, 1):
            hidden = model.run(torch.from_numpy(images[:1]), 0, exit_block)
            expected = torch.softmax(model.exit_logits(exit_block, hidden), -1)[0].numpy()
            result = client.infer(images[:1], deadline_ms=20_000, family=FAMILY, variant=FAMILY, exit=exit_block)
            assert result.exit == exit_block
            assert np.abs(np.asarray(result.probabilities) - expected).max() <= TOLERANCE
            assert result.label == int(labels[0])


def test_the_bandit_can_choose_an_early_exit(trained_zoo):
    zoo_dir, _, _ = trained_zoo
    manifest = read_manifest(zoo_dir)
    view = PeerView(node_id="device", url="http://device", hosted={FAMILY: (0, 2)},
                    block_ms={FAMILY: [1.0, 1.0, 200.0]})
    selection = ArmSelection("device", manifest, StaticDirectory("device", [view], {}), "linucb", seed=1)
    assert sorted(arm.exit for arm in selection.arms(FAMILY)) == [0, 1, 2]
    input_bytes = int(np.prod(INPUT_SHAPE)) * 4
    decision = selection.decide(InferRequest(deadline_ms=20.0, family=FAMILY), input_bytes, NodeState())
    assert decision.arm.exit in (0, 1) and not decision.forced  # the logits' block is predicted to miss
