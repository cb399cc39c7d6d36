"""The serving floor as a LitServe ``LitAPI`` (``benchmarks.serving_peers litserve``).

A module of its own, imported only when LitServe runs: LitServe pickles the API object into
its spawned inference worker, which finds the class by its module's name."""

from __future__ import annotations

import base64
from typing import Any

import litserve
import torch

from benchmarks.serving_floor import FloorAnswerer


class FloorLitAPI(litserve.LitAPI):
    def __init__(self, variant_name: str, backend: str, **options: Any) -> None:
        super().__init__(**options)
        self.variant_name, self.backend = variant_name, backend

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)  # as the floor: one intra-op thread
        self.answerer = FloorAnswerer(self.variant_name, self.backend)

    def decode_request(self, request: dict[str, str]) -> bytes:
        return base64.b64decode(request["frame"])

    def predict(self, frame: bytes) -> dict[str, Any]:
        return self.answerer.answer(frame)

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output
