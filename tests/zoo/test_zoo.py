"""The zoo: split equivalence, manifest truth, partial loading, integrity, early exit."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from torch import nn

from zoo.dataset import held_out
from zoo.errors import BlockRangeError, UnknownVariantError, WeightIntegrityError
from zoo.export import add_to_manifest, exit_accuracies, export_variant
from zoo.family import Family, get_family, register_family
from zoo.manifest import DEFAULT_ZOO_DIR, read_manifest
from zoo.model_slice import load_slice
from zoo.profiling import measure, profile_variant

MANIFEST = read_manifest()
VARIANTS = sorted(MANIFEST.variants)


def test_zoo_has_two_families_with_at_least_three_variants_each():
    for family in ("digits-cnn", "digits-resnet"):
        variants = MANIFEST.variants_of(family)
        assert len(variants) >= 3, family
        assert any(v.compression == "structured-pruning" for v in variants)
        flops = sorted(v.flops_total for v in variants)
        assert flops[0] < flops[-1] / 2, "variants must differ measurably in cost"


@pytest.mark.parametrize("name", VARIANTS)
def test_split_at_every_boundary_equals_full_forward(name):
    variant = MANIFEST.variant(name)
    model = load_slice(variant)
    images, _ = held_out(tuple(variant.input_shape))
    batch = images[:8]
    full = model.run(batch)
    last = variant.block_count - 1
    for k in range(last):
        hidden = model.run(batch, 0, k)
        assert list(hidden.shape[1:]) == variant.blocks[k].output_shape
        assert hidden[0].numel() * 4 == variant.blocks[k].output_bytes == variant.boundary_bytes(k + 1)
        # the second part on a separately loaded slice, as a peer would hold it
        tail = load_slice(variant, k + 1, last)
        assert torch.allclose(tail.run(hidden), full, atol=1e-5, rtol=0)


LARGE = {"digits-resnet-w1", "digits-resnet-p0.4", "digits-resnet-w0.5"}  # 5-20 s each on 2 cores


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name
                                  for name in VARIANTS])
def test_manifest_accuracy_matches_reevaluation(name):
    """Every variant's manifest accuracy, re-measured; the three largest digits-resnet variants
    run with the slow tests (the same code path as the others, 30-45 s of the default run)."""
    variant = MANIFEST.variant(name)
    model = load_slice(variant)
    images, labels = held_out(tuple(variant.input_shape))
    blocks = [model.blocks[k] for k in range(variant.block_count)]
    measured = exit_accuracies(blocks, model.heads, images, labels)
    assert len(labels) == MANIFEST.held_out.size
    for exit_info in variant.exits:
        assert abs(measured[exit_info.block] - exit_info.accuracy) <= 0.01, (name, exit_info.block)
    assert variant.exits[-1].accuracy >= 0.9, "the final exit must be a real classifier"


def test_partial_loading_holds_only_requested_blocks():
    variant = MANIFEST.variant("digits-resnet-w1")
    part = load_slice(variant, 2, 3)
    assert sorted(part.blocks) == [2, 3] and sorted(part.heads) == [2, 3]
    expected = sum(variant.blocks[k].params for k in (2, 3)) + sum(
        e.params for e in variant.exits if e.block in (2, 3))
    assert part.parameter_count() == expected
    assert part.parameter_count() < variant.params_total
    with pytest.raises(BlockRangeError):
        part.run(torch.zeros(1, *variant.blocks[1].input_shape), 1, 2)
    with pytest.raises(BlockRangeError):
        load_slice(variant, 3, 4)


def test_corrupted_weights_are_refused(tmp_path):
    shutil.copytree(DEFAULT_ZOO_DIR / "weights", tmp_path / "weights")
    shutil.copy(DEFAULT_ZOO_DIR / "manifest.json", tmp_path / "manifest.json")
    variant = MANIFEST.variant("digits-cnn-w1")
    path = tmp_path / variant.weights_file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightIntegrityError):
        load_slice(variant.name, zoo_dir=tmp_path)
    with pytest.raises(UnknownVariantError):
        load_slice("digits-cnn-w9", zoo_dir=tmp_path)


def test_a_pretrained_name_asked_of_another_zoo_says_where_it_is():
    from zoo.manifest import PRETRAINED_ZOO_DIR

    hint = f"(it is in the pretrained zoo: add --zoo {PRETRAINED_ZOO_DIR})"
    for name in ("text-orientation-w1", "text-orientation"):  # a variant, a family
        with pytest.raises(UnknownVariantError, match=re.escape(hint)):
            MANIFEST.variant(name)
    with pytest.raises(UnknownVariantError) as unknown:
        MANIFEST.variant("digits-cnn-w9")
    assert "pretrained" not in str(unknown.value)
    with pytest.raises(UnknownVariantError) as family_name:  # asked of the zoo that holds the family
        read_manifest(PRETRAINED_ZOO_DIR).variant("text-orientation")
    assert "pretrained" not in str(family_name.value)


def test_early_exit_fires_at_the_expected_exit():
    variant = MANIFEST.variant("digits-cnn-w1")
    model = load_slice(variant)
    images, _ = held_out(tuple(variant.input_shape))
    sample = images[:1]
    hidden = sample
    confidences = []
    for k in range(variant.block_count):
        hidden = model.run_block(k, hidden)
        confidences.append(float(torch.softmax(model.exit_logits(k, hidden), -1).max()))
    assert model.run_with_early_exit(sample, threshold=0.0).exit_block == 0
    assert model.run_with_early_exit(sample, threshold=1.01).exit_block == variant.block_count - 1
    # a threshold just above exit 0's confidence but met by a later exit fires there
    later = next((k for k in range(1, variant.block_count) if confidences[k] > confidences[0]), None)
    assert later is not None
    threshold = (confidences[0] + confidences[later]) / 2
    first_meeting = next(k for k in range(variant.block_count) if confidences[k] >= threshold)
    outcome = model.run_with_early_exit(sample, threshold=threshold)
    assert outcome.exit_block == first_meeting
    assert float(outcome.confidence[0]) >= threshold


def test_pruned_variant_really_removed_channels():
    full = MANIFEST.variant("digits-resnet-w1")
    pruned = next(v for v in MANIFEST.variants_of("digits-resnet") if v.compression == "structured-pruning")
    assert pruned.params_total < 0.8 * full.params_total
    assert pruned.flops_total < 0.8 * full.flops_total
    model = load_slice(pruned)
    assert model.blocks[1].units[0].conv_a.out_channels == pruned.config["mid_channels"][1][0]


class _TinyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.linear(x))


def test_user_family_registration_and_export(tmp_path):
    family = register_family(Family(
        name="user-mlp", description="a user's own MLP", input_shape=(4,), num_classes=10, dataset="custom",
        block_count=lambda config: 2, exits=lambda config: [1],
        build_block=lambda config, k: _TinyBlock(4) if k == 0 else nn.Linear(4, 6),
        build_head=lambda config, k: nn.Linear(6, 10)))
    torch.manual_seed(0)
    blocks = [family.build_block({}, 0), family.build_block({}, 1)]
    heads = {1: family.build_head({}, 1)}
    images, labels = torch.rand(20, 4), torch.randint(0, 10, (20,))
    info = export_variant(tmp_path, family, "user-mlp-v1", {"width": 1.0}, blocks, heads, images, labels,
                          family_module=__name__)
    add_to_manifest(tmp_path, [info], MANIFEST.held_out)
    assert get_family("user-mlp") is family
    loaded = load_slice("user-mlp-v1", zoo_dir=tmp_path)
    expected = heads[1](blocks[1](blocks[0](images)))
    assert torch.allclose(loaded.exit_logits(1, loaded.run(images)), expected)
    assert info.blocks[0].flops == 2 * 4 * 4


def test_profile_measures_every_block_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("P2PINFER_CACHE_DIR", str(tmp_path))
    variant = MANIFEST.variant("digits-cnn-w1")
    profile = profile_variant(variant, repeats=3)
    assert len(profile.block_ms) == variant.block_count and all(ms > 0 for ms in profile.block_ms)
    assert sorted(profile.exit_ms) == variant.exit_blocks
    cached = list((tmp_path / "profiles").glob("*.json"))
    assert len(cached) == 1
    assert profile_variant(variant, repeats=3) == profile  # second call reads the cache
    part = measure(load_slice(variant, 1, 2), repeats=2)
    assert len(part.block_ms) == 2


def test_a_manifest_written_before_calibration_still_loads(tmp_path):
    import json

    document = json.loads((DEFAULT_ZOO_DIR / "manifest.json").read_text())
    for variant in document["variants"].values():
        for exit_info in variant["exits"]:
            exit_info.pop("calibration", None)
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    manifest = read_manifest(tmp_path)
    assert all(e.calibration is None for v in manifest.variants.values() for e in v.exits)
    shipped = read_manifest()
    assert all(e.calibration is not None and len(e.calibration.confidence) == len(e.calibration.accuracy)
               for v in shipped.variants.values() for e in v.exits)
