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
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from p2pinfer.runtime.executor import Executor, Job
from p2pinfer.runtime.model_host import ModelHost

WARM_DEADLINE_S = 600.0
NEVER_CONFIDENT = 2.0  # a confidence threshold no softmax reaches: every exit head runs, none exits early
PROFILE_REPEATS = 5
BATCH_PROFILE_REPEATS = 3


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


def _input(host: ModelHost, name: str, batch_size: int) -> torch.Tensor:
    variant = host.models[name].variant
    first = host.ranges[name].first_block
    shape = variant.input_shape if first == 0 else variant.blocks[first].input_shape
    return torch.zeros([batch_size, *shape])


def _job(request_id: str, variant: str, first: int, last: int, hidden: torch.Tensor, timer) -> Job:
    return Job(request_id=request_id, variant=variant, first_block=first, last_block=last, hidden=hidden,
               deadline=time.monotonic() + WARM_DEADLINE_S, confidence_threshold=NEVER_CONFIDENT,
               allow_degrade=False, block_timer=timer, emulate=False)


__all__ = ["UnitWarmup", "batch_sizes_for", "warm_unit"]
