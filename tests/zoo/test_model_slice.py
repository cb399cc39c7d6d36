"""Slices on a backend: the CPU backend is today's behaviour, fallbacks, engine cache, profiles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.backend import Backend, EngineCache, EngineKey, StaticShapeBlock, module_digest, prepare_block
from zoo.dataset import held_out
from zoo.manifest import read_manifest
from zoo.model_slice import ModelSlice, load_slice
from zoo.profiling import cache_key, profile_variant

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
