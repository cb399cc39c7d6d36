"""Early exits for an imported family (``zoo.imported_exits``): trained on the frozen backbone,
measured on held-out data, stored as safetensors + a head specification, rebuilt by a loaded
slice exactly; re-runs replace them; bad data and tampered files are refused."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from zoo.errors import ExitDataError, ExitTrainingError, WeightIntegrityError
from zoo.exit_heads import build_exit_head
from zoo.imported_exits import HELD_OUT_FILE, TRAINING_FILE, TrainedExits, train_exits
from zoo.importing import import_module
from zoo.manifest import DEFAULT_ZOO_DIR, ExitHeadSpec, read_manifest, write_manifest
from zoo.model_slice import load_slice
from zoo.weights import file_sha256

FAMILY = "tiny-quadrants"
CLASSES = 4
INPUT_SHAPE = (3, 16, 16)
EPOCHS = 10


def quadrant_images(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a bright square in the quadrant the label names: separable, deterministic."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, CLASSES, count).astype(np.int64)
    images = generator.normal(0.0, 0.5, (count, *INPUT_SHAPE)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        row, column = divmod(int(label), 2)
        image[:, row * 8 + 2:row * 8 + 6, column * 8 + 2:column * 8 + 6] += 2.0
    return images, labels


class TinyCNN(nn.Module):
    """Three conv stages (16x16 -> 8x8 -> 4x4), global pool, linear: imports as three blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.second = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.third = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.third(self.second(self.first(x))).mean(dim=(2, 3)))


def trained_tiny_cnn() -> nn.Module:
    """The tiny CNN trained a few dozen steps on the quadrant task (seeded; about a second)."""
    torch.manual_seed(0)
    model = TinyCNN()
    images, labels = (torch.from_numpy(array) for array in quadrant_images(1, 256))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        chosen = torch.randint(0, len(labels), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(images[chosen]), labels[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def write_data(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, seed, count in ((TRAINING_FILE, 1, 256), (HELD_OUT_FILE, 2, 128)):
        images, labels = quadrant_images(seed, count)
        np.savez(directory / name, inputs=images, labels=labels)
    return directory


def import_tiny(zoo_dir: Path) -> nn.Module:
    """Import the trained tiny CNN as ``FAMILY`` (three blocks) into ``zoo_dir``; returns the model."""
    model = trained_tiny_cnn()
    info = import_module(model, torch.randn(2, *INPUT_SHAPE), name=FAMILY, zoo_dir=zoo_dir, blocks=3)
    assert [block.output_shape for block in info.blocks] == [[8, 16, 16], [16, 8, 8], [CLASSES]]
    return model


@dataclass(frozen=True)
class Trained:
    zoo_dir: Path
    data_dir: Path
    model: nn.Module
    result: TrainedExits


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("exits")
    model = import_tiny(root / "zoo")
    data_dir = write_data(root / "data")
    return Trained(root / "zoo", data_dir, model, train_exits(root / "zoo", FAMILY, data_dir, epochs=EPOCHS))


def copy_zoo(trained: Trained, tmp_path: Path) -> Path:
    shutil.copytree(trained.zoo_dir, tmp_path / "zoo")
    return tmp_path / "zoo"


def test_exits_are_trained_and_every_exit_is_measured(trained):
    variant = read_manifest(trained.zoo_dir).variant(FAMILY)
    assert variant == trained.result.variant
    assert variant.exit_blocks == [0, 1, 2]
    assert all(0.0 <= e.accuracy <= 1.0 for e in variant.exits)
    early = [e for e in variant.exits if e.block < 2]
    assert all(e.accuracy >= 0.9 for e in early)  # untrained heads would sit near 1/4 on this task
    assert all(e.head is not None and e.head.kind == "pool-conv-linear" and e.params > 0 and e.flops > 0
               for e in early)
    images, labels = (torch.from_numpy(array) for array in quadrant_images(2, 128))
    with torch.no_grad():
        final = float((trained.model(images).argmax(-1) == labels).float().mean())
    assert variant.exits[-1].accuracy == round(final, 4) and variant.exits[-1].head is None
    assert variant.sha256 == file_sha256(trained.zoo_dir / variant.weights_file)
    assert variant.weights_bytes == (trained.zoo_dir / variant.weights_file).stat().st_size
    assert variant.params_total == sum(b.params for b in variant.blocks) + sum(e.params for e in early)
    assert variant.training["exits"]["epochs"] == EPOCHS and variant.training["exits"]["blocks"] == [0, 1]


def test_a_loaded_slice_answers_an_early_exit_with_the_trained_head(trained):
    variant = read_manifest(trained.zoo_dir).variant(FAMILY)
    images = torch.from_numpy(quadrant_images(3, 16)[0])
    model = load_slice(variant, 0, 1, zoo_dir=trained.zoo_dir)
    for block in (0, 1):
        hidden = model.run(images, 0, block)
        with torch.no_grad():
            expected = trained.result.heads[block](hidden)
        assert (model.exit_logits(block, hidden) - expected).abs().max() <= 1e-5
    outcome = model.run_with_early_exit(images, threshold=0.0)
    assert outcome.exit_block == 0


def test_rerunning_replaces_the_heads_and_is_idempotent(trained, tmp_path):
    zoo_dir = copy_zoo(trained, tmp_path)
    first = train_exits(zoo_dir, FAMILY, trained.data_dir, blocks_with_exits=[1], epochs=EPOCHS)
    assert first.variant.exit_blocks == [1, 2]
    path = zoo_dir / first.variant.weights_file
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert keys and not any(key.startswith("heads.0.") for key in keys)
    assert any(key.startswith("heads.1.") for key in keys)
    for key, value in first.heads[1].state_dict().items():  # same seed per block: the same head as before
        assert torch.equal(value, trained.result.heads[1].state_dict()[key])
    again = train_exits(zoo_dir, FAMILY, trained.data_dir, blocks_with_exits=[1], epochs=EPOCHS)
    assert again.variant.sha256 == first.variant.sha256 == file_sha256(path)
    assert again.variant.exits == first.variant.exits
    assert read_manifest(zoo_dir).variant(FAMILY).exit_blocks == [1, 2]


def test_a_tampered_weight_file_is_still_refused(trained, tmp_path):
    zoo_dir = copy_zoo(trained, tmp_path)
    variant = read_manifest(zoo_dir).variant(FAMILY)
    path = zoo_dir / variant.weights_file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightIntegrityError, match="sha256"):
        load_slice(variant, zoo_dir=zoo_dir)
    with pytest.raises(WeightIntegrityError):
        train_exits(zoo_dir, FAMILY, trained.data_dir, epochs=1)


def _object_array(directory: Path) -> None:
    images, labels = quadrant_images(1, 4)
    np.savez(directory / TRAINING_FILE, inputs=np.array([images[0], "text"], dtype=object), labels=labels[:2])


def _missing(directory: Path) -> None:
    (directory / HELD_OUT_FILE).unlink()


def _wrong_shape(directory: Path) -> None:
    np.savez(directory / TRAINING_FILE, inputs=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))


def _labels_out_of_range(directory: Path) -> None:
    images, _ = quadrant_images(1, 4)
    np.savez(directory / HELD_OUT_FILE, inputs=images, labels=np.array([0, 1, 2, 7]))


def _not_finite(directory: Path) -> None:
    images, labels = quadrant_images(1, 4)
    images[1, 0, 0, 0] = np.nan
    np.savez(directory / TRAINING_FILE, inputs=images, labels=labels)


def _no_labels(directory: Path) -> None:
    np.savez(directory / TRAINING_FILE, inputs=quadrant_images(1, 4)[0])


@pytest.mark.parametrize(("spoil", "file", "message"), [
    (_missing, HELD_OUT_FILE, "missing"),
    (_wrong_shape, TRAINING_FILE, r"inputs have shape \(4, 3, 8, 8\), expected \(N, 3, 16, 16\)"),
    (_object_array, TRAINING_FILE, "pickle"),
    (_labels_out_of_range, HELD_OUT_FILE, "labels run from 0 to 7, expected 0 to 3"),
    (_not_finite, TRAINING_FILE, "NaN"),
    (_no_labels, TRAINING_FILE, "no array 'labels'"),
])
def test_bad_data_is_refused_with_one_line_naming_the_file(trained, tmp_path, spoil, file, message):
    data_dir = tmp_path / "data"
    shutil.copytree(trained.data_dir, data_dir)
    spoil(data_dir)
    manifest_before = hashlib.sha256((trained.zoo_dir / "manifest.json").read_bytes()).hexdigest()
    with pytest.raises(ExitDataError, match=message) as caught:
        train_exits(trained.zoo_dir, FAMILY, data_dir, epochs=1)
    text = str(caught.value)
    assert text.startswith(str(data_dir / file)) and "\n" not in text
    assert hashlib.sha256((trained.zoo_dir / "manifest.json").read_bytes()).hexdigest() == manifest_before


def test_an_exit_after_the_last_block_or_a_family_with_code_is_refused(trained):
    with pytest.raises(ExitTrainingError, match=r"block\(s\) \[2\]"):
        train_exits(trained.zoo_dir, FAMILY, trained.data_dir, blocks_with_exits=[2])
    digits = read_manifest(DEFAULT_ZOO_DIR).variants_of("digits-cnn")[0].name
    with pytest.raises(ExitTrainingError, match="not an imported variant"):
        train_exits(DEFAULT_ZOO_DIR, digits, trained.data_dir)


def test_a_head_specification_outside_the_designs_is_refused(trained, tmp_path):
    with pytest.raises(ExitTrainingError, match="unknown"):
        build_exit_head(ExitHeadSpec(kind="builtins.eval", in_channels=8, num_classes=4))
    with pytest.raises(ExitTrainingError, match="outside"):
        build_exit_head(ExitHeadSpec(kind="linear", in_channels=1 << 30, num_classes=4))
    zoo_dir = copy_zoo(trained, tmp_path)
    manifest = read_manifest(zoo_dir)
    variant = manifest.variant(FAMILY)
    spoiled = msgspec.structs.replace(variant.exits[0], head=ExitHeadSpec(kind="os.system", in_channels=8,
                                                                          num_classes=4))
    manifest.variants[FAMILY] = msgspec.structs.replace(variant, exits=[spoiled, *variant.exits[1:]])
    write_manifest(manifest, zoo_dir)
    with pytest.raises(ExitTrainingError, match="os.system"):
        load_slice(read_manifest(zoo_dir).variant(FAMILY), zoo_dir=zoo_dir)
