"""What this machine can run, and the guards around what it cannot (CPU only, runs everywhere)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo.backend as backend_module
from zoo.backend import (
    Backend,
    available_backends,
    cuda_unavailable_reason,
    describe_backends,
    package_installed,
    prepare_block,
    require_available,
    tensorrt_unavailable_reason,
)
from zoo.errors import BackendUnavailableError, ZooError
from zoo.model_slice import load_slice

NO_CUDA_BUILD = not torch.backends.cuda.is_built()
NO_TENSORRT = not package_installed("torch_tensorrt")


def by_name() -> dict:
    return {info.name: info for info in available_backends()}


def test_cpu_eager_is_always_available():
    cpu = by_name()["cpu-eager"]
    assert cpu.available and cpu.reason == "" and cpu.devices == ("cpu",)
    assert "float32" in cpu.precisions
    require_available(Backend.cpu())  # does not raise


@pytest.mark.skipif(not NO_CUDA_BUILD, reason="this torch has CUDA: the no-CUDA reason cannot be observed")
def test_cuda_and_tensorrt_unavailable_here_with_reasons():
    infos = by_name()
    assert infos["cuda"].available is False
    assert infos["cuda"].reason == "torch built without CUDA"
    assert infos["tensorrt"].available is False
    expected = "torch_tensorrt not installed" if NO_TENSORRT else "needs CUDA: torch built without CUDA"
    assert infos["tensorrt"].reason == expected
    line = describe_backends()
    assert line.startswith("backends: cpu-eager")
    assert "cuda unavailable: torch built without CUDA" in line
    assert f"tensorrt unavailable: {expected}" in line


def test_reasons_follow_what_is_missing(monkeypatch):
    """The reason names the most fundamental missing piece: build, then device, then package."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_unavailable_reason().startswith("no CUDA device visible")
    monkeypatch.setattr(backend_module, "package_installed", lambda name: True)
    assert tensorrt_unavailable_reason().startswith("needs CUDA: no CUDA device visible")
    monkeypatch.setattr(backend_module, "package_installed", lambda name: False)
    assert tensorrt_unavailable_reason() == "torch_tensorrt not installed"


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="this machine has CUDA")
def test_asking_for_cuda_here_raises_a_typed_error_with_the_reason():
    block = nn.Conv2d(1, 4, 3)
    for backend in (Backend.cuda(), Backend.cuda(dtype="float16", cuda_graphs=True), Backend.tensorrt()):
        with pytest.raises(BackendUnavailableError) as caught:
            prepare_block(block, backend, torch.zeros(1, 1, 8, 8))
        assert backend.label in str(caught.value)
        assert isinstance(caught.value, ZooError) and isinstance(caught.value, RuntimeError)
    with pytest.raises(BackendUnavailableError, match=cuda_unavailable_reason()):
        load_slice("digits-cnn-w1", backend=Backend.cuda())
    with pytest.raises(BackendUnavailableError):  # the old spelling gets the same typed error
        load_slice("digits-cnn-w1", device="cuda")
    assert block.weight.device.type == "cpu", "a refused backend leaves the module where it was"


def test_backend_descriptions_are_validated():
    assert Backend() == Backend.cpu() == Backend.for_device("cpu")
    assert Backend.cuda("cuda").device == "cuda:0"
    assert Backend.for_device("cuda:1", torch.float16) == Backend.cuda("cuda:1", "float16")
    assert Backend.cpu(torch.bfloat16).torch_dtype is torch.bfloat16
    for bad in (dict(name="opencl"), dict(name="cuda", device="cpu"), dict(name="cpu-eager", device="cuda:0"),
                dict(dtype="float64"), dict(cuda_graphs=True), dict(name="cuda", device="cuda:0", cuda_graphs=True,
                                                                   compile=True),
                dict(dla_core=0), dict(device="nonsense"), dict(static_batch_size=0)):
        with pytest.raises(ValueError):
            Backend(**bad)


def test_labels_are_distinct_per_backend_and_option():
    backends = [Backend.cpu(), Backend.cpu("bfloat16"), Backend.cuda(), Backend.cuda(dtype="float16"),
                Backend.cuda(dtype="bfloat16"), Backend.cuda(cuda_graphs=True), Backend.cuda(compile=True),
                Backend.cuda(cuda_graphs=True, static_batch_size=8), Backend.cuda("cuda:1"), Backend.tensorrt(),
                Backend.tensorrt(dla_core=0), Backend.tensorrt(dla_core=1)]
    labels = [backend.label for backend in backends]
    assert len(set(labels)) == len(labels)
    assert labels[0] == "cpu-eager@cpu/float32"
    assert Backend.cuda(dtype="float16", cuda_graphs=True).label == "cuda@cuda:0/float16+graphs"
