"""The model slices this node hosts, their block profiles and online latency estimates.

A node hosts whole variants by default, or a block range per variant
(``--variants digits-resnet-w1:0-1``), so a weak device can hold only the first stages.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pinfer.errors import BadRequest, UnknownFamily, UnknownVariant
from p2pinfer.planning.latency_model import P90_SPREADS
from zoo.backend import Backend
from zoo.errors import UnknownVariantError
from zoo.manifest import Manifest, VariantInfo, read_manifest
from zoo.model_slice import ModelSlice, load_slice
from zoo.profiling import profile_variant

EWMA_WEIGHT = 0.2
BATCH_EFFICIENCY = 0.6  # a batch of n costs about 1 + 0.6 (n - 1) singles on CPU (measured roughly)
MIN_BATCH_EFFICIENCY = 0.02  # a measured efficiency is kept within [this, 1]


@dataclass(frozen=True)
class HostedRange:
    variant: str
    first_block: int
    last_block: int


def parse_hosted(spec: str, manifest: Manifest) -> list[HostedRange]:
    """``"all"``, or comma-separated ``variant`` / ``variant:first-last`` / ``family`` names."""
    ranges: list[HostedRange] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item == "all":
            ranges += [HostedRange(v.name, 0, v.block_count - 1) for v in manifest.variants.values()]
            continue
        name, _, block_range = item.partition(":")
        family_variants = manifest.variants_of(name)
        if family_variants and not block_range:
            ranges += [HostedRange(v.name, 0, v.block_count - 1) for v in family_variants]
            continue
        try:
            variant = manifest.variant(name)
        except UnknownVariantError as error:
            raise UnknownVariant(str(error)) from None
        first, last = 0, variant.block_count - 1
        if block_range:
            try:
                first_text, _, last_text = block_range.partition("-")
                first, last = int(first_text), int(last_text or first_text)
            except ValueError:
                raise BadRequest(f"bad block range {block_range!r} in {item!r}: use first-last") from None
        ranges.append(HostedRange(name, first, last))
    return ranges


class ModelHost:
    def __init__(self, zoo_dir: Path | str | None, hosted: str = "all", device: str = "cpu",
                 threads: int = 1, profile_repeats: int = 10, device_slowdown: float = 1.0,
                 backend: Backend | None = None) -> None:
        """``device_slowdown``: the emulated device is that many times slower than this host;
        block estimates are kept at the device's full (unthrottled) speed. ``backend``: what
        runs the blocks (default: the plain backend of ``device``, CPU eager for the CPU); the
        blocks are profiled on it."""
        self.manifest = read_manifest(zoo_dir)
        self.zoo_dir = zoo_dir
        self.device = device
        self.ranges = {r.variant: r for r in parse_hosted(hosted, self.manifest)}
        self.models: dict[str, ModelSlice] = {}
        self._family_variants: dict[str, VariantInfo] = {}  # require_family's answers
        self.block_ms: dict[str, list[float]] = {}
        self.block_spread_ms: dict[str, list[float]] = {}  # per block: EWMA of |sample - mean| (see tail_block_ms)
        self.host_block_ms: dict[str, list[float]] = {}  # the same on this host (no device slowdown)
        self.exit_ms: dict[str, dict[int, float]] = {}  # per variant: exit head ms (device speed)
        self.profiled_block_ms: dict[str, list[float]] = {}  # the offline profile's block ms (host, no heads)
        self.device_slowdown = device_slowdown
        self.referenced: set[str] = set()  # variants whose emulated speed is the manifest's reference x slowdown
        self.measured_at_warmup = False  # block_ms re-measured by the warm executor (runtime.warmup)
        self.batch_efficiency: dict[str, float] = {}  # per variant, measured at warm-up on a real unit
        self._lock = threading.Lock()
        for name, hosted_range in self.ranges.items():
            variant = self.manifest.variant(name)
            self.models[name] = load_slice(variant, hosted_range.first_block, hosted_range.last_block,
                                           zoo_dir=zoo_dir, device=device, backend=backend)
            reference = variant.reference_cpu
            if reference is not None and device == "cpu" and device_slowdown > 1.0:
                block_ms, exit_ms = list(reference.block_ms), dict(reference.exit_ms)
                self.referenced.add(name)
            else:
                profile = profile_variant(variant, zoo_dir=zoo_dir, device=device, threads=threads,
                                          repeats=profile_repeats, backend=backend)
                block_ms, exit_ms = list(profile.block_ms), dict(profile.exit_ms)
            self.host_block_ms[name] = list(block_ms)
            self.profiled_block_ms[name] = list(block_ms)
            self.exit_ms[name] = {block: ms * device_slowdown for block, ms in exit_ms.items()}
            for exit_block, head_ms in exit_ms.items():
                self.host_block_ms[name][exit_block] += head_ms  # heads run right after
            self.block_ms[name] = [ms * device_slowdown for ms in self.host_block_ms[name]]
            self.block_spread_ms[name] = [0.0] * len(self.block_ms[name])

    def set_measured(self, variant: str, block_real_ms: dict[int, float]) -> None:
        """Replace blocks' estimates with times measured on the warm unit (host speed, as
        run; scaled here to the emulated device's full speed, exit heads added as at load).

        An emulated device keeps the faster of the warm and the offline figure per block: on
        a shared host, nodes starting together measure each other's start-up (a block 1.8x
        its offline time at warm-up, x150 for `bench-slow`, made a whole run's device that
        much slower). Host noise only ever adds time, so the smaller figure is the better one.
        A variant with a reference profile (``referenced``) keeps it: the executor pads its
        blocks to reference x slowdown, and the warm run only says whether this host is too
        slow to emulate the device (then the real time is what a block takes)."""
        with self._lock:
            blocks = self.block_ms[variant]
            on_host = self.host_block_ms[variant]
            profiled = self.profiled_block_ms.get(variant, [])
            if variant in self.referenced:
                for block, real_ms in block_real_ms.items():
                    blocks[block] = max(blocks[block], real_ms)
                self.measured_at_warmup = True
                return
            for block, real_ms in block_real_ms.items():
                if self.device_slowdown > 1.0 and block < len(profiled) and profiled[block] > 0:
                    real_ms = min(real_ms, profiled[block])
                head_ms = self.exit_ms[variant].get(block, 0.0)
                blocks[block] = real_ms * self.device_slowdown + head_ms
                on_host[block] = real_ms + head_ms / max(self.device_slowdown, 1e-9)  # what padding scales
            self.measured_at_warmup = True

    def variant(self, name: str) -> VariantInfo:
        try:
            return self.manifest.variant(name)
        except UnknownVariantError as error:
            raise UnknownVariant(str(error)) from None

    def families(self) -> list[str]:
        return sorted({self.manifest.variant(name).family for name in self.ranges})

    def hosted_variants(self, family: str | None = None) -> list[VariantInfo]:
        variants = [self.manifest.variant(name) for name in self.ranges]
        return [v for v in variants if family is None or v.family == family]

    def require_family(self, family: str) -> VariantInfo:
        """The first hosted variant of ``family`` (what its inputs are checked against), or
        ``UnknownFamily``; looked up once per family (the hosted ranges are fixed at start)."""
        known_variant = self._family_variants.get(family)
        if known_variant is not None:
            return known_variant
        variants = self.hosted_variants(family)
        if not variants:
            known = sorted({v.family for v in self.manifest.variants.values()})
            raise UnknownFamily(f"unknown family {family!r}; this cluster knows {known}")
        self._family_variants[family] = variants[0]  # only hosted families: bounded
        return variants[0]

    def hosts(self, variant: str, first: int, last: int) -> bool:
        hosted = self.ranges.get(variant)
        return hosted is not None and hosted.first_block <= first <= last <= hosted.last_block

    def predict_seconds(self, variant: str, first: int, last: int, batch_size: int = 1, *,
                        tail: bool = False) -> float:
        """Predicted compute for blocks [first, last] (EWMA of measured times, seeded by the
        profile); ``tail``: their p90 instead of their mean (``tail_block_ms``)."""
        blocks = self.tail_block_ms(variant) if tail else self.block_ms.get(variant)
        if not blocks:
            return 0.0
        return sum(blocks[first:last + 1]) / 1000 * self.batch_singles(variant, batch_size)

    def predict_block_seconds(self, variant: str, first: int, last: int, batch_size: int = 1) -> list[float]:
        """``predict_seconds`` of each block of [first, last] (the executor reads them once a run)."""
        blocks = self.block_ms.get(variant)
        if not blocks:
            return [0.0] * (last - first + 1)
        scale = self.batch_singles(variant, batch_size) / 1000
        seconds = [ms * scale for ms in blocks[first:last + 1]]
        return seconds + [0.0] * (last - first + 1 - len(seconds))  # blocks beyond the profile: 0, as predict_seconds

    def batch_singles(self, variant: str, batch_size: int) -> float:
        """What a batch of ``batch_size`` costs in single runs: 1 + ``efficiency`` per extra sample."""
        return 1.0 if batch_size == 1 else 1 + self.efficiency(variant) * (batch_size - 1)

    def efficiency(self, variant: str) -> float:
        """What each sample beyond the first adds to a batch of ``variant``, in singles: measured
        at warm-up on a real unit, else ``BATCH_EFFICIENCY`` (what an emulated device's batches
        are padded to)."""
        return self.batch_efficiency.get(variant, BATCH_EFFICIENCY)

    def set_batch_efficiency(self, variant: str, batch_size: int, single_ms: float, batch_ms: float) -> float | None:
        """Measure ``efficiency`` from a warm batch-1 and batch-``batch_size`` run of the hosted
        range (ms). Only on a real unit: an emulated device's batches are padded to the constant,
        which its predictions must keep. Why: 0.6 was a rough eager-CPU figure; digits-cnn-w1 on
        ONNX Runtime runs 8 samples in 1.6 singles (0.08), eager in 2.1-2.9 (0.16-0.27). At 0.6, a
        node that batches believes its single runs 3x faster than they are (a batch's time is
        folded into the single-job estimate by dividing by 1 + 0.6 (n - 1))."""
        if self.device_slowdown > 1.0 or batch_size <= 1 or not (single_ms > 0 and math.isfinite(batch_ms)):
            return None
        measured = (batch_ms / single_ms - 1) / (batch_size - 1)
        efficiency = min(max(measured, MIN_BATCH_EFFICIENCY), 1.0)
        with self._lock:
            self.batch_efficiency[variant] = efficiency
        return efficiency

    def tail_block_ms(self, variant: str) -> list[float]:
        """Each block's p90 (mean + ``P90_SPREADS`` spreads), the figure the planner's mask and
        the executor's admission price this node's blocks at: the time a block takes nine
        times in ten, so that an arm admitted on it is not late one time in two. The spreads
        are summed over a segment's blocks as if their deviations went together (a busy
        host slows every block of a run), which errs on the safe side."""
        blocks = self.block_ms.get(variant)
        if blocks is None:
            return []
        spreads = self.block_spread_ms.get(variant, [])
        return [ms + P90_SPREADS * (spreads[block] if block < len(spreads) else 0.0)
                for block, ms in enumerate(blocks)]

    def observe(self, variant: str, block: int, seconds: float, batch_size: int) -> None:
        """Fold a measured block time (at the device's unthrottled speed) into the estimate
        and its spread."""
        self.observe_blocks(variant, block, [seconds], batch_size)

    def observe_blocks(self, variant: str, first: int, seconds: Sequence[float], batch_size: int) -> None:
        """``observe`` for each block of a run from ``first`` on: one lock and one batch
        conversion per run, not per block."""
        singles = self.batch_singles(variant, batch_size)
        with self._lock:
            blocks = self.block_ms[variant]
            spreads = self.block_spread_ms[variant]
            for block, taken in enumerate(seconds, start=first):
                single_ms = taken * 1000 / singles
                if not (math.isfinite(single_ms) and single_ms >= 0):
                    continue
                spreads[block] += EWMA_WEIGHT * (abs(single_ms - blocks[block]) - spreads[block])
                blocks[block] = (1 - EWMA_WEIGHT) * blocks[block] + EWMA_WEIGHT * single_ms

    def mean_job_ms(self) -> float:
        totals = [sum(blocks) for blocks in self.block_ms.values()]
        return sum(totals) / len(totals) if totals else 0.0
