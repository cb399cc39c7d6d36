"""Per-block latency profiles: median over repeated runs after warm-up, cached per device.

The planner's compute predictions start from these numbers (then learn online). The cache
key holds everything that changes the answer: variant digest, backend (with its device,
dtype and options such as CUDA graphs), threads, batch size, torch version, the CPU model
and the GPU's name, so a profile is never reused on hardware it was not measured on.
Accelerator timings synchronise the device before reading the clock: CUDA kernels run
asynchronously, and an unsynchronised timer measures only the launch.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
import time
from pathlib import Path

import msgspec
import torch

from zoo.backend import Backend
from zoo.cache import cache_dir
from zoo.manifest import VariantInfo
from zoo.model_slice import ModelSlice, load_slice


class VariantProfile(msgspec.Struct, frozen=True):
    variant: str
    device: str
    dtype: str
    threads: int
    batch_size: int
    block_ms: list[float]  # median per block
    exit_ms: dict[int, float]  # median per exit head
    repeats: int
    backend: str = "cpu-eager@cpu/float32"  # Backend.label: which backend (and unit's device) ran the blocks

    def range_ms(self, first: int, last: int) -> float:
        return sum(self.block_ms[first:last + 1])


def cpu_model() -> str:
    """This machine's CPU model name (part of every cache key, and of compute units' descriptions)."""
    return _cpu_model()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _accelerator_model(device: str) -> str:
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch_device)
    return ""


def cache_key(variant: VariantInfo, device: str, dtype: torch.dtype, threads: int, batch_size: int,
              backend: Backend | None = None) -> str:
    """The profile cache's key; ``backend`` (default: the plain backend of ``device``) is part of it."""
    label = backend.label if backend is not None else _plain_label(device, dtype)
    text = "|".join([variant.name, variant.sha256, device, str(dtype), str(threads), str(batch_size),
                     torch.__version__, _cpu_model(), label, _accelerator_model(device)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain_label(device: str | torch.device, dtype: torch.dtype) -> str:
    try:
        return Backend.for_device(device, dtype).label
    except ValueError:
        return f"{device}/{dtype}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: ModelSlice, threads: int = 1, repeats: int = 20, warmup: int = 3,
            batch_size: int = 1) -> VariantProfile:
    """Time every loaded block and exit head on this machine (no cache)."""
    backend_label = model.backend.label if model.backend is not None else _plain_label(model.device, model.dtype)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shape = [batch_size, *model.variant.input_shape]
        hidden = model.prepare(torch.rand(shape))
        if model.first_block > 0:
            hidden = model.prepare(torch.rand([batch_size, *model.variant.blocks[model.first_block].input_shape]))
        block_ms: list[float] = []
        exit_ms: dict[int, float] = {}
        for index in range(model.first_block, model.last_block + 1):
            samples = []
            for attempt in range(warmup + repeats):
                _synchronize(model.device)
                started = time.perf_counter()
                output = model.run_block(index, hidden)
                _synchronize(model.device)
                if attempt >= warmup:
                    samples.append((time.perf_counter() - started) * 1000)
            block_ms.append(statistics.median(samples))
            if index in model.heads:
                samples = []
                for attempt in range(warmup + repeats):
                    _synchronize(model.device)
                    started = time.perf_counter()
                    model.exit_logits(index, output)
                    _synchronize(model.device)
                    if attempt >= warmup:
                        samples.append((time.perf_counter() - started) * 1000)
                exit_ms[index] = statistics.median(samples)
            hidden = output
    finally:
        torch.set_num_threads(previous_threads)
    return VariantProfile(variant=model.variant.name, device=str(model.device), dtype=str(model.dtype).replace(
        "torch.", ""), threads=threads, batch_size=batch_size, block_ms=[round(v, 4) for v in block_ms],
        exit_ms={k: round(v, 4) for k, v in exit_ms.items()}, repeats=repeats, backend=backend_label)


def profile_variant(variant: VariantInfo, zoo_dir: Path | str | None = None, device: str = "cpu",
                    dtype: torch.dtype = torch.float32, threads: int = 1, repeats: int = 20,
                    batch_size: int = 1, use_cache: bool = True, backend: Backend | None = None) -> VariantProfile:
    """The variant's per-block profile on this device, measured once and then read from cache.

    With ``backend``, the blocks run (and are cached) on that backend; ``device``/``dtype``
    then follow it. Without, the plain backend of ``device``/``dtype`` (CPU eager by default).
    """
    if backend is not None:
        device, dtype = backend.device, backend.torch_dtype
    key = cache_key(variant, device, dtype, threads, batch_size, backend)
    path = cache_dir() / "profiles" / f"{key}.json"
    if use_cache and path.exists():
        try:
            return msgspec.json.decode(path.read_bytes(), type=VariantProfile)
        except msgspec.DecodeError:
            pass  # a corrupt cache entry is simply measured again
    model = load_slice(variant, zoo_dir=zoo_dir, device=device, dtype=dtype, backend=backend)
    profile = measure(model, threads=threads, repeats=repeats, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(profile))
    return profile
