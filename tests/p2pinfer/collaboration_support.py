"""Helpers of the collaboration tests: which variants to use, a sample input, the reference forward."""

from __future__ import annotations

import pytest
import torch

from zoo.dataset import held_out
from zoo.manifest import Manifest, VariantInfo
from zoo.model_slice import load_slice

CNN = "digits-cnn-w1"
PREFERRED_RESNET = "digits-resnet-w0.25"


def resnet_name(manifest: Manifest) -> str:
    """digits-resnet-w0.25 when the zoo has it, else its smallest digits-resnet variant."""
    if PREFERRED_RESNET in manifest.variants:
        return PREFERRED_RESNET
    resnets = [variant for variant in manifest.variants.values() if variant.family == "digits-resnet"]
    if not resnets:
        pytest.skip("the zoo has no digits-resnet variant")
    return min(resnets, key=lambda variant: variant.weights_bytes).name


def heavy_resnet_name(manifest: Manifest) -> str:
    """The digits-resnet variant with the most compute: timing-based decisions need compute
    well above the few milliseconds an HTTP hop costs on a loaded machine."""
    resnets = [variant for variant in manifest.variants.values() if variant.family == "digits-resnet"]
    if not resnets:
        pytest.skip("the zoo has no digits-resnet variant")
    return max(resnets, key=lambda variant: variant.flops_total).name


def sample(variant: VariantInfo, index: int = 0) -> torch.Tensor:
    images, _ = held_out(tuple(variant.input_shape))
    return images[index:index + 1].contiguous()


def reference_logits(variant: VariantInfo, tensor: torch.Tensor, exit_block: int | None = None) -> torch.Tensor:
    """One node's full forward of blocks [0, exit] and the exit's head, in process."""
    exit_block = variant.block_count - 1 if exit_block is None else exit_block
    model = load_slice(variant, 0, exit_block)
    with torch.inference_mode():
        return model.exit_logits(exit_block, model.run(model.prepare(tensor), 0, exit_block))
