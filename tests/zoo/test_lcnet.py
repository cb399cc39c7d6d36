"""The text-orientation family (PP-LCNet): conversion truth, manifest truth, split equivalence, integrity."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors import safe_open

from zoo import orientation_data
from zoo.errors import WeightIntegrityError
from zoo.export import exit_accuracies
from zoo.manifest import DEFAULT_ZOO_DIR, PRETRAINED_ZOO_DIR, read_manifest
from zoo.model_slice import load_slice

MANIFEST = read_manifest(PRETRAINED_ZOO_DIR)
VARIANTS = sorted(MANIFEST.variants)
REFERENCE = PRETRAINED_ZOO_DIR / "text-orientation-reference.safetensors"
SAMPLE = 24  # held-out images re-evaluated per variant (the manifest used all 400)


def _reference() -> dict[str, torch.Tensor]:
    with safe_open(str(REFERENCE), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def test_family_has_fp32_and_three_more_variants_with_four_exits():
    assert "text-orientation-w1" in VARIANTS and len(VARIANTS) >= 4
    compressions = {MANIFEST.variant(name).compression for name in VARIANTS}
    assert {"none", "quantization-int8", "structured-pruning", "resolution"} <= compressions
    for name in VARIANTS:
        variant = MANIFEST.variant(name)
        assert variant.exit_blocks == [1, 2, 3, 4] and variant.block_count == 5
        assert variant.input_shape == variant.blocks[0].input_shape and variant.input_shape[0] == 3
        assert variant.preprocessing["channel_order"] == "BGR" and variant.provenance["license"] == "Apache-2.0"
        shrinking = [variant.boundary_bytes(k) for k in range(1, variant.block_count + 1)]
        assert shrinking == sorted(shrinking, reverse=True), "activations shrink stage by stage"


def test_native_model_equals_the_recorded_onnxruntime_logits():
    reference = _reference()
    model = load_slice("text-orientation-w1", zoo_dir=PRETRAINED_ZOO_DIR)
    logits = model.exit_logits(4, model.run(orientation_data.normalize(reference["pixels"])))
    assert float((logits - reference["logits"]).abs().max()) <= 1e-4
    assert torch.equal(logits.argmax(-1), reference["labels"])


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_accuracy_reproduced_on_a_sample(name):
    variant = MANIFEST.variant(name)
    images, labels = orientation_data.held_out(variant.input_shape[-1], SAMPLE)
    model = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    measured = exit_accuracies([model.blocks[k] for k in range(variant.block_count)], model.heads, images, labels)
    for exit_info in variant.exits:
        # three binomial standard deviations of a SAMPLE-image estimate, at least one image
        spread = 3 * math.sqrt(max(exit_info.accuracy * (1 - exit_info.accuracy), 0.02) / SAMPLE) + 1 / SAMPLE
        assert abs(measured[exit_info.block] - exit_info.accuracy) <= spread, (name, exit_info.block)
    assert variant.exits[-1].accuracy >= 0.9


@pytest.mark.parametrize("name", VARIANTS)
def test_split_at_every_boundary_equals_full_forward(name):
    variant = MANIFEST.variant(name)
    images, _ = orientation_data.held_out(variant.input_shape[-1], 2)
    full = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    expected = full.run(images)
    last = variant.block_count - 1
    for k in range(last):
        head = load_slice(variant, 0, k, zoo_dir=PRETRAINED_ZOO_DIR).run(images)
        assert list(head.shape[1:]) == variant.blocks[k].output_shape
        tail = load_slice(variant, k + 1, last, zoo_dir=PRETRAINED_ZOO_DIR)
        assert float((tail.run(head) - expected).abs().max()) <= 1e-5, (name, k)


def test_int8_blocks_really_run_quantized_kernels():
    model = load_slice("text-orientation-int8", 4, 4, zoo_dir=PRETRAINED_ZOO_DIR)
    kinds = {type(module).__module__ for module in model.blocks[4]._int8[0].modules()}
    assert any("quantized" in kind for kind in kinds)


def test_pruned_variant_is_narrower():
    full, pruned = MANIFEST.variant("text-orientation-w1"), MANIFEST.variant("text-orientation-p0.5")
    assert pruned.params_total < 0.6 * full.params_total and pruned.flops_total < full.flops_total
    assert pruned.blocks[-1].output_shape[0] == full.blocks[-1].output_shape[0] // 2


def test_tampered_weights_are_refused(tmp_path):
    variant = MANIFEST.variant("text-orientation-p0.5")
    (tmp_path / "weights").mkdir()
    shutil.copy(PRETRAINED_ZOO_DIR / "manifest.json", tmp_path / "manifest.json")
    shutil.copy(PRETRAINED_ZOO_DIR / variant.weights_file, tmp_path / variant.weights_file)
    path = tmp_path / variant.weights_file
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightIntegrityError):
        load_slice(variant.name, 3, 4, zoo_dir=tmp_path)


def test_default_zoo_manifest_still_loads_with_new_defaults():
    digits = read_manifest(DEFAULT_ZOO_DIR)
    assert all(v.storage_dtype == "float16" and v.precision == "float32" for v in digits.variants.values())
    assert not any(v.family == "text-orientation" for v in digits.variants.values())


def test_scanned_page_is_read_right_side_up_every_way():
    """scikit-image's scanned book page (a real capture, not a rendered page), whole and halved,
    rotated four ways: the final exit of w1 names every rotation (the benchmark's figure; its
    photographed hand-lettered ``text`` is near chance and reported, not asserted)."""
    pytest.importorskip("skimage")
    images, labels, names = orientation_data.scanned_samples(224)
    assert len(names) == 24 and labels.tolist() == [0, 1, 2, 3] * 6
    variant = read_manifest(PRETRAINED_ZOO_DIR).variant("text-orientation-w1")
    model = load_slice(variant, zoo_dir=PRETRAINED_ZOO_DIR)
    rows = [index for index, name in enumerate(names) if name.startswith("page-")]
    with torch.inference_mode():
        logits = model.exit_logits(variant.block_count - 1, model.run(images[rows]))
    assert logits.argmax(-1).tolist() == labels[rows].tolist()
