"""Compute units: the parts of one device that can each run blocks (CPU pools, GPUs, DLA cores).

Why: one request can be shared by the units of a single device (the first blocks on the GPU,
the rest on the CPU, or GPU + DLA on a Jetson) over a near-free link, so the node announces
its units and a per-unit block profile, and the planner places blocks on units as it places
them on nodes. A unit is a description; the node runs one executor per unit.

CPU units and threads: a CPU unit is one executor thread running blocks with ``threads``
intra-op threads. PyTorch documents ``torch.set_num_threads`` as the process's intra-op
setting; with the OpenMP backend (this build's ``torch.__config__.parallel_info()``) it is held
per calling thread, and a thread that never calls it starts from ``OMP_NUM_THREADS``. So each
executor calls ``apply_thread_settings(unit)`` once, in its own thread, before running any
block: that is right under both readings as long as every CPU unit has the same thread count,
which ``discover_units`` guarantees. Give units no more threads in total than there are cores
(``cpu_units * threads_per_cpu_unit <= os.cpu_count()``), or they slow each other down.

Accelerator units: the executor thread only launches kernels, so it needs one intra-op thread.

DLA (Jetson): a ``dla:N`` unit is listed only when torch_tensorrt imports, CUDA runs and
TensorRT's builder reports DLA cores (``tensorrt.Builder(logger).num_DLA_cores``, which is 0
on every discrete GPU); its blocks are TensorRT engines built for that core (float16, layers
the DLA lacks fall back to the GPU).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch

from zoo.backend import (
    Backend,
    BackendInfo,
    available_backends,
    describe_backends,
    package_installed,
    tensorrt_unavailable_reason,
)
from zoo.profiling import cpu_model


@dataclass(frozen=True)
class ComputeUnit:
    """One unit: ``name`` ("cpu", "cpu:1", "cuda:0", "dla:0"), the backend its blocks run on,
    and the intra-op threads its executor thread uses."""

    name: str
    kind: str  # "cpu" | "cuda" | "dla"
    backend: Backend
    threads: int = 1
    hardware: str = ""  # the CPU model or GPU name, for logs

    def describe(self) -> str:
        """One line for the node's startup log."""
        hardware = f" [{self.hardware}]" if self.hardware else ""
        plural = "" if self.threads == 1 else "s"
        return f"{self.name}: {self.backend.label}, {self.threads} intra-op thread{plural}{hardware}"


@dataclass(frozen=True)
class UnitThreadSettings:
    """How an executor for a unit uses threads: ``executor_threads`` threads each running
    blocks with ``intra_op_threads`` intra-op threads (see the module docstring for why)."""

    executor_threads: int
    intra_op_threads: int


def unit_thread_settings(unit: ComputeUnit) -> UnitThreadSettings:
    """One executor thread per unit: a CPU unit's intra-op threads, one for an accelerator's."""
    return UnitThreadSettings(executor_threads=1, intra_op_threads=unit.threads if unit.kind == "cpu" else 1)


def apply_thread_settings(unit: ComputeUnit) -> UnitThreadSettings:
    """Call once from the unit's executor thread, before its first block."""
    settings = unit_thread_settings(unit)
    torch.set_num_threads(settings.intra_op_threads)
    return settings


def dla_core_count() -> int:
    """DLA cores TensorRT can build for (0 without torch_tensorrt, without CUDA, or off Jetson)."""
    if tensorrt_unavailable_reason() is not None or not package_installed("tensorrt"):
        return 0
    try:
        tensorrt = importlib.import_module("tensorrt")
        builder = tensorrt.Builder(tensorrt.Logger(tensorrt.Logger.ERROR))
        return int(builder.num_DLA_cores)
    except Exception:  # noqa: BLE001 - no DLA answer means no DLA unit, never a failed start
        return 0


def discover_units(cpu_units: int = 1, threads_per_cpu_unit: int = 1, cuda_dtype: str = "float32",
                   cuda_graphs: bool = False, backends: list[BackendInfo] | None = None) -> list[ComputeUnit]:
    """The units of this device: ``cpu_units`` CPU units ("cpu", "cpu:1", ...), then one unit
    per CUDA device ("cuda:0", ...) when CUDA runs, then one per DLA core ("dla:0", ...)."""
    if cpu_units < 1 or threads_per_cpu_unit < 1:
        raise ValueError("a device has at least one CPU unit with at least one thread")
    backends = available_backends() if backends is None else backends
    hardware = cpu_model()
    units = [ComputeUnit("cpu" if index == 0 else f"cpu:{index}", "cpu", Backend.cpu(), threads_per_cpu_unit,
                         hardware) for index in range(cpu_units)]
    by_name = {info.name: info for info in backends}
    cuda = by_name.get("cuda")
    if cuda is not None and cuda.available:
        for device in cuda.devices:
            units.append(ComputeUnit(device, "cuda", Backend.cuda(device, cuda_dtype, cuda_graphs=cuda_graphs), 1,
                                     torch.cuda.get_device_name(torch.device(device))))
    tensorrt = by_name.get("tensorrt")
    if tensorrt is not None and tensorrt.available:
        for core in range(dla_core_count()):
            units.append(ComputeUnit(f"dla:{core}", "dla", Backend.tensorrt("cuda:0", "float16", dla_core=core), 1,
                                     f"DLA core {core}"))
    return units


def oversubscribed(units: list[ComputeUnit]) -> bool:
    """True when the CPU units ask for more intra-op threads than this machine has cores."""
    cores = os.cpu_count() or 1
    return sum(unit.threads for unit in units if unit.kind == "cpu") > cores


def startup_report(units: list[ComputeUnit], backends: list[BackendInfo] | None = None) -> str:
    """What a node logs at start: its backends (with why any is missing), then one line per unit."""
    lines = [describe_backends(backends)]
    lines += [f"unit {unit.describe()}" for unit in units]
    if oversubscribed(units):
        lines.append(f"warning: CPU units use more threads than the {os.cpu_count()} cores")
    return "\n".join(lines)
