"""Imported models as data: a JSON graph description per block, and its interpreter.

An imported variant is not Python code. Its blocks are stored as a graph file
(``graphs/{variant}.json``, msgspec-typed ``GraphFile``): for every block, its input and
output value names, the shapes of the weights it uses, and its ops in execution order.
Each op is a name from ``OPS``, an explicit table of ATen overloads (``aten.conv2d.default``,
``aten.add.Tensor``, ...) plus a few ``operator`` functions on Python ints (batch-size
arithmetic); its arguments are JSON constants, lists, ``{"ref": value}`` (an earlier op's
output or the block input), ``{"param": name}`` (a weight), ``{"dtype": name}`` or
``{"float": "inf"}``. The weights themselves live in the variant's safetensors file.

Why loading is safe: the graph file is checked against the manifest's sha256 before it is
parsed, then decoded by msgspec into plain structs (no pickle, no ``torch.load``, no
``eval``); an op name is only ever looked up in ``OPS``, which is built from the literal
names below, so a file cannot reach ``importlib``, ``getattr`` on arbitrary objects or any
op that touches files or processes. A name outside the table raises ``UnsupportedOpError``.
Every reference must name a value defined earlier in the block, and every weight must be
declared, so a malformed file is refused before anything runs.

Exit heads trained after import (``zoo.imported_exits``) are not in the graph file: the
manifest's ``ExitHeadSpec`` names one of ``zoo.exit_heads``' fixed designs and its sizes.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import torch
from torch import nn

from zoo.errors import ExitTrainingError, GraphIntegrityError, UnsupportedOpError
from zoo.exit_heads import build_exit_head
from zoo.family import Family, register_family
from zoo.manifest import VariantInfo
from zoo.weights import file_sha256

GRAPH_FORMAT = "p2pinfer-graph-v1"

_ATEN_OPS = (
    # convolution, normalisation, linear algebra
    "conv1d.default", "conv2d.default", "conv3d.default", "conv2d.padding", "convolution.default",
    "batch_norm.default", "_native_batch_norm_legit_no_training.default", "layer_norm.default",
    "group_norm.default", "linear.default", "addmm.default", "mm.default", "bmm.default", "matmul.default",
    # activations
    "relu.default", "relu6.default", "hardtanh.default", "clamp.default", "clamp.Tensor", "clamp_min.default",
    "clamp_max.default", "sigmoid.default", "tanh.default", "hardsigmoid.default", "hardswish.default",
    "silu.default", "gelu.default", "leaky_relu.default", "elu.default", "softmax.int", "_softmax.default",
    "log_softmax.int", "_log_softmax.default",
    # elementwise arithmetic
    "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Scalar", "mul.Tensor", "mul.Scalar",
    "div.Tensor", "div.Scalar", "neg.default", "exp.default", "log.default", "sqrt.default", "rsqrt.default",
    "pow.Tensor_Scalar", "pow.Tensor_Tensor", "reciprocal.default", "abs.default", "erf.default",
    "maximum.default", "minimum.default",
    # pooling and reductions
    "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default",
    "avg_pool2d.default", "max_pool2d.default", "max_pool2d_with_indices.default", "mean.dim", "mean.default",
    "sum.dim_IntList", "amax.default",
    # shapes and copies
    "flatten.using_ints", "view.default", "reshape.default", "_unsafe_view.default", "permute.default",
    "transpose.int", "t.default", "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default",
    "cat.default", "pad.default", "constant_pad_nd.default", "expand.default", "slice.Tensor", "select.int",
    "index_select.default", "split.Tensor", "chunk.default", "dropout.default", "clone.default",
    "contiguous.default", "alias.default", "detach.default", "_to_copy.default", "to.dtype", "sym_size.int",
)

_PYTHON_OPS: dict[str, Callable[..., Any]] = {
    "operator.getitem": operator.getitem, "operator.add": operator.add, "operator.sub": operator.sub,
    "operator.mul": operator.mul, "operator.floordiv": operator.floordiv,
}


def _aten_table() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for name in _ATEN_OPS:  # literal names only: nothing read from a file reaches getattr
        packet_name, overload = name.split(".")
        packet = getattr(torch.ops.aten, packet_name, None)
        if packet is not None and overload in packet.overloads():
            table[f"aten.{name}"] = getattr(packet, overload)
    return table


OPS: Mapping[str, Callable[..., Any]] = {**_aten_table(), **_PYTHON_OPS}
"""The whitelist: every op a graph file may name, and the callable it resolves to."""

DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES: Mapping[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ParamSpec(msgspec.Struct, frozen=True):
    shape: list[int]
    dtype: str


class GraphNode(msgspec.Struct, frozen=True):
    name: str
    op: str
    args: list[Any]
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


class BlockGraph(msgspec.Struct, frozen=True):
    index: int
    input: str
    output: str
    params: dict[str, ParamSpec]
    nodes: list[GraphNode]


class CandidateCut(msgspec.Struct, frozen=True):
    """A point in execution order where exactly one tensor is live (so the model can be cut there)."""

    position: int  # cut after this many ops of the whole graph
    after: str  # the op whose output is the one live tensor
    shape: list[int]  # per sample
    bytes: int  # per sample, float32
    flops_before: int  # FLOPs of the ops before the cut


class GraphFile(msgspec.Struct, frozen=True):
    format: str
    source: str
    blocks: list[BlockGraph]
    candidate_cuts: list[CandidateCut] = msgspec.field(default_factory=list)


# ----- arguments: JSON <-> values ------------------------------------------------------------


class Ref(msgspec.Struct, frozen=True):
    """An earlier op's output (or the block input)."""

    name: str


class Param(msgspec.Struct, frozen=True):
    """A weight of the block, stored in safetensors."""

    name: str


def encode_arg(value: Any) -> Any:
    """An argument as JSON: constants as themselves, references and dtypes as one-key objects."""
    if isinstance(value, Ref):
        return {"ref": value.name}
    if isinstance(value, Param):
        return {"param": value.name}
    if isinstance(value, torch.dtype):
        if value not in DTYPE_NAMES:
            raise UnsupportedOpError(f"dtype {value} is not supported in a graph file")
        return {"dtype": DTYPE_NAMES[value]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, (list, tuple)):
        return [encode_arg(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UnsupportedOpError(f"argument {value!r} of type {type(value).__name__} cannot be stored in a graph file")


def decode_arg(value: Any, defined: set[str], params: Mapping[str, ParamSpec]) -> Any:
    """The inverse of ``encode_arg``, refusing references to values not yet defined."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise GraphIntegrityError(f"malformed argument {value!r}")
        ((kind, payload),) = value.items()
        if kind == "ref" and payload in defined:
            return Ref(payload)
        if kind == "param" and payload in params:
            return Param(payload)
        if kind == "dtype" and payload in DTYPES:
            return DTYPES[payload]
        if kind == "float" and payload in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[payload]
        raise GraphIntegrityError(f"argument {value!r} names nothing defined before it")
    if isinstance(value, list):
        return [decode_arg(item, defined, params) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise GraphIntegrityError(f"malformed argument {value!r}")


# ----- the interpreter -----------------------------------------------------------------------


class GraphBlock(nn.Module):
    """One block of an imported graph: its weights (under ``weights.``) and its ops, run in order.

    Batch-agnostic: sizes that depend on the batch are computed from the input's shape by
    ``aten.sym_size.int`` ops in the graph, never stored as constants.
    """

    def __init__(self, block: BlockGraph) -> None:
        super().__init__()
        self.weights = nn.Module()
        for name, spec in block.params.items():
            if not _IDENTIFIER.match(name) or spec.dtype not in DTYPES:
                raise GraphIntegrityError(f"block {block.index}: bad weight {name!r} ({spec.dtype})")
            tensor = torch.empty(spec.shape, dtype=DTYPES[spec.dtype])
            try:
                if tensor.is_floating_point():
                    self.weights.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
                else:
                    self.weights.register_buffer(name, tensor)
            except KeyError as error:
                raise GraphIntegrityError(f"block {block.index}: bad weight name {name!r}: {error}") from None
        self.index = block.index
        self.input_name = block.input
        self.output_name = block.output
        self.steps: list[tuple[str, Callable[..., Any], list[Any], dict[str, Any]]] = []
        defined = {block.input}
        for node in block.nodes:
            function = OPS.get(node.op)
            if function is None:
                raise UnsupportedOpError(f"block {block.index}: op {node.op!r} is not in the whitelist")
            args = [decode_arg(arg, defined, block.params) for arg in node.args]
            kwargs = {key: decode_arg(arg, defined, block.params) for key, arg in node.kwargs.items()}
            if node.name in defined:
                raise GraphIntegrityError(f"block {block.index}: value {node.name!r} defined twice")
            defined.add(node.name)
            self.steps.append((node.name, function, args, kwargs))
        if block.output not in defined:
            raise GraphIntegrityError(f"block {block.index}: output {block.output!r} is never computed")

    def _value(self, argument: Any, env: dict[str, Any]) -> Any:
        if isinstance(argument, Ref):
            return env[argument.name]
        if isinstance(argument, Param):
            return getattr(self.weights, argument.name)
        if isinstance(argument, list):
            return [self._value(item, env) for item in argument]
        return argument

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {self.input_name: hidden}
        for name, function, args, kwargs in self.steps:
            env[name] = function(*[self._value(arg, env) for arg in args],
                                 **{key: self._value(arg, env) for key, arg in kwargs.items()})
        return env[self.output_name]


# ----- files and families --------------------------------------------------------------------

_LOADED: dict[tuple[str, int, int, str], GraphFile] = {}


def write_graph(graph: GraphFile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(graph), indent=1) + b"\n")


def load_graph(path: Path, expected_sha256: str) -> GraphFile:
    """Read a graph file after checking its digest against the manifest, and validate every op."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise GraphIntegrityError(f"graph file {path} is missing") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns, expected_sha256)
    if key in _LOADED:
        return _LOADED[key]
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise GraphIntegrityError(
            f"graph file {path} has sha256 {actual[:16]}…, manifest expects {expected_sha256[:16]}…")
    try:
        graph = msgspec.json.decode(path.read_bytes(), type=GraphFile)
    except msgspec.DecodeError as error:
        raise GraphIntegrityError(f"malformed graph file {path}: {error}") from None
    if graph.format != GRAPH_FORMAT:
        raise GraphIntegrityError(f"graph file {path} has format {graph.format!r}, expected {GRAPH_FORMAT!r}")
    for block in graph.blocks:
        GraphBlock(block)  # validates ops, references and weight declarations before anything runs
    _LOADED[key] = graph
    return graph


def graph_family(variant: VariantInfo, zoo_dir: Path | str) -> Family:
    """The family of an imported variant: block *k* is an interpreter of the graph file's block *k*.

    Registered under the variant's family name, so ``get_family`` finds it afterwards. The
    graph is read (and its digest checked) when a block is first built, not before. The last
    block's head is the identity (it ends in the logits); an earlier exit's head, trained by
    ``zoo.imported_exits``, is rebuilt from the ``ExitHeadSpec`` its manifest entry records.
    """
    path = Path(zoo_dir) / variant.graph_file
    sha256 = variant.graph_sha256
    count = variant.block_count

    def build_block(_config: Mapping[str, Any], index: int) -> nn.Module:
        graph = load_graph(path, sha256)
        if len(graph.blocks) != count or graph.blocks[index].index != index:
            raise GraphIntegrityError(f"graph file {path} does not match the manifest's {count} blocks")
        return GraphBlock(graph.blocks[index])

    heads = {exit_info.block: exit_info.head for exit_info in variant.exits}
    exits = variant.exit_blocks

    def build_head(_config: Mapping[str, Any], index: int) -> nn.Module:
        spec = heads.get(index)
        if spec is not None:  # trained by `p2pinfer zoo exits`: rebuilt from the manifest's description
            return build_exit_head(spec)
        if index == count - 1:
            return nn.Identity()  # the last block already ends in the classifier's logits
        raise ExitTrainingError(f"{variant.name}: the exit after block {index} has no head specification")

    family = Family(
        name=variant.family, description=f"imported from {variant.source}", input_shape=tuple(variant.input_shape),
        num_classes=variant.blocks[-1].output_shape[-1] if variant.blocks else 0, dataset="imported",
        block_count=lambda _config: count, exits=lambda _config: list(exits),
        build_block=build_block, build_head=build_head, width_config=lambda width: {"width": width})
    return register_family(family)


def register_graph_families(variants: list[VariantInfo], zoo_dir: Path | str) -> None:
    """Make ``get_family`` know the imported families of a manifest (no file is read here)."""
    for variant in variants:
        if variant.graph_file:
            graph_family(variant, zoo_dir)
