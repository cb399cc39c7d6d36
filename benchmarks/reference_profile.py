"""Measure every shipped variant's reference CPU profile and keep it in the zoo's manifests.

An emulated device's speed is defined as ``slowdown x`` these figures (``zoo.manifest.
ReferenceProfile``), so that an emulated Raspberry Pi is the same Pi in every run, whatever the
shared host was doing when its node started. Run it once on an idle host:

    python -m benchmarks.reference_profile [--rounds 3] [--repeats 1000]

Each round times every block and exit head (batch 1, one thread, float32 eager) ``--repeats``
times after a warm-up and takes the median; the figure kept is the fastest round's median (host
noise only ever adds time). The report (``benchmarks/results/reference_profile.json``) gives every
round's medians and the host's CPU use during the run, so a busy host is visible.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import torch

from benchmarks.manifest_measurement import measure_into_manifests
from zoo.manifest import ReferenceProfile, VariantInfo
from zoo.model_slice import load_slice
from zoo.profiling import cpu_model, measure

RESULTS = Path(__file__).resolve().parent / "results" / "reference_profile.json"


def reference_of(variant: VariantInfo, zoo_dir: Path, rounds: int, repeats: int) -> tuple[VariantInfo, object]:
    """The variant with its ``reference_cpu`` set, and the report entry of its rounds."""
    model = load_slice(variant, zoo_dir=zoo_dir, device="cpu")
    started = time.monotonic()
    host_before, own_before = psutil.cpu_times(), psutil.Process().cpu_times()
    profiles = [measure(model, threads=1, repeats=repeats, warmup=max(10, repeats // 10)) for _ in range(rounds)]
    elapsed = time.monotonic() - started
    block_ms = [round(min(profile.block_ms[block] for profile in profiles), 4) for block in range(variant.block_count)]
    exit_ms = {block: round(min(profile.exit_ms[block] for profile in profiles), 4) for block in profiles[0].exit_ms}
    reference = ReferenceProfile(block_ms=block_ms, exit_ms=exit_ms, cpu=cpu_model(), torch=str(torch.__version__),
                                 repeats=repeats)
    entry = {"block_ms": block_ms, "exit_ms": exit_ms,
             "rounds": [{"block_ms": profile.block_ms, "exit_ms": profile.exit_ms} for profile in profiles],
             "seconds": round(elapsed, 2), "cpu": _cpu_use(host_before, own_before, elapsed)}
    print(f"{variant.name:28s} blocks {block_ms} ms, exits {exit_ms} (cpu {entry['cpu']})", flush=True)
    return msgspec.structs.replace(variant, reference_cpu=reference), entry


def _cpu_use(host_before: Any, own_before: Any, elapsed_s: float) -> dict[str, float]:
    """Cores busy on the whole host and in this process over the measurement (of ``cpu_count``):
    the host minus this process is what other work took from the reference."""
    host_after, own_after = psutil.cpu_times(), psutil.Process().cpu_times()
    idle = sum(getattr(host_after, field, 0.0) - getattr(host_before, field, 0.0) for field in ("idle", "iowait"))
    total = sum(host_after) - sum(host_before)
    cores = psutil.cpu_count() or 1
    own = (own_after.user + own_after.system - own_before.user - own_before.system) / max(elapsed_s, 1e-9)
    return {"host_cores_busy": round(cores * (1 - idle / total), 3) if total > 0 else 0.0,
            "own_cores_busy": round(own, 3), "cpu_count": cores}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="variant names (default: every variant of both shipped zoos)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    measure_into_manifests(None, arguments.only,
                           lambda variant, zoo_dir: reference_of(variant, zoo_dir, arguments.rounds,
                                                                 arguments.repeats),
                           arguments.out)


if __name__ == "__main__":
    main()
