"""Early exits for an imported family: ``p2pinfer zoo exits FAMILY --zoo DIR --data DATA``.

An imported variant has one exit, its logits. This trains small exit heads on its frozen
backbone, BranchyNet-style, with the text-orientation family's head design and training
loop (``zoo.exit_heads``): one backbone pass over the training split caches each chosen
block's pooled output, a head per block is fitted on those (fixed seed, bounded epochs),
then every exit (the final logits included) is measured on the held-out split.

DATA is a directory with ``train.npz`` and ``held_out.npz``, each holding ``inputs``
(floating point, N x the variant's input shape) and ``labels`` (integers in
[0, num_classes), N). They are read with ``allow_pickle=False``: an object array or a
pickled file is refused, never unpickled.

What is written: the heads as ``heads.{block}.*`` float32 tensors in the variant's
safetensors file (the blocks' tensors copied unchanged), and in the manifest an ``ExitInfo``
per exit (params, FLOPs, held-out accuracy, and for a trained head its ``ExitHeadSpec``,
from which a node rebuilds it: integers, no pickle), the new sha256 and size of the weights,
and the training settings under ``training["exits"]``. The graph file is not touched. A
re-run replaces every early head (idempotent: the same data, blocks and seed write the same
bytes). Before the manifest is written the stored heads are loaded back with ``load_slice``
and must give the trained heads' logits within ``TOLERANCE``.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from zoo.accounting import flop_count, parameter_count
from zoo.errors import ExitDataError, ExitTrainingError, UnknownVariantError, ZooError
from zoo.exit_heads import build_exit_head, exit_head_spec, fit, head_input
from zoo.export import exit_accuracies
from zoo.family import class_count
from zoo.import_arguments import DEFAULT_EXIT_EPOCHS, DEFAULT_EXIT_SEED, add_exits_arguments
from zoo.manifest import ExitHeadSpec, ExitInfo, VariantInfo, read_manifest, write_manifest
from zoo.model_slice import ModelSlice, load_slice
from zoo.weights import file_sha256, verify_weights

TRAINING_FILE = "train.npz"
HELD_OUT_FILE = "held_out.npz"
TOLERANCE = 1e-5
BATCH_SIZE = 64


@dataclass(frozen=True)
class ExitData:
    """One split, validated against the variant: float32 inputs, int64 labels."""

    inputs: torch.Tensor
    labels: torch.Tensor
    path: Path
    sha256: str


@dataclass(frozen=True)
class TrainedExits:
    """What ``train_exits`` wrote: the manifest entry, and the trained early heads (eval mode,
    float32) whose logits a node loading the variant reproduces."""

    variant: VariantInfo
    heads: dict[int, nn.Module]


def load_exit_data(path: Path, input_shape: Sequence[int], num_classes: int) -> ExitData:
    """Read and validate one ``.npz`` split; every problem is one ``ExitDataError`` line naming the file."""
    if not path.is_file():
        raise ExitDataError(f"{path}: missing (the data directory holds {TRAINING_FILE} and {HELD_OUT_FILE})")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ExitDataError(f"{path}: one array, not an .npz archive with 'inputs' and 'labels'")
        with loaded as archive:
            missing = [name for name in ("inputs", "labels") if name not in archive.files]
            if missing:
                raise ExitDataError(f"{path}: no array {' or '.join(map(repr, missing))} "
                                    f"(it holds {sorted(archive.files)})")
            inputs, labels = archive["inputs"], archive["labels"]
    except ExitDataError:
        raise
    except ValueError as error:  # object arrays and pickled files are refused by numpy, never unpickled
        if "pickle" in str(error):
            raise ExitDataError(f"{path}: refused, reading it needs pickle ({error})") from None
        raise ExitDataError(f"{path}: not a readable .npz file ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ExitDataError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    expected = tuple(int(size) for size in input_shape)
    if inputs.dtype.kind != "f":
        raise ExitDataError(f"{path}: inputs are {inputs.dtype}, expected float32")
    if labels.dtype.kind not in "iu":
        raise ExitDataError(f"{path}: labels are {labels.dtype}, expected int64")
    if inputs.ndim != len(expected) + 1 or tuple(inputs.shape[1:]) != expected:
        raise ExitDataError(f"{path}: inputs have shape {tuple(inputs.shape)}, expected (N, "
                            f"{', '.join(map(str, expected))}) for this variant")
    if labels.shape != (len(inputs),):
        raise ExitDataError(f"{path}: labels have shape {tuple(labels.shape)}, expected ({len(inputs)},) "
                            f"(one per input)")
    if len(inputs) == 0:
        raise ExitDataError(f"{path}: no samples")
    inputs = inputs.astype(np.float32)
    if not np.isfinite(inputs).all():
        raise ExitDataError(f"{path}: inputs hold {int((~np.isfinite(inputs)).sum())} NaN or infinite values "
                            f"(in float32)")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ExitDataError(f"{path}: labels run from {low} to {high}, expected 0 to {num_classes - 1} "
                            f"({num_classes} classes)")
    return ExitData(torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(labels.astype(np.int64)),
                    path, file_sha256(path))


@torch.no_grad()
def cached_head_inputs(backbone: ModelSlice, inputs: torch.Tensor, specs: dict[int, ExitHeadSpec],
                       batch_size: int = BATCH_SIZE) -> dict[int, torch.Tensor]:
    """One pass of the frozen blocks over ``inputs``: per exit block, what its head's first
    (parameter-free) op makes of the block's output. Not inference mode: these are trained on."""
    parts: dict[int, list[torch.Tensor]] = {block: [] for block in specs}
    deepest = max(specs)
    for start in range(0, len(inputs), batch_size):
        hidden = inputs[start:start + batch_size]
        for index in range(deepest + 1):
            hidden = backbone.forward_block(index, hidden)
            if index in specs:
                parts[index].append(head_input(specs[index], hidden).clone())
    return {block: torch.cat(values) for block, values in parts.items()}


def _exit_blocks(variant: VariantInfo, blocks_with_exits: Sequence[int] | None) -> list[int]:
    last = variant.block_count - 1
    chosen = sorted(set(blocks_with_exits)) if blocks_with_exits is not None else list(range(last))
    outside = [block for block in chosen if not 0 <= block < last]
    if outside:
        raise ExitTrainingError(f"{variant.name}: no exit head can follow block(s) {outside}: heads go after "
                                f"blocks 0 to {last - 1} (block {last} ends in the logits)")
    return chosen


def train_exits(zoo_dir: Path | str, variant_name: str, data_dir: Path | str,
                blocks_with_exits: Sequence[int] | None = None, epochs: int = DEFAULT_EXIT_EPOCHS,
                seed: int = DEFAULT_EXIT_SEED) -> TrainedExits:
    """Train, measure and store exit heads after ``blocks_with_exits`` (default: every block
    but the last) of the imported variant ``variant_name``; the manifest is rewritten."""
    zoo_dir, data_dir = Path(zoo_dir), Path(data_dir)
    manifest = read_manifest(zoo_dir)
    variant = manifest.variant(variant_name)
    if not variant.graph_file:
        raise ExitTrainingError(f"{variant.name} is not an imported variant (its family code defines its exits); "
                                f"`zoo exits` trains heads for families `p2pinfer zoo import` wrote")
    if epochs < 1:
        raise ExitTrainingError(f"epochs must be at least 1, got {epochs}")
    chosen = _exit_blocks(variant, blocks_with_exits)
    last = variant.block_count - 1
    num_classes = class_count(variant)
    training = load_exit_data(data_dir / TRAINING_FILE, variant.input_shape, num_classes)
    held_out = load_exit_data(data_dir / HELD_OUT_FILE, variant.input_shape, num_classes)
    final = next((e for e in variant.exits if e.block == last), ExitInfo(block=last, params=0, flops=0, accuracy=0.0))
    backbone_only = msgspec.structs.replace(variant, exits=[final], reference_cpu=None)
    backbone = load_slice(backbone_only, zoo_dir=zoo_dir)  # the stored blocks, digests checked

    specs = {block: exit_head_spec(variant.blocks[block].output_shape, num_classes) for block in chosen}
    heads: dict[int, nn.Module] = {}
    if chosen:
        features = cached_head_inputs(backbone, training.inputs, specs)
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            for block in chosen:
                torch.manual_seed(seed + block)
                head = build_exit_head(specs[block])
                fit(head, features[block], training.labels, epochs=epochs, seed=seed + block)
                heads[block] = head.eval()
    blocks = [backbone.blocks[index] for index in range(variant.block_count)]
    accuracy = exit_accuracies(blocks, {**heads, last: nn.Identity()}, held_out.inputs, held_out.labels)

    exits: list[ExitInfo] = []
    hidden = held_out.inputs[:1]
    with torch.inference_mode():
        for index, module in enumerate(blocks[:last]):
            hidden = module(hidden)
            if index in heads:
                flops, _ = flop_count(heads[index], hidden)
                exits.append(ExitInfo(block=index, params=parameter_count(heads[index]), flops=flops,
                                      accuracy=round(accuracy[index], 4), head=specs[index]))
    exits.append(msgspec.structs.replace(final, accuracy=round(accuracy[last], 4)))  # the unchanged model's logits

    weights_path = zoo_dir / variant.weights_file
    _write_weights(weights_path, variant.sha256, heads)
    info = msgspec.structs.replace(
        variant, exits=exits, sha256=file_sha256(weights_path), weights_bytes=weights_path.stat().st_size,
        params_total=sum(b.params for b in variant.blocks) + sum(e.params for e in exits),
        reference_cpu=None,  # it timed the heads just replaced (none of the imported families has one)
        training=variant.training | {"exits": {
            "blocks": chosen, "epochs": epochs, "seed": seed, "head": "zoo.exit_heads (pooled, 1x1 conv-BN-"
            "hardswish, linear; linear for flat features), AdamW + one-cycle on cached features, frozen backbone",
            "training_samples": len(training.labels), "held_out_samples": len(held_out.labels),
            "train_sha256": training.sha256, "held_out_sha256": held_out.sha256}})
    _check_stored_heads(info, zoo_dir, heads, held_out.inputs[:8])
    manifest.variants[info.name] = info
    write_manifest(manifest, zoo_dir)
    return TrainedExits(info, heads)


def _write_weights(path: Path, expected_sha256: str, heads: dict[int, nn.Module]) -> None:
    """The variant's file again: its blocks' tensors unchanged, every old head gone, these heads in float32."""
    verify_weights(path, expected_sha256)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()  # noqa: SIM118 - not a mapping
                   if key.startswith("blocks.")}
    for block, head in heads.items():
        for key, value in head.state_dict().items():
            value = value.detach().clone()
            tensors[f"heads.{block}.{key}"] = (value.to(torch.float32) if value.is_floating_point() else value)
    partial = path.with_name(path.name + ".partial")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(partial),
              metadata={"format": "p2pinfer-zoo-v1"})
    os.replace(partial, path)  # never a half-written weights file under the manifest's name


@torch.inference_mode()
def _check_stored_heads(info: VariantInfo, zoo_dir: Path, heads: dict[int, nn.Module], sample: torch.Tensor) -> None:
    """Load the written variant as a node would and compare every head's logits with the trained head's."""
    stored = load_slice(info, zoo_dir=zoo_dir)
    hidden = sample
    for index in range(info.block_count):
        hidden = stored.run_block(index, hidden)
        if index in heads:
            error = float((stored.exit_logits(index, hidden) - heads[index](hidden)).abs().max())
            if not error <= TOLERANCE:
                raise ExitTrainingError(f"{info.name}: the stored head after block {index} differs from the trained "
                                        f"one by {error:.3g} (> {TOLERANCE})")


def family_variants(zoo_dir: Path | str, family: str, variant: str | None = None) -> list[str]:
    """The imported variants ``zoo exits FAMILY`` trains: the family's (or just ``variant``), or the one
    variant named ``family``."""
    manifest = read_manifest(zoo_dir)
    names = [info.name for info in manifest.variants_of(family)] or (
        [family] if family in manifest.variants else [])
    if not names:
        families = sorted({info.family for info in manifest.variants.values()})
        raise UnknownVariantError(f"no family or variant {family!r} in {zoo_dir}; families: {', '.join(families)}")
    if variant is not None:
        if variant not in names:
            raise UnknownVariantError(f"{variant!r} is not a variant of {family!r}; its variants: {', '.join(names)}")
        return [variant]
    return names


def run_exits(args: argparse.Namespace) -> int:
    """Train exits from parsed arguments and print each exit's accuracy; 2 with one line on failure."""
    try:
        results = [train_exits(args.zoo, name, args.data, blocks_with_exits=args.blocks_with_exits,
                               epochs=args.epochs, seed=args.seed)
                   for name in family_variants(args.zoo, args.family, args.variant)]
    except ZooError as error:
        print(f"exits failed: {error}", file=sys.stderr)
        return 2
    for result in results:
        info = result.variant
        samples = info.training["exits"]
        print(f"{info.name}: exits trained on {samples['training_samples']} samples, measured on "
              f"{samples['held_out_samples']} held-out ({args.epochs} epochs, seed {args.seed}); wrote {args.zoo}")
        for exit_info in info.exits:
            kind = exit_info.head.kind if exit_info.head is not None else "the model's logits"
            print(f"  exit after block {exit_info.block}: accuracy {exit_info.accuracy:.4f}, "
                  f"{exit_info.params:,} params, {exit_info.flops / 1e6:.3f} MFLOPs ({kind})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.imported_exits", description=__doc__.splitlines()[0])
    return run_exits(add_exits_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
