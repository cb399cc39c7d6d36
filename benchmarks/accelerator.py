"""Accelerator backends: per-block latency, CPU/GPU split, and accuracy per precision.

    python -m benchmarks.accelerator [--variant digits-resnet-w1] [--batch-sizes 1,16] [--repeats 30]
                                     [--threads 1] [--with-compile] [--out benchmarks/results/accelerator.json]

Three questions, each answered with what this machine has (the JSON names the GPU, and every
backend that could not run, with the reason):
1. Per-block latency per backend and precision: CPU float32; CUDA float32/float16/bfloat16;
   CUDA graphs (float16); ``torch.compile`` (with ``--with-compile``); TensorRT float16.
   Median of synchronised timings after warm-up (``zoo.profiling.measure``).
2. End-to-end latency of one request (batch 1, input arriving on the CPU, logits returned on
   the CPU): CPU only, GPU only, and the two CPU+GPU splits (first blocks on one unit, the
   rest on the other) at every boundary, with the device-to-device copy timed on its own.
3. Accuracy per precision on the held-out split vs float32 on the CPU (CPU bfloat16, CUDA
   float32/float16/bfloat16, TensorRT float16): final-exit accuracy, prediction agreement
   with float32 and the largest logit difference.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.backend import Backend, available_backends, cuda_precisions, precision_name
from zoo.compute_unit import discover_units
from zoo.dataset import held_out
from zoo.manifest import VariantInfo, read_manifest
from zoo.model_slice import ModelSlice, load_slice
from zoo.profiling import cpu_model, measure

DEFAULT_VARIANT = "digits-resnet-w1"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(run: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Wall time of ``run`` in ms, every GPU synchronised before and after (kernels are asynchronous)."""
    samples = []
    for attempt in range(warmup + repeats):
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        if attempt >= warmup:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    values = np.array(samples)
    return {"p50_ms": round(float(np.percentile(values, 50)), 4), "p95_ms": round(float(np.percentile(values, 95)), 4),
            "min_ms": round(float(values.min()), 4)}


def latency_backends(with_compile: bool, batch_size: int) -> list[Backend]:
    """Every backend and precision worth timing; the ones this machine lacks are reported, not run."""
    backends = [Backend.cpu(), Backend.onnxruntime()]
    for dtype in ("float32", "float16", "bfloat16"):
        backends.append(Backend.cuda(dtype=dtype))
    backends.append(Backend.cuda(dtype="float16", cuda_graphs=True, static_batch_size=batch_size))
    if with_compile:
        backends.append(Backend.cuda(dtype="float16", compile=True))
    backends.append(Backend.tensorrt(dtype="float16", static_batch_size=batch_size))
    return backends


def unavailable_reason(backend: Backend, infos: dict[str, Any]) -> str | None:
    info = infos[backend.name]
    if not info.available:
        return info.reason
    if backend.name == "cuda" and backend.dtype not in cuda_precisions(backend.device):
        return f"{torch.cuda.get_device_name(backend.torch_device)} has no {backend.dtype}"
    return None


def load_timed(variant: VariantInfo, backend: Backend, first: int = 0, last: int | None = None
               ) -> tuple[ModelSlice, float]:
    started = time.perf_counter()
    model = load_slice(variant, first, last, backend=backend)
    return model, round(time.perf_counter() - started, 3)


def block_latency(variant: VariantInfo, batch_sizes: list[int], arguments: argparse.Namespace,
                  infos: dict[str, Any]) -> list[dict]:
    rows = []
    for batch_size in batch_sizes:
        for backend in latency_backends(arguments.with_compile, batch_size):
            row: dict[str, Any] = {"backend": backend.label, "batch_size": batch_size}
            reason = unavailable_reason(backend, infos)
            if reason is not None:
                rows.append({**row, "skipped": reason})
                continue
            try:
                model, prepare_s = load_timed(variant, backend)
                profile = measure(model, threads=arguments.threads, repeats=arguments.repeats,
                                  warmup=arguments.warmup, batch_size=batch_size)
            except Exception as error:  # noqa: BLE001 - one failing backend must not lose the others
                rows.append({**row, "error": f"{type(error).__name__}: {error}"})
                continue
            row.update(unit=backend.device, prepare_s=prepare_s,
                       block_ms=profile.block_ms, exit_ms={str(k): v for k, v in profile.exit_ms.items()},
                       blocks_total_ms=round(sum(profile.block_ms), 4))
            rows.append(row)
            print(f"block latency  {backend.label:<40} batch {batch_size:>3}: {row['block_ms']} ms")
    return rows


def forward_runner(head: ModelSlice, tail: ModelSlice | None, sample: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One request: input from the CPU, blocks on ``head`` (then ``tail``), final logits back on the CPU."""
    final = head.variant.exit_blocks[-1]

    def run() -> torch.Tensor:
        hidden = head.run(head.prepare(sample))
        last = head
        if tail is not None:
            hidden = tail.run(tail.prepare(hidden))  # prepare = the copy between units
            last = tail
        return last.to_host(last.exit_logits(final, hidden))

    return run


def end_to_end(variant: VariantInfo, arguments: argparse.Namespace, infos: dict[str, Any]) -> dict[str, Any]:
    images, _ = held_out(tuple(variant.input_shape))
    sample = images[:1]
    repeats, warmup = arguments.repeats, arguments.warmup
    torch.set_num_threads(arguments.threads)
    cpu = Backend.cpu()
    gpu = Backend.cuda(dtype=arguments.split_dtype, cuda_graphs=True, static_batch_size=1)
    rows: list[dict[str, Any]] = []
    full_cpu = load_slice(variant, backend=cpu)
    rows.append({"placement": "cpu only", "units": ["cpu"], **summary(time_ms(forward_runner(full_cpu, None, sample),
                                                                              repeats, warmup))})
    print(f"end to end     cpu only: {rows[-1]}")
    reason = unavailable_reason(gpu, infos)
    if reason is not None:
        skipped = {"skipped": reason}
        rows += [{"placement": "gpu only", **skipped}, {"placement": "split cpu -> gpu", **skipped},
                 {"placement": "split gpu -> cpu", **skipped}]
        return {"gpu_backend": gpu.label, "rows": rows}
    try:
        rows += gpu_placements(variant, sample, cpu, gpu, repeats, warmup)
    except Exception as error:  # noqa: BLE001 - recorded, the rest of the benchmark goes on
        rows.append({"placement": "gpu", "error": f"{type(error).__name__}: {error}"})
    return {"gpu_backend": gpu.label, "rows": rows}


def gpu_placements(variant: VariantInfo, sample: torch.Tensor, cpu: Backend, gpu: Backend, repeats: int,
                   warmup: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    full_gpu = load_slice(variant, backend=gpu)
    rows.append({"placement": "gpu only", "units": [gpu.device],
                 **summary(time_ms(forward_runner(full_gpu, None, sample), repeats, warmup))})
    print(f"end to end     gpu only: {rows[-1]}")
    last = variant.block_count - 1
    for first_backend, second_backend, name in ((cpu, gpu, "split cpu -> gpu"), (gpu, cpu, "split gpu -> cpu")):
        for boundary in range(last):  # blocks [0, boundary] on the first unit, [boundary + 1, last] on the second
            head = load_slice(variant, 0, boundary, backend=first_backend)
            tail = load_slice(variant, boundary + 1, last, backend=second_backend)
            hidden = head.run(head.prepare(sample))
            copy = summary(time_ms(functools.partial(tail.prepare, hidden), repeats, warmup))
            timing = summary(time_ms(forward_runner(head, tail, sample), repeats, warmup))
            rows.append({"placement": name, "units": [first_backend.device, second_backend.device],
                         "first_unit_blocks": [0, boundary], "second_unit_blocks": [boundary + 1, last],
                         "boundary_bytes": activation_bytes(variant, boundary + 1, first_backend),
                         "copy_p50_ms": copy["p50_ms"], **timing})
            print(f"end to end     {name} at boundary {boundary + 1}: {rows[-1]}")
    return rows


def activation_bytes(variant: VariantInfo, boundary: int, backend: Backend) -> int:
    """Bytes of one sample's activation at ``boundary`` as ``backend`` holds it (the manifest counts float32)."""
    return variant.boundary_bytes(boundary) * torch.finfo(backend.torch_dtype).bits // 32


def final_logits(model: ModelSlice, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of the final exit over ``images``; the last chunk is padded to ``batch_size`` so fixed-shape
    backends (graphs, engines) run every chunk."""
    final = model.variant.exit_blocks[-1]
    outputs = []
    for chunk in images.split(batch_size):
        padded = torch.cat([chunk, chunk.new_zeros(batch_size - len(chunk), *chunk.shape[1:])]) \
            if len(chunk) < batch_size else chunk
        logits = model.to_host(model.exit_logits(final, model.run(model.prepare(padded))))
        outputs.append(logits[:len(chunk)])
    return torch.cat(outputs)


def accuracy(variants: list[VariantInfo], arguments: argparse.Namespace, infos: dict[str, Any]) -> list[dict]:
    batch = arguments.accuracy_batch
    backends = [Backend.cpu("bfloat16")] + [Backend.cuda(dtype=dtype) for dtype in ("float32", "float16", "bfloat16")]
    backends.append(Backend.tensorrt(dtype="float16", static_batch_size=batch))
    torch.set_num_threads(arguments.threads)
    rows = []
    for variant in variants:
        images, labels = held_out(tuple(variant.input_shape))
        reference = final_logits(load_slice(variant), images, batch)
        reference_accuracy = float((reference.argmax(-1) == labels).float().mean())
        rows.append({"variant": variant.name, "backend": Backend.cpu().label, "accuracy": round(reference_accuracy, 4),
                     "manifest_accuracy": variant.exits[-1].accuracy, "agreement_with_float32": 1.0,
                     "max_abs_logit_difference": 0.0})
        print(f"accuracy       {variant.name:<22} {rows[-1]['backend']:<40} {reference_accuracy:.4f}")
        for backend in backends:
            row: dict[str, Any] = {"variant": variant.name, "backend": backend.label}
            reason = unavailable_reason(backend, infos)
            if reason is not None:
                rows.append({**row, "skipped": reason})
                continue
            try:
                logits = final_logits(load_slice(variant, backend=backend), images, batch)
            except Exception as error:  # noqa: BLE001 - recorded per backend
                rows.append({**row, "error": f"{type(error).__name__}: {error}"})
                continue
            row.update(accuracy=round(float((logits.argmax(-1) == labels).float().mean()), 4),
                       agreement_with_float32=round(float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
                                                    4),
                       max_abs_logit_difference=round(float((logits - reference).abs().max()), 5))
            rows.append(row)
            print(f"accuracy       {variant.name:<22} {backend.label:<40} {row['accuracy']:.4f}")
    return rows


def machine(infos: dict[str, Any]) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if infos["cuda"].available else None
    torch_tensorrt = None
    if infos["tensorrt"].available:
        import torch_tensorrt as module

        torch_tensorrt = getattr(module, "__version__", "?")
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpu": gpu, "gpu_count": torch.cuda.device_count()
            if infos["cuda"].available else 0, "torch": torch.__version__, "cuda": torch.version.cuda,
            "torch_tensorrt": torch_tensorrt, "python": platform.python_version(), "platform": platform.platform(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2)}  # other work on the machine skews timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="the variant timed per block and end to end")
    parser.add_argument("--accuracy-variants", default="family",
                        help="comma-separated variants for accuracy, or 'family' (every variant of --variant's family)")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the CPU unit")
    parser.add_argument("--split-dtype", default="float16", help="precision of the GPU unit in the split")
    parser.add_argument("--accuracy-batch", type=int, default=60)
    parser.add_argument("--with-compile", action="store_true", help="also time torch.compile(reduce-overhead)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/accelerator.json, or accelerator-cpu.json without a GPU")
    arguments = parser.parse_args(argv)
    precision_name(arguments.split_dtype)
    started = time.perf_counter()
    manifest = read_manifest()
    variant = manifest.variant(arguments.variant)
    infos = {info.name: info for info in available_backends()}
    if arguments.accuracy_variants == "family":
        accuracy_variants = manifest.variants_of(variant.family)
    else:
        accuracy_variants = [manifest.variant(name.strip()) for name in arguments.accuracy_variants.split(",")]
    report: dict[str, Any] = {
        "machine": machine(infos),
        "backends": [{"name": info.name, "available": info.available, "reason": info.reason,
                      "devices": list(info.devices), "precisions": list(info.precisions), "detail": info.detail}
                     for info in infos.values()],
        "unavailable": {info.name: info.reason for info in infos.values() if not info.available},
        "units": [unit.describe() for unit in discover_units(threads_per_cpu_unit=arguments.threads)],
        "settings": {"variant": variant.name, "batch_sizes": arguments.batch_sizes, "repeats": arguments.repeats,
                     "warmup": arguments.warmup, "cpu_threads": arguments.threads, "split_dtype": arguments.split_dtype,
                     "accuracy_batch": arguments.accuracy_batch, "with_compile": arguments.with_compile,
                     "timing": "median (p50) of synchronised wall times after warm-up"},
    }
    for name, reason in report["unavailable"].items():
        print(f"unavailable    {name}: {reason}")
    batch_sizes = [int(size) for size in arguments.batch_sizes.split(",") if size.strip()]
    report["block_latency"] = block_latency(variant, batch_sizes, arguments, infos)
    report["end_to_end"] = end_to_end(variant, arguments, infos)
    report["accuracy"] = accuracy(accuracy_variants, arguments, infos)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = arguments.out or Path("benchmarks/results") / (
        "accelerator.json" if infos["cuda"].available else "accelerator-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
