"""The zoo manifest (``zoo/manifest.json``): typed with msgspec, validated on load.

Shapes and byte counts are per sample (no batch dimension), float32 unless ``dtype`` says
otherwise. Boundary *k* is the tensor entering block *k* (boundary 0 is the input); block
*k*'s ``output_shape``/``output_bytes`` describe boundary *k + 1*.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec

from zoo.errors import ManifestError, UnknownVariantError, ZooError

MANIFEST_VERSION = 1
DEFAULT_ZOO_DIR = Path(__file__).resolve().parent
PRETRAINED_ZOO_DIR = DEFAULT_ZOO_DIR / "pretrained"  # real pretrained families: their own manifest and weights


class BlockInfo(msgspec.Struct, frozen=True):
    index: int
    params: int
    flops: int
    input_shape: list[int]
    output_shape: list[int]
    output_bytes: int


class ExitCalibration(msgspec.Struct, frozen=True):
    """How often this exit is right given its confidence (max softmax), measured on ``images``
    held-out images: per confidence bin (equal-count bins, sorted by confidence) the bin's mean
    confidence and its accuracy, made non-decreasing (isotonic). Written by
    ``benchmarks.calibration``; the node's QoE reward reads the accuracy term from it."""

    confidence: list[float]
    accuracy: list[float]
    images: int


class ExitHeadSpec(msgspec.Struct, frozen=True):
    """How a node rebuilds a trained exit head of an imported variant (``zoo.exit_heads``),
    as data: imported families have no Python code to build heads from, and nothing loaded
    from a zoo directory may be unpickled. Its weights are the variant's ``heads.{block}.*``.

    ``kind`` "pool-conv-linear": (C, H, W) features pooled to ``pool`` x ``pool``, a 1x1
    conv-BN-hardswish to ``channels``, a linear layer (the text-orientation family's exit
    design); "linear": (F,) features, one linear layer."""

    kind: str
    in_channels: int
    num_classes: int
    pool: int = 1
    channels: int = 0


class ExitInfo(msgspec.Struct, frozen=True):
    block: int
    params: int
    flops: int
    accuracy: float  # on the held-out split, in [0, 1]
    calibration: ExitCalibration | None = None  # None in manifests written before calibration
    head: ExitHeadSpec | None = None  # imported variants' trained heads; None: the family code builds it


class CodecAccuracy(msgspec.Struct, frozen=True):
    """Top-1 accuracy change at the final exit when boundary ``boundary`` (0 = the input) is
    sent through ``codec`` (a boundary codec name, e.g. "uint8-channel"), measured on
    ``images`` held-out images; negative = worse. Written by ``benchmarks.codec_accuracy``."""

    boundary: int
    codec: str
    accuracy_change: float
    images: int


class ReferenceProfile(msgspec.Struct, frozen=True):
    """Each block's and exit head's time (ms, batch 1, one thread, float32 eager, median) on one
    reference CPU, measured on an idle host by ``benchmarks.reference_profile``.

    An emulated device (``--profile rpi4``) is defined against this, not against the host it
    happens to run on: its block takes ``slowdown x`` the reference, whatever the host measured
    at start-up. Profiles measured at each start on a shared host differed by a third from run
    to run (an emulated Pi took 44 ms for a variant in one seed and 60 ms in the next), so a
    benchmark's devices were not the same devices twice."""

    block_ms: list[float]
    exit_ms: dict[int, float]
    cpu: str  # the reference machine's CPU model
    torch: str  # torch version it was measured with
    repeats: int  # timed runs per block and per round; the figure is the fastest round's median

    def __post_init__(self) -> None:
        times = [*self.block_ms, *self.exit_ms.values()]
        if not all(math.isfinite(ms) and ms > 0 for ms in times):
            raise ValueError(f"reference times must be finite and > 0 ms, got {times}")


class VariantInfo(msgspec.Struct, frozen=True):
    name: str
    family: str
    family_module: str
    compression: str  # "none" | "structured-pruning"
    width: float
    config: dict[str, Any]
    input_shape: list[int]
    input_bytes: int
    dtype: str
    blocks: list[BlockInfo]
    exits: list[ExitInfo]
    weights_file: str
    sha256: str
    weights_bytes: int
    params_total: int
    flops_total: int
    training: dict[str, Any] = msgspec.field(default_factory=dict)
    # imported variants (zoo.importing): blocks are a graph file (zoo.graph), not family code
    graph_file: str = ""
    graph_sha256: str = ""
    source: str = ""  # what was imported: "onnx:NAME sha256=…" or "module:package.module:factory"
    block_cpu_ms: list[float] = msgspec.field(default_factory=list)  # measured at import, batch 1
    num_classes: int = 0  # logits per sample; 0 in manifests written before this field (the family code says)
    # real pretrained families; the defaults describe the digits variants
    storage_dtype: str = "float16"  # how the weights file stores floating tensors
    precision: str = "float32"  # what the blocks compute in: "float32" | "int8" (quantised at load)
    preprocessing: dict[str, Any] = msgspec.field(default_factory=dict)  # image → input tensor, when not the identity
    provenance: dict[str, Any] = msgspec.field(default_factory=dict)  # where pretrained weights came from, license
    codec_accuracy: list[CodecAccuracy] = msgspec.field(default_factory=list)  # per cut and codec; [] = unmeasured
    reference_cpu: ReferenceProfile | None = None  # what emulated devices' speeds are defined against

    def __post_init__(self) -> None:
        reference = self.reference_cpu
        if reference is not None and (len(reference.block_ms) != len(self.blocks)
                                      or not set(reference.exit_ms) <= set(self.exit_blocks)):
            raise ValueError(f"variant {self.name!r}: its reference_cpu times {len(reference.block_ms)} blocks and "
                             f"exits {sorted(reference.exit_ms)}; the variant has {len(self.blocks)} blocks and "
                             f"exits {self.exit_blocks}")

    @property
    def block_count(self) -> int:
        return len(self.blocks)

    @property
    def exit_blocks(self) -> list[int]:
        return [exit_info.block for exit_info in self.exits]

    def exit_accuracy(self, block: int) -> float:
        for exit_info in self.exits:
            if exit_info.block == block:
                return exit_info.accuracy
        raise ManifestError(f"variant {self.name!r} has no exit after block {block}")

    def codec_accuracy_change(self, boundary: int, codec: str) -> float | None:
        """The recorded accuracy change of sending ``boundary`` as ``codec`` (compression
        on top changes nothing), or None when it was not measured."""
        base = codec.partition("+")[0]
        if base == "float32":
            return 0.0
        for entry in self.codec_accuracy:
            if entry.boundary == boundary and entry.codec == base:
                return entry.accuracy_change
        return None

    def boundary_bytes(self, boundary: int) -> int:
        """Bytes of one sample's tensor entering block ``boundary`` (0 = the input)."""
        return self.input_bytes if boundary == 0 else self.blocks[boundary - 1].output_bytes


class HeldOutInfo(msgspec.Struct, frozen=True):
    seed: int
    fraction: float
    size: int


class Manifest(msgspec.Struct):
    version: int
    variants: dict[str, VariantInfo]
    held_out: HeldOutInfo
    families: dict[str, str] = msgspec.field(default_factory=dict)  # name -> description

    def variant(self, name: str) -> VariantInfo:
        try:
            return self.variants[name]
        except KeyError:
            raise UnknownVariantError(
                f"unknown variant {name!r}; known: {sorted(self.variants)}{self._pretrained_hint(name)}") from None

    def variants_of(self, family: str) -> list[VariantInfo]:
        return [info for info in self.variants.values() if info.family == family]

    def _pretrained_hint(self, name: str) -> str:
        """`` (... add --zoo zoo/pretrained)`` when ``name`` is a variant or family of the shipped
        pretrained zoo that this zoo does not hold: asked of the embedded zoo (no ``--zoo``), the
        list of known variants names only the digits."""
        try:
            pretrained = read_manifest(PRETRAINED_ZOO_DIR)
        except ZooError:
            return ""
        family = pretrained.variants[name].family if name in pretrained.variants else name
        if pretrained.variants_of(family) and not self.variants_of(family):
            return f" (it is in the pretrained zoo: add --zoo {PRETRAINED_ZOO_DIR})"
        return ""


def manifest_path(zoo_dir: Path | str | None = None) -> Path:
    return Path(zoo_dir or DEFAULT_ZOO_DIR) / "manifest.json"


def read_manifest(zoo_dir: Path | str | None = None) -> Manifest:
    path = manifest_path(zoo_dir)
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except FileNotFoundError:
        how = ("run `python -m zoo.train`" if path.parent == DEFAULT_ZOO_DIR else
               "a zoo directory holds one (`p2pinfer zoo import SOURCE --name FAMILY --zoo DIR` writes it)")
        raise ManifestError(f"no manifest at {path}: {how}") from None
    except msgspec.ValidationError as error:
        raise ManifestError(f"malformed manifest {path}: {error}") from None
    if manifest.version != MANIFEST_VERSION:
        raise ManifestError(f"manifest {path} has version {manifest.version}, expected {MANIFEST_VERSION}")
    return manifest


def write_manifest(manifest: Manifest, zoo_dir: Path | str | None = None) -> Path:
    path = manifest_path(zoo_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    return path
