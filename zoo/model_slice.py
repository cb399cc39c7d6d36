"""A loaded slice of a variant: blocks [first, last] and the exit heads among them.

This is what a node holds in memory and runs. ``run`` executes a contiguous block range;
``run_with_early_exit`` stops at the first exit whose max softmax reaches a threshold.
A slice is loaded for one backend (``zoo.backend``: CPU eager by default, CUDA, TensorRT):
``prepare`` brings an incoming activation to that backend's device and dtype, ``to_host``
takes an outgoing one back to float32 on the CPU (for the wire, or another compute unit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zoo.accounting import parameter_count
from zoo.backend import Backend, EngineKey, OnnxRuntimeBlock, prepare_block, require_available
from zoo.errors import BlockRangeError
from zoo.family import get_family
from zoo.graph import graph_family
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
                 device: torch.device, dtype: torch.dtype, backend: Backend | None = None) -> None:
        self.variant = variant
        self.first_block = first_block
        self.last_block = last_block
        self.blocks = blocks
        self.heads = heads
        self.device = device
        self.dtype = dtype
        self.backend = backend  # None only for a device/dtype no Backend describes (e.g. float64)
        # what forward_block/forward_head call: an ONNX Runtime block's forward itself (it has no
        # hooks: nn.Module's call machinery would be a third of its Python time), else the module
        self._block_calls = {index: _direct_call(module) for index, module in blocks.items()}
        self._head_calls = {index: _direct_call(module) for index, module in heads.items()}
        self._on_cpu = device.type == "cpu"
        # every block and head an ONNX Runtime session: no torch operator runs in forward_block
        # or forward_head, so autograd has nothing to record and no inference mode is needed
        self.sessions_only = all(isinstance(module, OnnxRuntimeBlock)
                                 for module in (*blocks.values(), *heads.values()))

    def hosts(self, first: int, last: int) -> bool:
        return self.first_block <= first <= last <= self.last_block

    def check_range(self, first: int, last: int) -> None:
        if not self.hosts(first, last):
            raise BlockRangeError(
                f"blocks [{first}, {last}] of {self.variant.name} are outside the loaded "
                f"slice [{self.first_block}, {self.last_block}]")

    def parameter_count(self) -> int:
        modules = list(self.blocks.values()) + list(self.heads.values())
        return sum(module.parameter_count if isinstance(module, OnnxRuntimeBlock) else parameter_count(module)
                   for module in modules)

    def prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        """An incoming activation on this slice's device and dtype (a no-op when it already is)."""
        if tensor.dtype is self.dtype and (tensor.is_cpu if self._on_cpu else tensor.device == self.device):
            return tensor  # the usual case, without ``to``'s argument parsing
        return tensor.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def to_host(tensor: torch.Tensor) -> torch.Tensor:
        """An outgoing activation or logits as float32 on the CPU: what the wire and the CPU expect."""
        return tensor.to(device="cpu", dtype=torch.float32)

    @torch.inference_mode()
    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        self.check_range(index, index)
        return self.forward_block(index, hidden)

    def forward_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """``run_block`` for a caller that already checked the range and runs in inference mode
        (the executor, block after block): neither is repeated per block here."""
        return self._block_calls[index](hidden)

    def forward_head(self, block: int, hidden: torch.Tensor) -> torch.Tensor:
        """``exit_logits`` under the same terms as ``forward_block`` (the head must be loaded)."""
        logits: torch.Tensor = self._head_calls[block](hidden)
        return logits if logits.dtype == torch.float32 else logits.float()

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, first: int | None = None, last: int | None = None) -> torch.Tensor:
        first = self.first_block if first is None else first
        last = self.last_block if last is None else last
        self.check_range(first, last)
        for index in range(first, last + 1):
            hidden = self.forward_block(index, hidden)
        return hidden

    @torch.inference_mode()
    def exit_logits(self, block: int, hidden: torch.Tensor) -> torch.Tensor:
        if block not in self.heads:
            raise BlockRangeError(f"{self.variant.name} has no loaded exit after block {block}")
        return self.forward_head(block, hidden)

    @torch.inference_mode()
    def run_with_early_exit(self, hidden: torch.Tensor, threshold: float, first: int | None = None,
                            last_exit: int | None = None) -> ExitOutcome:
        """Run from ``first`` and stop at the first exit whose every sample's max softmax is
        >= ``threshold`` (the final exit ``last_exit`` always answers)."""
        first = self.first_block if first is None else first
        last_exit = self.last_block if last_exit is None else last_exit
        self.check_range(first, last_exit)
        for index in range(first, last_exit + 1):
            hidden = self.forward_block(index, hidden)
            if index in self.heads:
                logits = self.exit_logits(index, hidden)
                confidence = torch.softmax(logits, dim=-1).amax(dim=-1)
                if index == last_exit or bool((confidence >= threshold).all()):
                    return ExitOutcome(logits, index, confidence)
        raise BlockRangeError(f"no exit head at or before block {last_exit} of {self.variant.name}")


def _direct_call(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return module.forward if isinstance(module, OnnxRuntimeBlock) else module


def _slice_backend(device: str | torch.device, dtype: torch.dtype, backend: Backend | None) -> Backend | None:
    """The backend a slice runs on: the one given, else the plain backend of ``device``/``dtype``."""
    if backend is None:
        try:
            return Backend.for_device(device, dtype)
        except ValueError:
            return None  # a device/dtype outside the backends (float64, mps): moved and cast as before
    if torch.device(device) == torch.device("cpu") and dtype == torch.float32:
        return backend  # the defaults: the backend alone decides
    implied = Backend.for_device(device, dtype)
    if (implied.device, implied.dtype) != (backend.device, backend.dtype):
        raise ValueError(f"device={device!s}, dtype={dtype} contradict backend {backend.label}: pass one or the other")
    return backend


def load_slice(variant: VariantInfo | str, first_block: int = 0, last_block: int | None = None,
               zoo_dir: Path | str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, backend: Backend | None = None) -> ModelSlice:
    """Load blocks [first_block, last_block] of a variant (and the exit heads among them).

    ``backend`` (default: CPU eager, or the plain backend of ``device``/``dtype``) decides how
    each block and head runs; blocks are built and filled on the CPU in float32, then prepared
    for it (moved and cast, captured as CUDA graphs, or compiled to TensorRT engines).
    Raises ``BackendUnavailableError`` when this machine cannot run the backend.
    """
    backend = _slice_backend(device, dtype, backend)
    if backend is not None:
        require_available(backend)  # before reading any weights
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
    if variant.graph_file:  # an imported variant: its blocks are a graph description
        family = graph_family(variant, zoo_dir)
    else:
        family = get_family(variant.family, variant.family_module)
    torch_device = torch.device(device) if backend is None else backend.torch_device
    dtype = dtype if backend is None else backend.torch_dtype

    def place(module: nn.Module, index: int, part: str, input_shape: list[int]) -> nn.Module:
        if backend is None:
            return module.to(device=torch_device, dtype=dtype).eval()
        example = torch.zeros([backend.static_batch_size, *input_shape])
        return prepare_block(module.eval(), backend, example,
                             EngineKey(variant.name, variant.sha256, index, index, part))

    blocks: dict[int, nn.Module] = {}
    heads: dict[int, nn.Module] = {}
    for index in range(first_block, last_block + 1):
        block = family.build_block(variant.config, index)
        load_module_weights(path, f"blocks.{index}", block)
        blocks[index] = place(block, index, "block", variant.blocks[index].input_shape)
        if index in variant.exit_blocks:
            head = family.build_head(variant.config, index)
            load_module_weights(path, f"heads.{index}", head)
            heads[index] = place(head, index, "head", variant.blocks[index].output_shape)
    return ModelSlice(variant, first_block, last_block, blocks, heads, torch_device, dtype, backend)
