"""A family: an ordered list of blocks with an exit head after some of them.

A family is code (how to build block *k* and head *k* from an architecture config); a
variant is data (a config plus weights). Building one block at a time is what lets a node
that hosts blocks [i, j] allocate only those blocks' parameters.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from zoo.errors import UnknownFamilyError
from zoo.manifest import VariantInfo

ArchitectureConfig = Mapping[str, Any]


@dataclass(frozen=True)
class Family:
    """How to build a family's blocks and exit heads.

    ``build_block(config, k)`` returns block *k*; ``build_head(config, k)`` returns the exit
    head applied to block *k*'s output (only for ``k`` in ``exits(config)``).
    ``input_shape`` is one sample's shape (no batch dimension).
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str
    block_count: Callable[[ArchitectureConfig], int]
    exits: Callable[[ArchitectureConfig], list[int]]
    build_block: Callable[[ArchitectureConfig, int], nn.Module]
    build_head: Callable[[ArchitectureConfig, int], nn.Module]
    width_config: Callable[[float], dict[str, Any]] = field(default=lambda width: {"width": width})


_REGISTRY: dict[str, Family] = {}
_BUILTIN_MODULES = {"digits-cnn": "zoo.digits_cnn", "digits-resnet": "zoo.resnet", "text-orientation": "zoo.lcnet"}


def register_family(family: Family) -> Family:
    """Register a family so that manifests naming it can be loaded (user families too)."""
    _REGISTRY[family.name] = family
    return family


def get_family(name: str, module_path: str | None = None) -> Family:
    """Find a registered family, importing its module (builtin, or named by the manifest)."""
    if name not in _REGISTRY:
        module_name = module_path or _BUILTIN_MODULES.get(name)
        if module_name is not None:
            importlib.import_module(module_name)
    if name not in _REGISTRY:
        known = sorted({*_REGISTRY, *_BUILTIN_MODULES})  # builtins not imported yet are known all the same
        raise UnknownFamilyError(f"unknown family {name!r}; known: {', '.join(known)}")
    return _REGISTRY[name]


def builtin_families() -> list[Family]:
    return [get_family(name) for name in _BUILTIN_MODULES]


def class_count(variant: VariantInfo) -> int:
    """Logits per sample of a variant: recorded in its manifest entry, else its family code says."""
    return variant.num_classes or get_family(variant.family, variant.family_module).num_classes
