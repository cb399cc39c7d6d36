"""Model slices: the shipped zoo split at every boundary equals the full forward, partial loading,
integrity, early exit, manifest truth, a user's own family; and slices on a backend (the CPU backend
is today's behaviour, fallbacks, engine cache, profiles)."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from torch import nn

from zoo.backend import Backend, EngineCache, EngineKey, StaticShapeBlock, module_digest, prepare_block
from zoo.dataset import held_out
from zoo.errors import BlockRangeError, UnknownVariantError, WeightIntegrityError
from zoo.export import add_to_manifest, exit_accuracies, export_variant
from zoo.family import Family, get_family, register_family
from zoo.manifest import DEFAULT_ZOO_DIR, read_manifest
from zoo.model_slice import ModelSlice, load_slice
from zoo.profiling import cache_key, measure, profile_variant

VARIANT = read_manifest().variant("digits-cnn-w1")


def batch(size: int = 16) -> torch.Tensor:
    images, _ = held_out(tuple(VARIANT.input_shape))
    return images[:size]


def test_load_slice_with_the_cpu_backend_equals_the_default():
    default = load_slice(VARIANT)
    explicit = load_slice(VARIANT, backend=Backend.cpu())
    assert default.backend == explicit.backend == Backend.cpu()
    images = batch()
    for block in VARIANT.exit_blocks:
        assert torch.equal(default.exit_logits(block, default.run(images, 0, block)),
                           explicit.exit_logits(block, explicit.run(images, 0, block)))
    assert explicit.parameter_count() == default.parameter_count()
    assert type(explicit.blocks[0]) is type(default.blocks[0]), "CPU eager runs the plain module"


def test_cpu_bfloat16_backend_casts_inputs_and_stays_close():
    reference = load_slice(VARIANT)
    half = load_slice(VARIANT, backend=Backend.cpu("bfloat16"))
    images = batch(64)
    hidden = half.prepare(images)
    assert hidden.dtype is torch.bfloat16 and half.dtype is torch.bfloat16
    final = VARIANT.exit_blocks[-1]
    logits = half.exit_logits(final, half.run(hidden))
    expected = reference.exit_logits(final, reference.run(images))
    assert logits.dtype is torch.float32, "exit logits always come back as float32"
    agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreement >= 0.95
    outgoing = ModelSlice.to_host(half.run(hidden))
    assert outgoing.dtype is torch.float32 and outgoing.device.type == "cpu"


def test_contradicting_device_and_backend_is_refused():
    with pytest.raises(ValueError):
        load_slice(VARIANT, dtype=torch.bfloat16, backend=Backend.cpu())
    load_slice(VARIANT, device="cpu", dtype=torch.bfloat16, backend=Backend.cpu("bfloat16"))  # agreeing is fine


def test_a_dtype_no_backend_describes_still_loads_as_before():
    model = load_slice(VARIANT, dtype=torch.float64)
    assert model.backend is None and model.dtype is torch.float64
    assert model.run(model.prepare(batch(2))).dtype is torch.float64


class _Doubling(nn.Module):
    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * 2


def test_static_shape_block_sends_only_its_shape_to_the_fast_path():
    calls: list[tuple[int, ...]] = []

    def fast(tensor: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tensor.shape))
        return tensor * 2

    block = StaticShapeBlock(fast, _Doubling(), torch.Size([1, 3]), torch.float32, torch.device("cpu"))
    ones = torch.ones(1, 3)
    assert torch.equal(block(ones), ones * 2) and calls == [(1, 3)]
    assert torch.equal(block(torch.ones(4, 3)), torch.full((4, 3), 2.0)) and calls == [(1, 3)]  # eager
    block(torch.ones(1, 3, dtype=torch.float64))
    assert calls == [(1, 3)], "another dtype also runs eagerly"


def test_prepare_block_on_cpu_returns_the_cast_module():
    linear = nn.Linear(3, 2)
    prepared = prepare_block(linear, Backend.cpu("bfloat16"), torch.zeros(1, 3))
    assert prepared is linear and linear.weight.dtype is torch.bfloat16 and not linear.training


def test_engine_cache_builds_once_saves_atomically_and_reuses(tmp_path):
    """The TensorRT engine cache's logic, exercised with torch.export programs on the CPU."""
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()).eval()
    example = torch.rand(1, 1, 8, 8)

    def save(program, path):
        torch.export.save(program, str(path))

    def load(path):
        return torch.export.load(str(path))

    key = EngineKey("digits-test", module_digest(module), 0, 0, precision="float32", input_shape=(1, 1, 8, 8),
                    device_name="cpu", versions=torch.__version__)
    first = EngineCache(tmp_path / "engines", save, load)
    built = first.get_or_build(key.file_name(), lambda: torch.export.export(module, (example,)))
    assert (first.builds, first.hits) == (1, 0)
    files = list((tmp_path / "engines").iterdir())
    assert [path.name for path in files] == [key.file_name()], "no partial file left behind"

    def refuse():
        raise AssertionError("a cached engine must be loaded, not rebuilt")

    second = EngineCache(tmp_path / "engines", save, load)
    loaded = second.get_or_build(key.file_name(), refuse)
    assert (second.builds, second.hits) == (0, 1)
    assert torch.equal(loaded.module()(example), built.module()(example))
    # a corrupt entry is rebuilt, not fatal
    files[0].write_bytes(b"truncated")
    third = EngineCache(tmp_path / "engines", save, load)
    third.get_or_build(key.file_name(), lambda: torch.export.export(module, (example,)))
    assert (third.builds, third.hits) == (1, 0)
    assert second.get_or_build(key.file_name(), refuse) is not None


def test_engine_key_changes_with_everything_an_engine_depends_on():
    base = EngineKey("v", "sha", 0, 0, "block", "float16", (1, 16, 8, 8), "NVIDIA H100", None, "trt 10")
    variations = [
        EngineKey("w", "sha", 0, 0, "block", "float16", (1, 16, 8, 8), "NVIDIA H100", None, "trt 10"),
        EngineKey("v", "sha2", 0, 0, "block", "float16", (1, 16, 8, 8), "NVIDIA H100", None, "trt 10"),
        EngineKey("v", "sha", 1, 1, "block", "float16", (1, 16, 8, 8), "NVIDIA H100", None, "trt 10"),
        EngineKey("v", "sha", 0, 0, "head", "float16", (1, 16, 8, 8), "NVIDIA H100", None, "trt 10"),
        EngineKey("v", "sha", 0, 0, "block", "float32", (1, 16, 8, 8), "NVIDIA H100", None, "trt 10"),
        EngineKey("v", "sha", 0, 0, "block", "float16", (8, 16, 8, 8), "NVIDIA H100", None, "trt 10"),
        EngineKey("v", "sha", 0, 0, "block", "float16", (1, 16, 8, 8), "Orin", None, "trt 10"),
        EngineKey("v", "sha", 0, 0, "block", "float16", (1, 16, 8, 8), "NVIDIA H100", 0, "trt 10"),
        EngineKey("v", "sha", 0, 0, "block", "float16", (1, 16, 8, 8), "NVIDIA H100", None, "trt 11"),
    ]
    digests = {base.digest()} | {key.digest() for key in variations}
    assert len(digests) == len(variations) + 1


def test_profile_cache_key_differs_per_backend():
    keys = {cache_key(VARIANT, backend.device, backend.torch_dtype, 1, 1, backend) for backend in (
        Backend.cpu(), Backend.cpu("bfloat16"), Backend.cuda(), Backend.cuda(dtype="float16"),
        Backend.cuda(dtype="float16", cuda_graphs=True), Backend.tensorrt())}
    assert len(keys) == 6
    # the old call (no backend) is the plain backend of its device
    assert cache_key(VARIANT, "cpu", torch.float32, 1, 1) == cache_key(VARIANT, "cpu", torch.float32, 1, 1,
                                                                       Backend.cpu())


def test_profile_per_backend_is_cached_separately_and_names_its_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("P2PINFER_CACHE_DIR", str(tmp_path))
    plain = profile_variant(VARIANT, repeats=2)
    half = profile_variant(VARIANT, repeats=2, backend=Backend.cpu("bfloat16"))
    assert plain.backend == "cpu-eager@cpu/float32" and half.backend == "cpu-eager@cpu/bfloat16"
    assert half.dtype == "bfloat16" and len(half.block_ms) == VARIANT.block_count
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 2
    assert profile_variant(VARIANT, repeats=2, backend=Backend.cpu("bfloat16")) == half  # from the cache


def test_module_digest_follows_weights_and_buffers():
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    same = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    same.load_state_dict(module.state_dict())
    assert module_digest(module) == module_digest(same)
    with torch.no_grad():
        same[1].running_mean += 1
    assert module_digest(module) != module_digest(same)


class _StandInTorchTensorRT:
    """Only the four calls our TensorRT path makes, done with torch.export on the CPU: checks the
    plumbing around TensorRT (keys, cache files, arguments), not TensorRT itself."""

    __version__ = "stand-in"

    def __init__(self) -> None:
        self.compiled: list[dict] = []

    def compile(self, module, ir, inputs, enabled_precisions, **options):
        self.compiled.append({"ir": ir, "precisions": enabled_precisions, **options})
        return torch.export.export(module, tuple(inputs)).module()

    def save(self, compiled, path, output_format, inputs):
        assert output_format == "exported_program"
        torch.export.save(torch.export.export(compiled, tuple(inputs)), path)

    def load(self, path):
        return torch.export.load(path)

    @staticmethod
    def Device(spec, allow_gpu_fallback):  # noqa: N802 - torch_tensorrt's spelling
        return (spec, allow_gpu_fallback)


def test_tensorrt_path_keys_saves_and_reloads_engines(tmp_path, monkeypatch):
    import sys

    import zoo.backend as backend_module

    stand_in = _StandInTorchTensorRT()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", stand_in)
    monkeypatch.setattr(backend_module, "require_available", lambda backend: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU")
    monkeypatch.setenv("P2PINFER_CACHE_DIR", str(tmp_path))
    block = load_slice(VARIANT, 1, 1).blocks[1]
    example = torch.rand(1, *VARIANT.blocks[1].input_shape)
    key = EngineKey(VARIANT.name, VARIANT.sha256, 1, 1, "block")
    engine = backend_module.tensorrt_engine(block, Backend.tensorrt(dtype="float32"), example, key)
    assert torch.allclose(engine(example), block(example))
    assert stand_in.compiled == [{"ir": "dynamo", "precisions": {torch.float32}}]
    files = list((tmp_path / "engines").iterdir())
    assert len(files) == 1 and files[0].name.startswith("digits-cnn-w1-block1-1-float32-")
    reloaded = backend_module.tensorrt_engine(block, Backend.tensorrt(dtype="float32"), example, key)
    assert len(stand_in.compiled) == 1, "the second call loads the saved engine"
    assert torch.allclose(reloaded(example), block(example))
    backend_module.tensorrt_engine(block, Backend.tensorrt(dtype="float32", dla_core=1), example, key)
    assert stand_in.compiled[-1]["device"] == ("dla:1", True), "a DLA core gets its own engine, GPU fallback on"
    assert len(list((tmp_path / "engines").iterdir())) == 2


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
