"""Warm-up before readiness, and what ``/v1/health`` says about units and backends (issue 17)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from p2pinfer.client import Client
from p2pinfer.runtime.warmup import batch_sizes_for
from zoo.backend import cuda_unavailable_reason, onnxruntime_unavailable_reason
from zoo.dataset import held_out
from zoo.manifest import read_manifest
from zoo.model_slice import load_slice

VARIANT = "digits-cnn-w1"


def health(url: str) -> dict:
    with Client(url) as client:
        return client.health()


def test_batch_sizes_cover_every_shape_an_accelerator_may_see():
    assert batch_sizes_for("cpu", 8) == (1, 8) and batch_sizes_for("cpu:1", 1) == (1,)
    assert batch_sizes_for("cuda:0", 4) == (1, 2, 3, 4)


def test_the_first_request_after_readiness_is_as_fast_as_warm_ones(node_factory):
    """The node warmed every slice before its readiness line: the first request pays no cold
    start. Bound: the warm median plus a few times the unit's measured compute for the arm
    (the profile health reports), plus scheduling noise on a shared 2-core host."""
    node = node_factory("--variants", VARIANT, "--max-batch", "4")
    report = health(node.url)
    (unit,) = report["units"]
    assert unit["name"] == "cpu" and unit["backend"] == "cpu-eager@cpu/float32" and unit["precision"] == "float32"
    assert unit["warmup"]["batch_sizes"] == [1, 4] and unit["warmup"]["profile_measured"]
    variant = read_manifest().variant(VARIANT)
    images, _ = held_out(tuple(variant.input_shape))
    sample = images[:1].numpy().astype(np.float32)
    latencies = []
    with Client(node.url) as client:
        for _ in range(21):
            started = time.perf_counter()
            client.infer(sample, deadline_ms=5000, family=variant.family, variant=VARIANT)
            latencies.append((time.perf_counter() - started) * 1000)
    warm = statistics.median(latencies[1:])
    compute_ms = max(unit["warmup"]["first_forward_ms"], 1.0)
    assert latencies[0] <= 3 * warm + 5 * compute_ms + 25.0, (latencies[0], warm, compute_ms)
    # a real unit measured what a batch of 4 costs in singles (eager digits-cnn-w1: ~0.3, not 0.6's guess)
    efficiency = unit["warmup"]["batch_efficiency"][VARIANT]
    assert 0.02 <= efficiency <= 1.0


def test_health_lists_units_backends_and_why_one_is_missing_with_an_emulated_cpu(node_factory):
    """``--units cpu --device-profile rpi4`` composes: the CPU is emulated x10 and says so."""
    node = node_factory("--variants", VARIANT, "--units", "cpu", "--device-profile", "rpi4")
    report = health(node.url)
    assert [unit["name"] for unit in report["units"]] == ["cpu"]
    assert "emulated rpi4 cpu: x10" in report["units"][0]["speed"]
    assert report["units"][0]["warmup"]["batch_efficiency"] == {}  # batches are padded to the device's constant
    backends = {backend["name"]: backend for backend in report["backends"]}
    assert backends["cpu-eager"]["available"] and "float32" in backends["cpu-eager"]["precisions"]
    reason = cuda_unavailable_reason()
    if reason is not None:
        assert backends["cuda"] == {"name": "cuda", "available": False, "reason": reason}
    assert backends["tensorrt"]["available"] or backends["tensorrt"]["reason"]


@pytest.mark.skipif(onnxruntime_unavailable_reason() is not None, reason="onnxruntime not installed")
def test_a_node_on_onnxruntime_answers_as_an_eager_node_and_says_which_backend(node_factory):
    """``--cpu-backend onnxruntime``: the unit's blocks are ONNX Runtime sessions (health says
    so, and they were profiled there), and the answer is the eager model's within 1e-4."""
    node = node_factory("--variants", VARIANT, "--cpu-backend", "onnxruntime")
    (unit,) = health(node.url)["units"]
    assert unit["backend"] == "onnxruntime@cpu/float32" and unit["warmup"]["profile_measured"]
    variant = read_manifest().variant(VARIANT)
    images, _ = held_out(tuple(variant.input_shape))
    sample = images[:1].numpy().astype(np.float32)
    with Client(node.url) as client:
        answer = client.infer(sample, deadline_ms=5000, family=variant.family, variant=VARIANT,
                              exit=variant.exit_blocks[-1])
    model = load_slice(variant)
    expected = torch.softmax(model.exit_logits(variant.exit_blocks[-1], model.run(torch.from_numpy(sample))), -1)[0]
    assert answer.label == int(expected.argmax())
    np.testing.assert_allclose(answer.probabilities, expected.numpy(), atol=1e-4)


def test_auto_is_onnxruntime_where_installed_unless_the_device_says_otherwise(monkeypatch):
    """``--cpu-backend auto`` (the default): ``$P2PINFER_CPU_BACKEND`` when set, else ONNX
    Runtime where installed; a bad name is refused naming both the flag and the variable."""
    from p2pinfer.errors import BadRequest
    from p2pinfer.runtime.node import cpu_backend

    monkeypatch.delenv("P2PINFER_CPU_BACKEND", raising=False)
    expected = "onnxruntime" if onnxruntime_unavailable_reason() is None else "cpu-eager"
    assert cpu_backend("auto", 1).name == expected
    assert cpu_backend("cpu-eager", 1).name == "cpu-eager"
    monkeypatch.setenv("P2PINFER_CPU_BACKEND", "cpu-eager")
    assert cpu_backend("auto", 1).name == "cpu-eager"
    monkeypatch.setenv("P2PINFER_CPU_BACKEND", "tpu")
    with pytest.raises(BadRequest, match="P2PINFER_CPU_BACKEND"):
        cpu_backend("auto", 1)
