"""Compute units: discovery, descriptions, and two CPU units as separate executors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import zoo.compute_unit as compute_unit_module
from zoo.backend import Backend, BackendInfo, cuda_unavailable_reason
from zoo.compute_unit import (
    ComputeUnit,
    apply_thread_settings,
    discover_units,
    dla_core_count,
    startup_report,
    unit_thread_settings,
)
from zoo.dataset import held_out
from zoo.model_slice import load_slice


def test_one_cpu_unit_by_default_and_two_when_asked():
    units = discover_units()
    cpu = [unit for unit in units if unit.kind == "cpu"]
    assert [unit.name for unit in cpu] == ["cpu"]
    assert cpu[0].backend == Backend.cpu() and cpu[0].threads == 1
    two = discover_units(cpu_units=2, threads_per_cpu_unit=1)
    assert [unit.name for unit in two if unit.kind == "cpu"] == ["cpu", "cpu:1"]
    with pytest.raises(ValueError):
        discover_units(cpu_units=0)


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="this machine has CUDA")
def test_no_accelerator_units_without_cuda():
    units = discover_units(cpu_units=2)
    assert [unit.kind for unit in units] == ["cpu", "cpu"]
    assert dla_core_count() == 0


def test_accelerator_units_follow_the_backends(monkeypatch):
    """With CUDA and TensorRT reported, one unit per GPU, then one per DLA core the builder reports."""
    backends = [BackendInfo("cpu-eager", True, devices=("cpu",)),
                BackendInfo("cuda", True, devices=("cuda:0", "cuda:1")),
                BackendInfo("tensorrt", True, devices=("cuda:0", "cuda:1"))]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Orin (test)")
    monkeypatch.setattr(compute_unit_module, "dla_core_count", lambda: 2)
    units = discover_units(backends=backends, cuda_dtype="float16", cuda_graphs=True)
    assert [unit.name for unit in units] == ["cpu", "cuda:0", "cuda:1", "dla:0", "dla:1"]
    assert units[1].backend == Backend.cuda("cuda:0", "float16", cuda_graphs=True)
    assert units[3].backend == Backend.tensorrt("cuda:0", "float16", dla_core=0)
    assert unit_thread_settings(units[1]).intra_op_threads == 1
    monkeypatch.setattr(compute_unit_module, "dla_core_count", lambda: 0)
    assert "dla:0" not in [unit.name for unit in discover_units(backends=backends)]
    unavailable = [backends[0], BackendInfo("cuda", False, "torch built without CUDA"),
                   BackendInfo("tensorrt", False, "torch_tensorrt not installed")]
    assert [unit.name for unit in discover_units(backends=unavailable)] == ["cpu"]


def test_startup_report_names_backends_and_units():
    units = discover_units(cpu_units=2, threads_per_cpu_unit=1)
    report = startup_report(units)
    lines = report.splitlines()
    assert lines[0].startswith("backends: cpu-eager")
    if cuda_unavailable_reason() is not None:
        assert f"cuda unavailable: {cuda_unavailable_reason()}" in lines[0]
    assert "unit cpu: cpu-eager@cpu/float32, 1 intra-op thread" in report
    assert any(line.startswith("unit cpu:1:") for line in lines)
    assert "warning" in startup_report([ComputeUnit(f"cpu:{i}", "cpu", Backend.cpu(), 512) for i in range(2)])


def test_two_cpu_units_run_as_separate_executors_with_their_own_thread_settings():
    """One single-thread executor per unit, each applying its settings in its own thread."""
    units = discover_units(cpu_units=2, threads_per_cpu_unit=1)
    variant = "digits-cnn-w1"
    head, tail = load_slice(variant, 0, 0), load_slice(variant, 1, 2)
    images, _ = held_out((1, 8, 8))
    chunks = list(images[:64].split(8))
    expected = [tail.run(head.run(chunk)) for chunk in chunks]
    executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=unit.name) for unit in units]
    try:
        seen = [executor.submit(lambda unit=unit: (apply_thread_settings(unit), threading.get_ident(),
                                                   torch.get_num_threads())).result()
                for unit, executor in zip(units, executors, strict=True)]
        assert seen[0][1] != seen[1][1], "each unit has its own thread"
        assert all(threads == unit.threads for (_, _, threads), unit in zip(seen, units, strict=True))
        # a pipeline: unit 0 runs block 0 of every chunk while unit 1 runs blocks 1-2 of the previous one
        firsts = [executors[0].submit(head.run, chunk) for chunk in chunks]
        finals = [executors[1].submit(lambda future=future: tail.run(future.result())) for future in firsts]
        for future, reference in zip(finals, expected, strict=True):
            assert torch.equal(future.result(), reference)
    finally:
        for executor in executors:
            executor.shutdown()
