"""Import a classifier (an ONNX file, or a ``package.module:factory`` returning a torch module)
into a zoo directory, cut into K blocks where exactly one tensor is live.

Pipeline: frontend (``zoo.onnx_conversion`` or the factory) -> ``zoo.tracing`` (torch.export
with a dynamic batch, lowered to whitelisted ATen ops, measured on one sample) ->
``zoo.cutting`` (candidate cuts, FLOP-balanced partition) -> files: ``graphs/{variant}.json``
(``zoo.graph``: ops as data, loaded without pickle), ``weights/{variant}.safetensors``
(float32, keys ``blocks.{k}.weights.{name}``), and a manifest entry with both digests.
Before the manifest is written the stored variant is loaded back with ``load_slice`` and
must match the source model within ``TOLERANCE``.

CLI: ``python -m zoo.importing SOURCE --name FAMILY --zoo DIR [--blocks K] [--input-shape 3,224,224]``
(also ``add_import_arguments(parser)`` + ``run_import(args)`` for a host CLI).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import torch
from safetensors.torch import save_file
from torch import nn

from zoo.cutting import candidate_cuts, choose_partition, partition
from zoo.errors import ImportSourceError, ManifestError, NoSingleTensorCutError, ZooError
from zoo.graph import GRAPH_FORMAT, GraphFile, write_graph
from zoo.import_arguments import DEFAULT_BLOCKS, add_import_arguments
from zoo.manifest import (
    MANIFEST_VERSION,
    BlockInfo,
    ExitInfo,
    HeldOutInfo,
    Manifest,
    VariantInfo,
    read_manifest,
    write_manifest,
)
from zoo.model_slice import load_slice
from zoo.tracing import trace
from zoo.weights import file_sha256

TOLERANCE = 1e-4
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_module(module: nn.Module, example_input: torch.Tensor, *, name: str, zoo_dir: Path | str,
                  blocks: int | None = None, source: str | None = None, variant: str | None = None,
                  accuracy: float = 0.0) -> VariantInfo:
    """Import ``module`` (run on ``example_input``, dim 0 the batch) as family ``name`` into ``zoo_dir``.

    ``blocks`` defaults to ``DEFAULT_BLOCKS``, or cuts + 1 when the model has fewer single-tensor
    cuts (the returned ``block_count`` says so; the CLI prints why). A model with no cut at all
    raises ``NoSingleTensorCutError`` unless ``blocks=1`` is asked for: importing it silently as one
    block would hide that it can never be split. Asking for more blocks than cuts + 1 raises it too.
    ``accuracy`` is recorded for the only exit (the logits); 0.0 means not measured (`p2pinfer zoo
    exits`, ``zoo.imported_exits``, measures it and adds early exits).
    Returns the manifest entry, already written.
    """
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise ImportSourceError(f"family name {name!r}: use letters, digits, '.', '_' and '-'")
    variant = variant or name
    zoo_dir = Path(zoo_dir)
    module = module.eval()
    traced = trace(module, example_input)
    cuts = candidate_cuts(traced)
    if blocks is None:
        if not cuts:
            raise NoSingleTensorCutError(
                "the model has no point where exactly one tensor is live (branches stay live across the whole "
                "graph), so it cannot be split into blocks; import it as one block with --blocks 1 (blocks=1)")
        blocks = min(DEFAULT_BLOCKS, len(cuts) + 1)
    chosen = choose_partition(traced, cuts, blocks)
    parts = partition(traced, chosen)
    source = source or f"module:{type(module).__module__}.{type(module).__qualname__}"

    graph_path = Path("graphs") / f"{variant}.json"
    weights_path = Path("weights") / f"{variant}.safetensors"
    write_graph(GraphFile(format=GRAPH_FORMAT, source=source, blocks=[part.graph for part in parts],
                          candidate_cuts=cuts), zoo_dir / graph_path)
    tensors = {f"blocks.{index}.weights.{key}": value.to(torch.float32) if value.is_floating_point() else value
               for index, part in enumerate(parts) for key, value in part.weights.items()}
    (zoo_dir / weights_path).parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(zoo_dir / weights_path),
              metadata={"format": "p2pinfer-zoo-v1"})

    block_infos = [BlockInfo(index=index, params=part.params, flops=part.flops, input_shape=list(part.input_shape),
                             output_shape=list(part.output_shape), output_bytes=part.output_bytes)
                   for index, part in enumerate(parts)]
    info = VariantInfo(
        name=variant, family=name, family_module="zoo.graph", compression="none", width=1.0, config={},
        input_shape=list(traced.input_shape), input_bytes=int(torch.Size(traced.input_shape).numel()) * 4,
        dtype="float32", blocks=block_infos,
        exits=[ExitInfo(block=len(parts) - 1, params=0, flops=0, accuracy=accuracy)],
        weights_file=weights_path.as_posix(), sha256=file_sha256(zoo_dir / weights_path),
        weights_bytes=(zoo_dir / weights_path).stat().st_size, params_total=sum(part.params for part in parts),
        flops_total=sum(part.flops for part in parts), graph_file=graph_path.as_posix(),
        graph_sha256=file_sha256(zoo_dir / graph_path), source=source,
        num_classes=int(block_infos[-1].output_shape[-1]))
    info = msgspec.structs.replace(info, block_cpu_ms=_check_and_profile(module, example_input, info, zoo_dir))
    _add_variant(zoo_dir, info, f"imported from {source}")
    return info


@torch.no_grad()
def _check_and_profile(module: nn.Module, example: torch.Tensor, info: VariantInfo, zoo_dir: Path) -> list[float]:
    """Load the stored variant back, compare with the source model, and time each block (batch 1)."""
    stored = load_slice(info, zoo_dir=zoo_dir)
    expected = module(example)
    actual = stored.run(example)
    error = float((expected - actual).abs().max())
    if not error <= TOLERANCE:
        raise ImportSourceError(f"the stored graph differs from the source model by {error:.3g} (> {TOLERANCE})")
    timings: list[float] = []
    hidden = example[:1]
    for index in range(info.block_count):
        runs = []
        for _ in range(4):
            start = time.perf_counter()
            output = stored.run_block(index, hidden)
            runs.append((time.perf_counter() - start) * 1000)
        timings.append(round(statistics.median(runs[1:]), 3))
        hidden = output
    return timings


def _add_variant(zoo_dir: Path, info: VariantInfo, description: str) -> None:
    """Merge one variant into ``zoo_dir``'s manifest (created when absent; its held-out split kept)."""
    try:
        manifest = read_manifest(zoo_dir)
    except ManifestError:
        manifest = Manifest(version=MANIFEST_VERSION, variants={}, held_out=HeldOutInfo(seed=0, fraction=0.0, size=0))
    manifest.variants[info.name] = info
    manifest.families[info.family] = description
    write_manifest(manifest, zoo_dir)


def _factory_module(spec: str) -> nn.Module:
    module_name, _, attribute_path = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for attribute in attribute_path.split("."):
            target = getattr(target, attribute)
    except (ImportError, AttributeError) as error:
        raise ImportSourceError(f"cannot find factory {spec!r}: {error}") from None
    if not callable(target):
        raise ImportSourceError(f"{spec!r} is not callable")
    built = target()
    if not isinstance(built, nn.Module):
        raise ImportSourceError(f"{spec!r} returned {type(built).__name__}, not a torch.nn.Module")
    return built


def import_source(source: str | Path, name: str, zoo_dir: Path | str, blocks: int | None = None,
                  input_shape: Sequence[int] | None = None, variant: str | None = None) -> VariantInfo:
    """Import an ONNX file or a ``package.module:factory`` (``input_shape`` is one sample's, no batch)."""
    text = str(source)
    shape = tuple(int(dim) for dim in input_shape) if input_shape is not None else None
    if text.endswith(".onnx") or Path(text).is_file():
        from zoo.onnx_conversion import example_input, load_onnx

        path = Path(text)
        if not path.is_file():
            raise ImportSourceError(f"no ONNX file at {path}")
        module = load_onnx(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return import_module(module, example_input(module, shape), name=name, zoo_dir=zoo_dir, blocks=blocks,
                             source=f"onnx:{path.name} sha256={digest}", variant=variant)
    if _FACTORY.match(text):
        if shape is None:
            raise ImportSourceError("a module:factory source needs --input-shape (one sample, e.g. 3,224,224)")
        return import_module(_factory_module(text), torch.randn(2, *shape), name=name, zoo_dir=zoo_dir,
                             blocks=blocks, source=f"module:{text}", variant=variant)
    raise ImportSourceError(f"source {text!r} is neither an .onnx file nor package.module:factory")


def run_import(args: argparse.Namespace) -> int:
    """Run an import from parsed arguments; prints the partition. Returns a process exit status."""
    try:
        info = import_source(args.source, args.name, args.zoo, blocks=args.blocks, input_shape=args.input_shape,
                             variant=args.variant)
    except ZooError as error:
        print(f"import failed: {error}", file=sys.stderr)
        return 2
    if args.blocks is None and info.block_count < DEFAULT_BLOCKS:
        # the default takes min(DEFAULT_BLOCKS, cuts + 1): fewer blocks means the model has block_count - 1 cuts
        print(f"note: {info.block_count} blocks, not the default {DEFAULT_BLOCKS}: the model has only "
              f"{info.block_count - 1} point(s) where exactly one tensor is live", file=sys.stderr)
    print(f"imported {info.name} ({info.source}) into {args.zoo}: {info.params_total:,} params, "
          f"{info.flops_total / 1e6:.1f} MFLOPs, {info.block_count} blocks")
    for block, milliseconds in zip(info.blocks, info.block_cpu_ms or [0.0] * info.block_count, strict=True):
        print(f"  block {block.index}: {block.input_shape} -> {block.output_shape} ({block.output_bytes:,} B out), "
              f"{block.flops / 1e6:.1f} MFLOPs, {block.params:,} params, {milliseconds:.2f} ms")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.importing", description=__doc__.splitlines()[0])
    return run_import(add_import_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
