"""A loaded slice of a variant: blocks [first, last] and the exit heads among them.

This is what a node holds in memory and runs. ``run`` executes a contiguous block range;
``run_with_early_exit`` stops at the first exit whose max softmax reaches a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zoo.errors import BlockRangeError
from zoo.family import get_family
from zoo.manifest import DEFAULT_ZOO_DIR, VariantInfo, read_manifest
from zoo.weights import load_module_weights, verify_weights


@dataclass(frozen=True)
class ExitOutcome:
    logits: torch.Tensor
    exit_block: int
    confidence: torch.Tensor  # max softmax per sample


class ModelSlice:
    def __init__(self, variant: VariantInfo, first_block: int, last_block: int,
                 blocks: dict[int, nn.Module], heads: dict[int, nn.Module],
                 device: torch.device, dtype: torch.dtype) -> None:
        self.variant = variant
        self.first_block = first_block
        self.last_block = last_block
        self.blocks = blocks
        self.heads = heads
        self.device = device
        self.dtype = dtype

    def hosts(self, first: int, last: int) -> bool:
        return self.first_block <= first <= last <= self.last_block

    def _check_range(self, first: int, last: int) -> None:
        if not self.hosts(first, last):
            raise BlockRangeError(
                f"blocks [{first}, {last}] of {self.variant.name} are outside the loaded "
                f"slice [{self.first_block}, {self.last_block}]")

    def parameter_count(self) -> int:
        modules = list(self.blocks.values()) + list(self.heads.values())
        return sum(parameter.numel() for module in modules for parameter in module.parameters())

    def prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        self._check_range(index, index)
        return self.blocks[index](hidden)

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, first: int | None = None, last: int | None = None) -> torch.Tensor:
        first = self.first_block if first is None else first
        last = self.last_block if last is None else last
        self._check_range(first, last)
        for index in range(first, last + 1):
            hidden = self.blocks[index](hidden)
        return hidden

    @torch.inference_mode()
    def exit_logits(self, block: int, hidden: torch.Tensor) -> torch.Tensor:
        if block not in self.heads:
            raise BlockRangeError(f"{self.variant.name} has no loaded exit after block {block}")
        return self.heads[block](hidden).float()

    @torch.inference_mode()
    def run_with_early_exit(self, hidden: torch.Tensor, threshold: float, first: int | None = None,
                            last_exit: int | None = None) -> ExitOutcome:
        """Run from ``first`` and stop at the first exit whose every sample's max softmax is
        >= ``threshold`` (the final exit ``last_exit`` always answers)."""
        first = self.first_block if first is None else first
        last_exit = self.last_block if last_exit is None else last_exit
        self._check_range(first, last_exit)
        for index in range(first, last_exit + 1):
            hidden = self.blocks[index](hidden)
            if index in self.heads:
                logits = self.exit_logits(index, hidden)
                confidence = torch.softmax(logits, dim=-1).amax(dim=-1)
                if index == last_exit or bool((confidence >= threshold).all()):
                    return ExitOutcome(logits, index, confidence)
        raise BlockRangeError(f"no exit head at or before block {last_exit} of {self.variant.name}")


def load_slice(variant: VariantInfo | str, first_block: int = 0, last_block: int | None = None,
               zoo_dir: Path | str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> ModelSlice:
    """Load blocks [first_block, last_block] of a variant (and the exit heads among them)."""
    zoo_dir = Path(zoo_dir or DEFAULT_ZOO_DIR)
    if isinstance(variant, str):
        variant = read_manifest(zoo_dir).variant(variant)
    last_block = variant.block_count - 1 if last_block is None else last_block
    if not 0 <= first_block <= last_block < variant.block_count:
        raise BlockRangeError(
            f"block range [{first_block}, {last_block}] is outside {variant.name}'s "
            f"blocks [0, {variant.block_count - 1}]")
    path = zoo_dir / variant.weights_file
    verify_weights(path, variant.sha256)
    family = get_family(variant.family, variant.family_module)
    torch_device = torch.device(device)
    blocks: dict[int, nn.Module] = {}
    heads: dict[int, nn.Module] = {}
    for index in range(first_block, last_block + 1):
        block = family.build_block(variant.config, index)
        load_module_weights(path, f"blocks.{index}", block)
        blocks[index] = block.to(device=torch_device, dtype=dtype).eval()
        if index in variant.exit_blocks:
            head = family.build_head(variant.config, index)
            load_module_weights(path, f"heads.{index}", head)
            heads[index] = head.to(device=torch_device, dtype=dtype).eval()
    return ModelSlice(variant, first_block, last_block, blocks, heads, torch_device, dtype)
