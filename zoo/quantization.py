"""Post-training static int8 quantisation of one block, applied when the block is loaded.

Why at load: safetensors stores plain tensors, not quantized ones, and fbgemm/qnnpack pack
their int8 weights per engine anyway. So an int8 variant stores what quantisation needs
(float32 weights with batch norm folded in, and every activation observer's calibrated
range, as ordinary tensors), and ``load_state_dict`` converts the block with this machine's
quantized engine. Each block quantises its input and dequantises its output, so boundaries
stay float32 and an int8 block range can follow or precede a float32 one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

DEFAULT_ENGINE = "x86"  # its qconfig (7-bit activations) also runs on qnnpack


class QuantizedBlock(nn.Module):
    """A float block observed for int8 (FX graph mode); int8 once calibrated or loaded."""

    def __init__(self, block: nn.Module, in_channels: int, engine: str = DEFAULT_ENGINE) -> None:
        super().__init__()
        example = (torch.zeros(1, in_channels, 16, 16),)
        self.observed = prepare_fx(block.eval(), get_default_qconfig_mapping(engine), example)
        self._int8: list[nn.Module] = []  # a list, so the converted module stays out of state_dict
        self.register_load_state_dict_post_hook(lambda module, _keys: module.convert())

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Record activation ranges on float batches, then convert."""
        self._int8.clear()
        for batch in batches:
            self.observed(batch)
        self.convert()

    def convert(self) -> None:
        self._int8[:] = [convert_fx(copy.deepcopy(self.observed).eval())]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._int8:
            return self.observed(x)  # still observing (calibration)
        return self._int8[0](x)
