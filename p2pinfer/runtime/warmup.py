"""Warm-up: every hosted slice runs on every unit before the node says it is ready.

Why: the first forward on a unit pays one-off costs — CUDA context and cuBLAS/cuDNN handles
(created per thread, so in the executor's own worker thread), cuDNN algorithm search per
input shape, CUDA graph capture or ``torch.compile``, first-touch of CPU weights. On an H200
that first stage took longer than a 157 ms budget (issue 17), so the first request a peer
sent failed. Here each (variant, blocks, unit, precision) runs once per batch size the
executor may form, through the executor itself (same thread, same code), every exit head
included; then a few batch-1 runs re-measure the unit's block profile, warm, so the
profile the node gossips (and seeds its planner and its bandit priors with) is the unit's
real speed rather than a cold or cached guess.

The boundary codecs are timed here too (``measure_codec_costs``): the planner prices each hop
with encode + bytes / bandwidth + decode, and a codec's cost is this node's, not a constant
from another machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from p2pinfer.planning.placement import DEFAULT_CODEC_MS_PER_MB, CodecPricing
from p2pinfer.protocol.boundary_codec import decode_boundary, encode_boundary
from p2pinfer.runtime.executor import Executor, Job
from p2pinfer.runtime.model_host import ModelHost
from zoo.manifest import VariantInfo

WARM_DEADLINE_S = 600.0
NEVER_CONFIDENT = 2.0  # a confidence threshold no softmax reaches: every exit head runs, none exits early
PROFILE_REPEATS = 5
BATCH_PROFILE_REPEATS = 3
CODEC_REPEATS = 5  # timed encode + decode rounds per codec (the median is kept)
CODEC_BUDGET_S = 0.05  # the most the timed rounds may take together (one round always runs)
CODEC_MAX_ELEMENTS = 1 << 20  # a larger boundary is timed on its first 4 MB (the cost is per MB)
DEFAULT_CODEC_SHAPE = (1, 32, 112, 112)  # the real family's first 224 px boundary, for a node hosting nothing


@dataclass(frozen=True)
class UnitWarmup:
    """What warming one unit did, for ``/v1/health``."""

    unit: str
    backend: str
    precision: str
    batch_sizes: tuple[int, ...]
    variants: int
    seconds: float
    first_forward_ms: float  # the slowest first forward (the cold start a request would have paid)
    profile_measured: bool
    batch_efficiency: tuple[tuple[str, float], ...] = ()  # (variant, measured efficiency) on a real unit


def batch_sizes_for(unit: str, max_batch: int) -> tuple[int, ...]:
    """An accelerator specialises per shape (cuDNN search, graphs): every size the executor can
    form. A CPU only needs 1 and the largest (its kernels do not specialise per batch size)."""
    if unit.startswith("cpu"):
        return (1, max_batch) if max_batch > 1 else (1,)
    return tuple(range(1, max_batch + 1))


async def warm_unit(unit: str, executor: Executor, host: ModelHost, max_batch: int,
                    measure: bool = True) -> UnitWarmup:
    """Run every hosted slice on ``executor`` at every batch size, then (``measure``) re-measure
    the block profile of ``host`` warm. Block times of warm-up runs never reach the online
    estimates (a cold first forward would poison them)."""
    started = time.monotonic()
    sizes = batch_sizes_for(unit, max_batch)
    first_forward_ms = 0.0
    efficiencies: list[tuple[str, float]] = []
    for name, model in host.models.items():
        hosted = host.ranges[name]
        for size in sizes:
            job = _job(f"warmup:{unit}:{name}:{size}", model.variant.name, hosted.first_block, hosted.last_block,
                       _input(host, name, size), timer=lambda *_: None)
            forward_started = time.perf_counter()
            await executor.submit(job)
            first_forward_ms = max(first_forward_ms, (time.perf_counter() - forward_started) * 1000)
        if measure:
            samples: dict[int, list[float]] = {}

            def record(variant: str, block: int, real_s: float, padded_s: float, batch_size: int,
                       samples: dict[int, list[float]] = samples) -> None:
                samples.setdefault(block, []).append(real_s * 1000)

            for repeat in range(PROFILE_REPEATS):
                await executor.submit(_job(f"profile:{unit}:{name}:{repeat}", name, hosted.first_block,
                                           hosted.last_block, _input(host, name, 1), timer=record))
            single = {block: statistics.median(times) for block, times in samples.items()}
            host.set_measured(name, single)
            if max(sizes) > 1 and host.device_slowdown <= 1.0:  # a batch's cost in singles, on a real unit
                samples.clear()
                for repeat in range(BATCH_PROFILE_REPEATS):
                    await executor.submit(_job(f"profile:{unit}:{name}:batch:{repeat}", name, hosted.first_block,
                                               hosted.last_block, _input(host, name, max(sizes)), timer=record))
                measured = host.set_batch_efficiency(
                    name, max(sizes), sum(single.values()),
                    sum(statistics.median(times) for times in samples.values()))
                if measured is not None:
                    efficiencies.append((name, round(measured, 3)))
    executor.forget_arrivals()
    backend = next(iter(host.models.values())).backend if host.models else None
    return UnitWarmup(unit=unit, backend=backend.label if backend is not None else host.device,
                      precision=backend.dtype if backend is not None else "float32", batch_sizes=sizes,
                      variants=len(host.models), seconds=round(time.monotonic() - started, 3),
                      first_forward_ms=round(first_forward_ms, 3), profile_measured=measure and bool(host.models),
                      batch_efficiency=tuple(efficiencies))


@dataclass(frozen=True)
class CodecCosts:
    """This node's boundary-codec costs, ms per MB of float32 boundary, for its planner
    (``pricing``) and ``/v1/health``: measured at start on this host, times ``slowdown``
    (the emulated device's CPU slowdown: the codecs run on the CPU, and an rpi4 x10 encodes
    ten times slower than the host the emulation runs on). ``repeats``: the timed rounds that
    fit the budget. ``measured`` False: the timing failed, and these are the defaults
    (``DEFAULT_CODEC_MS_PER_MB``, this project's host) times ``slowdown``. On an emulated
    device only block compute is padded to the device's speed, not the codec calls themselves,
    so there a codec hop is priced higher than it takes; on a real board the two agree."""

    encode_ms_per_mb: Mapping[str, float]
    decode_ms_per_mb: Mapping[str, float]
    shape: tuple[int, ...] = DEFAULT_CODEC_SHAPE
    slowdown: float = 1.0
    repeats: int = 0
    seconds: float = 0.0
    measured: bool = True

    @classmethod
    def defaults(cls, slowdown: float = 1.0) -> CodecCosts:
        """The fallback: the constant costs, scaled to the emulated device."""
        costs = {name: ms * slowdown for name, ms in DEFAULT_CODEC_MS_PER_MB.items()}
        return cls(encode_ms_per_mb=costs, decode_ms_per_mb=dict(costs), slowdown=slowdown, measured=False)

    def pricing(self) -> CodecPricing:
        """The planner's codec prices with these costs (every other setting its default)."""
        return CodecPricing(encode_ms_per_mb=dict(self.encode_ms_per_mb),
                            decode_ms_per_mb=dict(self.decode_ms_per_mb))

    def report(self) -> dict[str, object]:
        """As ``/v1/health`` shows it."""
        return {"encode_ms_per_mb": {name: round(ms, 4) for name, ms in self.encode_ms_per_mb.items()},
                "decode_ms_per_mb": {name: round(ms, 4) for name, ms in self.decode_ms_per_mb.items()},
                "shape": list(self.shape), "slowdown": self.slowdown, "repeats": self.repeats,
                "seconds": round(self.seconds, 4), "measured": self.measured}


def representative_boundary(variants: Iterable[VariantInfo], max_elements: int = CODEC_MAX_ELEMENTS) -> tuple[int, ...]:
    """The boundary the codecs are timed on: the largest one (batch 1) of the hosted variants,
    input included, whose elements fit ``max_elements``, else the smallest; the real family's
    first 224 px boundary when nothing is hosted. The largest, because the costs the planner
    cares about are those of the hops worth compressing."""
    shapes = [(1, *shape) for variant in variants
              for shape in (variant.input_shape, *(block.output_shape for block in variant.blocks[:-1]))]
    if not shapes:
        return DEFAULT_CODEC_SHAPE
    fitting = [shape for shape in shapes if math.prod(shape) <= max_elements]
    if fitting:
        return max(fitting, key=math.prod)
    return min(shapes, key=math.prod)


def measure_codec_costs(shape: Sequence[int], slowdown: float = 1.0, *,
                        codecs: Sequence[str] = tuple(DEFAULT_CODEC_MS_PER_MB), repeats: int = CODEC_REPEATS,
                        budget_s: float = CODEC_BUDGET_S, max_elements: int = CODEC_MAX_ELEMENTS,
                        clock: Callable[[], float] = time.perf_counter) -> CodecCosts:
    """Time encode and decode of each codec on a boundary of ``shape`` (ReLU-like values, as
    the boundaries of a CNN are): one untimed round (first-touch of the buffers), then up to
    ``repeats`` timed rounds, the median of each, times ``slowdown``, per MB of float32.
    The timed rounds stop once ``budget_s`` is spent (one always runs); a boundary over
    ``max_elements`` is timed on its first ``max_elements`` (the channels kept: the
    per-channel codec needs them)."""
    dimensions = [int(size) for size in shape] or [1]
    if math.prod(dimensions) > max_elements and len(dimensions) >= 2:
        channels = dimensions[1]
        dimensions = [1, channels, max(1, max_elements // max(channels, 1))]
    array = np.maximum(np.random.default_rng(0).standard_normal(dimensions, dtype=np.float32), 0.0)
    megabytes = array.nbytes / 1e6
    encode_samples: dict[str, list[float]] = {name: [] for name in codecs}
    decode_samples: dict[str, list[float]] = {name: [] for name in codecs}
    for name in codecs:  # untimed: the first encode of a shape pays its page faults
        decode_boundary(*encode_boundary(array, name))
    started = clock()
    rounds = 0
    while rounds < repeats and (rounds == 0 or clock() - started < budget_s):
        for name in codecs:
            before = clock()
            encoding, payload = encode_boundary(array, name)
            encoded_at = clock()
            decode_boundary(encoding, payload)
            decoded_at = clock()
            encode_samples[name].append(encoded_at - before)
            decode_samples[name].append(decoded_at - encoded_at)
        rounds += 1

    def per_megabyte(samples: dict[str, list[float]]) -> dict[str, float]:
        return {name: statistics.median(times) * 1000 / megabytes * slowdown for name, times in samples.items()}

    return CodecCosts(encode_ms_per_mb=per_megabyte(encode_samples), decode_ms_per_mb=per_megabyte(decode_samples),
                      shape=tuple(dimensions), slowdown=slowdown, repeats=rounds, seconds=clock() - started)


def _input(host: ModelHost, name: str, batch_size: int) -> torch.Tensor:
    variant = host.models[name].variant
    first = host.ranges[name].first_block
    shape = variant.input_shape if first == 0 else variant.blocks[first].input_shape
    return torch.zeros([batch_size, *shape])


def _job(request_id: str, variant: str, first: int, last: int, hidden: torch.Tensor, timer) -> Job:
    return Job(request_id=request_id, variant=variant, first_block=first, last_block=last, hidden=hidden,
               deadline=time.monotonic() + WARM_DEADLINE_S, confidence_threshold=NEVER_CONFIDENT,
               allow_degrade=False, block_timer=timer, emulate=False)


__all__ = ["CodecCosts", "UnitWarmup", "batch_sizes_for", "measure_codec_costs", "representative_boundary",
           "warm_unit"]
