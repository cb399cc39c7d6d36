"""Export a variant: weights to safetensors, and its manifest entry measured from the modules.

This is also how a user brings their own family: register a ``Family`` whose builders
rebuild the modules from a config, train it however they like, then call
``export_variant`` and ``add_to_manifest`` (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.accounting import flop_count, parameter_count
from zoo.family import Family
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
from zoo.weights import STORAGE_DTYPE, file_sha256, save_weights

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@torch.inference_mode()
def exit_accuracies(blocks: Sequence[nn.Module], heads: dict[int, nn.Module], images: torch.Tensor,
                    labels: torch.Tensor, batch_size: int = 256) -> dict[int, float]:
    for module in [*blocks, *heads.values()]:
        module.eval()
    correct = dict.fromkeys(heads, 0)
    for start in range(0, len(images), batch_size):
        hidden = images[start:start + batch_size]
        batch_labels = labels[start:start + batch_size]
        for index, block in enumerate(blocks):
            hidden = block(hidden)
            if index in heads:
                correct[index] += int((heads[index](hidden).argmax(dim=-1) == batch_labels).sum())
    return {index: count / len(images) for index, count in correct.items()}


def export_variant(zoo_dir: Path | str, family: Family, name: str, config: dict[str, Any],
                   blocks: Sequence[nn.Module], heads: dict[int, nn.Module], images: torch.Tensor,
                   labels: torch.Tensor, compression: str = "none", family_module: str | None = None,
                   training: dict[str, Any] | None = None, storage_dtype: torch.dtype = STORAGE_DTYPE,
                   input_shape: tuple[int, ...] | None = None) -> VariantInfo:
    """Write ``weights/{name}.safetensors`` and return the variant's measured manifest entry.

    ``storage_dtype``: float32 where float16 storage would move the logits more than a
    variant promises; ``input_shape``: a variant whose input differs from its family's
    (a lower resolution)."""
    zoo_dir = Path(zoo_dir)
    variant_input_shape = tuple(input_shape or family.input_shape)
    for module in [*blocks, *heads.values()]:
        module.eval()
        _round_trip_storage(module, storage_dtype)
    accuracies = exit_accuracies(blocks, heads, images, labels)
    hidden = images[:1]
    block_infos: list[BlockInfo] = []
    exit_infos: list[ExitInfo] = []
    for index, block in enumerate(blocks):
        block_input_shape = list(hidden.shape[1:])
        flops, output = flop_count(block, hidden)
        block_infos.append(BlockInfo(index=index, params=parameter_count(block), flops=flops,
                                     input_shape=block_input_shape, output_shape=list(output.shape[1:]),
                                     output_bytes=output[0].numel() * 4))
        if index in heads:
            head_flops, _ = flop_count(heads[index], output)
            exit_infos.append(ExitInfo(block=index, params=parameter_count(heads[index]), flops=head_flops,
                                       accuracy=round(accuracies[index], 4)))
        hidden = output
    relative = Path("weights") / f"{name}.safetensors"
    save_weights(zoo_dir / relative, dict(enumerate(blocks)), heads, storage_dtype)
    return VariantInfo(
        name=name, family=family.name, family_module=family_module or type_module(family),
        compression=compression, width=float(config.get("width", 1.0)), config=config,
        input_shape=list(variant_input_shape), input_bytes=int(torch.Size(variant_input_shape).numel()) * 4,
        dtype="float32", blocks=block_infos, exits=exit_infos, weights_file=relative.as_posix(),
        sha256=file_sha256(zoo_dir / relative), weights_bytes=(zoo_dir / relative).stat().st_size,
        params_total=sum(b.params for b in block_infos) + sum(e.params for e in exit_infos),
        flops_total=sum(b.flops for b in block_infos), training=training or {},
        storage_dtype=str(storage_dtype).removeprefix("torch."),
    )


@torch.no_grad()
def _round_trip_storage(module: nn.Module, storage_dtype: torch.dtype = STORAGE_DTYPE) -> None:
    """Give the module exactly the values its stored weights will load as."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(storage_dtype).to(tensor.dtype))


def type_module(family: Family) -> str:
    """The module that registers ``family`` (so a manifest can import it on load)."""
    return family.build_block.__module__


def add_to_manifest(zoo_dir: Path | str, variants: list[VariantInfo], held_out: HeldOutInfo,
                    descriptions: dict[str, str] | None = None) -> Manifest:
    """Merge ``variants`` into the manifest in ``zoo_dir`` (created if absent) and write it."""
    try:
        manifest = read_manifest(zoo_dir)
    except Exception:  # noqa: BLE001 - an absent or stale manifest is replaced
        manifest = Manifest(version=MANIFEST_VERSION, variants={}, held_out=held_out)
    for variant in variants:
        manifest.variants[variant.name] = variant
    manifest.families.update(descriptions or {})
    manifest.held_out = held_out
    write_manifest(manifest, zoo_dir)
    return manifest
