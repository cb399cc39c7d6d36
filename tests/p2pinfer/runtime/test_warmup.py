"""Warm-up before readiness, and what ``/v1/health`` says about units and backends (issue 17)."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pytest
import torch

from p2pinfer.client import Client
from p2pinfer.planning.placement import DEFAULT_CODEC_MS_PER_MB
from p2pinfer.runtime.warmup import (
    DEFAULT_CODEC_SHAPE,
    CodecCosts,
    batch_sizes_for,
    measure_codec_costs,
    representative_boundary,
)
from zoo.backend import cuda_unavailable_reason, onnxruntime_unavailable_reason
from zoo.dataset import held_out
from zoo.manifest import PRETRAINED_ZOO_DIR, read_manifest
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
    # the planner prices the boundary codecs at this node's measured speed, times the rpi4's x10
    codecs = report["planner"]["codec_costs"]
    assert codecs["measured"] and codecs["slowdown"] == 10.0 and codecs["repeats"] >= 1
    variant = read_manifest().variant(VARIANT)
    assert codecs["shape"] == [1, *max((block.output_shape for block in variant.blocks[:-1]),
                                       key=lambda shape: math.prod(shape))]
    assert all(ms > 0 for ms in codecs["encode_ms_per_mb"].values())
    assert codecs["encode_ms_per_mb"]["uint8"] > DEFAULT_CODEC_MS_PER_MB["uint8"]  # ~10x the host's ~0.17
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


# ---- the boundary codecs' costs, timed at start --------------------------------------------


class TickingClock:
    """A clock that moves ``step_s`` on every read: every timed encode or decode takes one step."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_codec_costs_are_the_median_per_mb_times_the_emulated_slowdown():
    shape = (1, 8, 250, 125)  # 1 MB of float32
    host = measure_codec_costs(shape, 1.0, clock=TickingClock(0.001))
    rpi4 = measure_codec_costs(shape, 10.0, clock=TickingClock(0.001))
    assert host.measured and host.shape == shape and host.slowdown == 1.0
    assert set(host.encode_ms_per_mb) == set(DEFAULT_CODEC_MS_PER_MB)
    assert all(ms == pytest.approx(1.0) for ms in (*host.encode_ms_per_mb.values(), *host.decode_ms_per_mb.values()))
    for name in DEFAULT_CODEC_MS_PER_MB:  # a device ten times slower pays ten times the codec
        assert rpi4.encode_ms_per_mb[name] == pytest.approx(10 * host.encode_ms_per_mb[name])
        assert rpi4.decode_ms_per_mb[name] == pytest.approx(10 * host.decode_ms_per_mb[name])
    # the planner's hop prices follow: uint8 at the real family's first boundary (1.6 MB)
    variant = read_manifest(PRETRAINED_ZOO_DIR).variant("text-orientation-w1")
    options = {pricing: {option.name: option for option in costs.pricing().options(variant, 1)}
               for pricing, costs in (("host", host), ("rpi4", rpi4))}
    assert options["host"]["uint8"].encode_ms == pytest.approx(variant.boundary_bytes(1) / 1e6)
    assert options["rpi4"]["uint8"].decode_ms == pytest.approx(10 * options["host"]["uint8"].decode_ms)


def test_codec_timing_stops_at_its_budget_and_always_times_one_round():
    shape = (1, 4, 16, 16)
    # four codecs x (encode, decode, end) reads: 12 ms a round, plus one read to check the budget
    assert measure_codec_costs(shape, clock=TickingClock(0.001), budget_s=0.05, repeats=10).repeats == 4
    assert measure_codec_costs(shape, clock=TickingClock(0.001), budget_s=0.0).repeats == 1
    assert measure_codec_costs(shape, clock=TickingClock(0.001), budget_s=10.0, repeats=3).repeats == 3


def test_codec_timing_on_the_real_clock_is_short_and_positive():
    """The real first boundary of the 224 px family, timed as a node does at start: a few tens
    of ms (bound loose for a shared host), every lossy codec costs something."""
    started = time.perf_counter()
    costs = measure_codec_costs(DEFAULT_CODEC_SHAPE)
    assert time.perf_counter() - started < 2.0 and costs.seconds < 1.0
    assert 1 <= costs.repeats <= 5
    for name in ("float16", "uint8", "uint8-channel"):
        assert 0 < costs.encode_ms_per_mb[name] < 100 and 0 < costs.decode_ms_per_mb[name] < 100
    fallback = CodecCosts.defaults(4.0)
    assert not fallback.measured and fallback.encode_ms_per_mb["float16"] == 4 * DEFAULT_CODEC_MS_PER_MB["float16"]


def test_a_large_boundary_is_timed_on_a_bounded_slice_of_it():
    assert measure_codec_costs((1, 64, 512, 512), clock=TickingClock(0.001), max_elements=1 << 16).shape \
        == (1, 64, 1024)
    family = read_manifest(PRETRAINED_ZOO_DIR).variants_of("text-orientation")
    assert representative_boundary(family) == (1, 32, 112, 112)  # the 224 px family's largest boundary
    w1 = [variant for variant in family if variant.name == "text-orientation-w1"]
    assert representative_boundary(w1, max_elements=300_000) == (1, 64, 56, 56)  # the largest that fits
    assert representative_boundary(w1, max_elements=1000) == (1, 256, 14, 14)  # none fits: the smallest
    assert representative_boundary([]) == DEFAULT_CODEC_SHAPE
