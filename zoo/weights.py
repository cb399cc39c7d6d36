"""Weight files: one safetensors file per variant, keys ``blocks.{k}.*`` and ``heads.{k}.*``.

Loading checks the file's sha256 against the manifest first (a mismatch raises
``WeightIntegrityError`` and nothing is loaded), then reads only the requested blocks'
tensors, so a node hosting blocks [i, j] never materialises the others.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from zoo.errors import WeightIntegrityError

_VERIFIED: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: Path, expected_sha256: str) -> None:
    """Refuse a weight file whose digest differs from the manifest (cached by size and mtime)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise WeightIntegrityError(f"weight file {path} is missing") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) == expected_sha256:
        return
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise WeightIntegrityError(
            f"weight file {path} has sha256 {actual[:16]}…, manifest expects {expected_sha256[:16]}…")
    _VERIFIED[key] = expected_sha256


STORAGE_DTYPE = torch.float16
"""Weights are stored in half precision (the zoo must stay small enough to live in git) and
widened to the compute dtype on load; the manifest's accuracies are measured after that
round trip, so they describe exactly what a node runs."""


def save_weights(path: Path, blocks: dict[int, nn.Module], heads: dict[int, nn.Module],
                 storage_dtype: torch.dtype = STORAGE_DTYPE) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for prefix, modules in (("blocks", blocks), ("heads", heads)):
        for index, module in modules.items():
            for key, value in module.state_dict().items():
                value = value.detach().cpu().clone()  # clone: observers shared under two names share storage
                if value.is_floating_point():
                    value = value.to(storage_dtype)
                tensors[f"{prefix}.{index}.{key}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "p2pinfer-zoo-v1"})


def load_module_weights(path: Path, prefix: str, module: nn.Module) -> None:
    """Fill ``module`` from the tensors under ``prefix.`` (strict: every key must be there)."""
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            if key.startswith(prefix + "."):
                state[key[len(prefix) + 1:]] = handle.get_tensor(key)
    module.load_state_dict(state, strict=True)
