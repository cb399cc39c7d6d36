"""The ONNX Runtime CPU backend: the same answers as eager, any batch, cached exports, eager
where the exporter cannot go, and a clear refusal where ONNX Runtime is not installed."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import zoo.backend as backend_module
from zoo.backend import (
    Backend,
    OnnxRuntimeBlock,
    available_backends,
    onnx_cache_dir,
    onnxruntime_block,
    onnxruntime_unavailable_reason,
    prepare_block,
    require_available,
)
from zoo.errors import BackendUnavailableError
from zoo.manifest import read_manifest
from zoo.model_slice import load_slice

pytestmark = pytest.mark.skipif(onnxruntime_unavailable_reason() is not None,
                                reason=f"onnxruntime backend unavailable: {onnxruntime_unavailable_reason()}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("P2PINFER_CACHE_DIR", str(tmp_path))


def test_listed_as_available_with_its_version_and_float32_only():
    info = {info.name: info for info in available_backends()}["onnxruntime"]
    assert info.available and info.devices == ("cpu",) and info.precisions == ("float32",)
    assert info.detail.startswith("onnxruntime ")
    require_available(Backend.onnxruntime())  # does not raise
    assert Backend.onnxruntime().label == "onnxruntime@cpu/float32"
    assert Backend.onnxruntime(intra_op_threads=2).label == "onnxruntime@cpu/float32+threads2"
    for bad in (dict(name="onnxruntime", dtype="float16"), dict(name="onnxruntime", device="cuda:0"),
                dict(name="onnxruntime", intra_op_threads=0)):
        with pytest.raises(ValueError):
            Backend(**bad)


@pytest.mark.parametrize("name", ["digits-cnn-w1", "digits-resnet-w0.25"])
def test_a_slice_on_onnxruntime_answers_as_eager_at_any_batch(name):
    onnx = load_slice(name, backend=Backend.onnxruntime())
    eager = load_slice(name)
    assert all(isinstance(block, OnnxRuntimeBlock) for block in onnx.blocks.values())
    assert all(isinstance(head, OnnxRuntimeBlock) for head in onnx.heads.values())
    assert onnx.parameter_count() == eager.parameter_count()
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 5):
        inputs = torch.randn(batch, *onnx.variant.input_shape, generator=generator)
        for exit_block in onnx.variant.exit_blocks:
            expected = eager.exit_logits(exit_block, eager.run(inputs, last=exit_block))
            actual = onnx.exit_logits(exit_block, onnx.run(inputs, last=exit_block))
            assert actual.shape == expected.shape and actual.shape[0] == batch
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            # the executor's path (no range check, no mode switch, no nn.Module call): the same numbers
            hidden = inputs
            with torch.inference_mode():
                for index in range(exit_block + 1):
                    hidden = onnx.forward_block(index, hidden)
                assert torch.equal(onnx.forward_head(exit_block, hidden), actual)
    # what a session cannot take as is (a strided view, another dtype, a tensor with grad) is converted first
    inputs = torch.randn(2, *onnx.variant.input_shape, dtype=torch.float64, generator=generator)
    strided = inputs.float().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    assert not strided.is_contiguous()
    torch.testing.assert_close(onnx.forward_block(0, strided), eager.run_block(0, inputs.float()), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(onnx.forward_block(0, inputs), eager.run_block(0, inputs.float()), rtol=1e-4,
                               atol=1e-4)


def test_exports_are_cached_on_disk_as_onnx_files_and_read_back():
    variant = read_manifest().variant("digits-cnn-w0.25")
    load_slice(variant, backend=Backend.onnxruntime())
    files = sorted(onnx_cache_dir().glob("*.onnx"))
    assert len(files) == variant.block_count + len(variant.exit_blocks)
    stamps = {path: path.stat().st_mtime_ns for path in files}
    again = load_slice(variant, backend=Backend.onnxruntime())
    assert {path: path.stat().st_mtime_ns for path in onnx_cache_dir().glob("*.onnx")} == stamps  # not rewritten
    assert isinstance(again.blocks[0], OnnxRuntimeBlock)


def test_a_corrupt_cached_export_is_exported_again():
    """A truncated .onnx file in the cache (a full disk, a crash of another writer) is removed
    and the block exported again: the slice still runs on ONNX Runtime."""
    variant = read_manifest().variant("digits-cnn-w0.25")
    load_slice(variant, backend=Backend.onnxruntime())
    victim = sorted(onnx_cache_dir().glob("*block0-0*.onnx"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    again = load_slice(variant, backend=Backend.onnxruntime())
    assert isinstance(again.blocks[0], OnnxRuntimeBlock)
    assert victim.stat().st_size > 100


def test_a_block_the_exporter_cannot_express_runs_eagerly_and_says_why(caplog, monkeypatch):
    """An adaptive pooling to 7x7 of a 10x10 input has no ONNX form: the block stays eager (it
    still answers) and the log names the block and the reason."""
    logger = logging.getLogger("zoo.backend")  # an earlier test's dictConfig may have disabled it
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "propagate", True)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(7)).eval()
    with caplog.at_level(logging.WARNING, logger="zoo.backend"):
        prepared = prepare_block(block, Backend.onnxruntime(), torch.zeros(1, 3, 10, 10))
    assert prepared is block
    assert "runs eagerly" in caplog.text and "(10, 10) -> (7, 7)" in caplog.text


def test_a_dividing_pooling_is_exported():
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(7), nn.Flatten()).eval()
    prepared = onnxruntime_block(block, Backend.onnxruntime(), torch.zeros(1, 3, 14, 14))
    assert isinstance(prepared, OnnxRuntimeBlock)
    inputs = torch.randn(3, 3, 14, 14)
    torch.testing.assert_close(prepared(inputs), block(inputs), rtol=1e-4, atol=1e-5)


def test_without_onnxruntime_the_backend_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(backend_module, "package_installed", lambda name: name != "onnxruntime")
    info = {info.name: info for info in available_backends()}["onnxruntime"]
    assert not info.available and "onnxruntime not installed" in info.reason
    with pytest.raises(BackendUnavailableError, match="onnxruntime not installed"):
        load_slice("digits-cnn-w1", backend=Backend.onnxruntime())
