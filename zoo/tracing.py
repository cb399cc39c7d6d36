"""Tracing: a torch module to one flat list of whitelisted ATen ops, measured on one sample.

``torch.export`` (with a dynamic batch dimension) gives a single IR for every frontend: a
module from a factory, or an ONNX file once ``zoo.onnx_conversion`` has turned it into a
module. Its parameters, buffers and constants become named weights; its ops are lowered to
``zoo.graph`` arguments (``Ref``/``Param``/constants) and checked against ``zoo.graph.OPS``.
A run on one sample records each op's output shape and FLOPs, which ``zoo.cutting`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim
from torch.export.graph_signature import InputKind
from torch.utils.flop_counter import FlopCounterMode

from zoo.errors import ImportSourceError, UnsupportedOpError
from zoo.graph import OPS, Param, Ref

MAX_BATCH = 1 << 16
_DROPPED_KWARGS = {"memory_format", "layout", "pin_memory", "device"}  # placement only, not values


@dataclass(frozen=True)
class TracedNode:
    name: str
    op: str
    args: list[Any]
    kwargs: dict[str, Any]
    uses: tuple[str, ...]  # values (not weights) this op reads
    kind: str  # "tensor" | "size" (a batch-dependent int) | "other" (tuples, lists)
    symbolic_shape: tuple[str, ...] = ()  # tensors: each dim as the export's expression ("s0", "3")
    expression: str = ""  # sizes: the export's expression
    shape: tuple[int, ...] = ()  # tensors: per-sample shape on the measuring run
    flops: int = 0


@dataclass(frozen=True)
class TracedModel:
    input_name: str
    input_shape: tuple[int, ...]  # per sample
    input_symbolic_shape: tuple[str, ...]
    output_name: str
    nodes: list[TracedNode]
    weights: dict[str, torch.Tensor] = field(repr=False)

    def node(self, name: str) -> TracedNode:
        return self._by_name[name]

    @property
    def _by_name(self) -> dict[str, TracedNode]:
        return {node.name: node for node in self.nodes}


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    if getattr(target, "__module__", None) in ("_operator", "operator"):
        return f"operator.{target.__name__}"
    return repr(target)


def _functional(op: str) -> str:
    """``aten.relu_.default`` -> ``aten.relu.default``: in-place ops would mutate a block's input."""
    namespace, name, overload = (op.split(".") + ["", ""])[:3]
    if namespace == "aten" and name.endswith("_") and not name.startswith("_"):
        return f"aten.{name[:-1]}.{overload}"
    return op


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, (torch.SymInt, int)):
        return "size"
    return "other"


def export_module(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` with dim 0 dynamic (an example of batch 1 is doubled: export specialises 1)."""
    if example.shape[0] < 2:
        example = torch.cat([example, example])
    module = module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},))
    except Exception as error:  # noqa: BLE001 - export's errors are many; the message is what matters
        raise ImportSourceError(
            f"cannot trace the model with a dynamic batch dimension ({type(error).__name__}): "
            f"{str(error).splitlines()[0] if str(error) else ''}") from error


def _convert(value: Any, weights: dict[str, torch.Tensor], uses: list[str], node: fx.Node) -> Any:
    """An fx argument as a graph argument: weights as ``Param``, values as ``Ref`` (recorded in ``uses``)."""
    if isinstance(value, fx.Node):
        if value.name in weights:
            return Param(value.name)
        uses.append(value.name)
        return Ref(value.name)
    if isinstance(value, (list, tuple)):
        return [_convert(item, weights, uses, node) for item in value]
    if isinstance(value, torch.device):
        if value.type != "cpu":
            raise UnsupportedOpError(f"{node.target} pins device {value}")
        return None
    return value


def lower(program: torch.export.ExportedProgram) -> TracedModel:
    """The exported graph as ``TracedNode``s (weights as ``Param``), refusing ops outside the whitelist."""
    signature = program.graph_signature
    weights: dict[str, torch.Tensor] = {}
    user_inputs: list[fx.Node] = []
    specs = {spec.arg.name: spec for spec in signature.input_specs}
    state = {**program.state_dict, **program.constants}
    nodes: list[TracedNode] = []
    unsupported: set[str] = set()
    output_name = ""
    graph_nodes = list(program.graph.nodes)
    for node in graph_nodes:
        if node.op == "placeholder":
            spec = specs[node.name]
            if spec.kind == InputKind.USER_INPUT:
                user_inputs.append(node)
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                weights[node.name] = state[spec.target].detach().contiguous().clone()
            else:
                raise ImportSourceError(f"unsupported model input {node.name!r} of kind {spec.kind}")
        elif node.op == "output":
            outputs = fx.node.map_arg(node.args[0], lambda n: n)
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            if len(outputs) != 1 or not isinstance(outputs[0], fx.Node):
                raise ImportSourceError(
                    f"the model returns {len(outputs)} values; a classifier returns one logits tensor")
            output_name = outputs[0].name
        elif node.op == "call_function":
            op = _functional(_op_name(node.target))
            if op != _op_name(node.target):
                mutated = node.args[0]
                later = [user for user in mutated.users if graph_nodes.index(user) > graph_nodes.index(node)]
                if later:
                    raise UnsupportedOpError(f"in-place op {node.target} on a value read again afterwards")
            if op not in OPS:
                unsupported.add(op)
            uses: list[str] = []
            args = [_convert(arg, weights, uses, node) for arg in node.args]
            kwargs = {key: _convert(value, weights, uses, node)
                      for key, value in node.kwargs.items() if key not in _DROPPED_KWARGS}
            value = node.meta.get("val")
            kind = _kind(value)
            nodes.append(TracedNode(
                name=node.name, op=op, args=args, kwargs=kwargs, uses=tuple(dict.fromkeys(uses)), kind=kind,
                symbolic_shape=tuple(str(dim) for dim in value.shape) if kind == "tensor" else (),
                expression=str(value) if kind == "size" else ""))
        else:
            raise ImportSourceError(f"unsupported graph node {node.op} {node.target}")
    if unsupported:
        raise UnsupportedOpError(f"ops outside the whitelist (zoo.graph.OPS): {', '.join(sorted(unsupported))}")
    if len(user_inputs) != 1:
        raise ImportSourceError(f"the model takes {len(user_inputs)} inputs; an importable classifier takes one")
    source = user_inputs[0].meta["val"]
    return TracedModel(
        input_name=user_inputs[0].name, input_shape=tuple(int(dim) for dim in source.shape[1:]),
        input_symbolic_shape=tuple(str(dim) for dim in source.shape), output_name=output_name,
        nodes=nodes, weights=weights)


def _resolve(value: Any, env: dict[str, Any], weights: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, Ref):
        return env[value.name]
    if isinstance(value, Param):
        return weights[value.name]
    if isinstance(value, list):
        return [_resolve(item, env, weights) for item in value]
    return value


@torch.no_grad()
def measure(traced: TracedModel, sample: torch.Tensor) -> TracedModel:
    """Run the lowered graph on one sample: per-op output shapes and FLOPs (FlopCounterMode's count)."""
    env: dict[str, Any] = {traced.input_name: sample[:1]}
    measured: list[TracedNode] = []
    for node in traced.nodes:
        args = [_resolve(arg, env, traced.weights) for arg in node.args]
        kwargs = {key: _resolve(value, env, traced.weights) for key, value in node.kwargs.items()}
        with FlopCounterMode(display=False) as counter:
            value = OPS[node.op](*args, **kwargs)
        env[node.name] = value
        shape = tuple(value.shape[1:]) if isinstance(value, torch.Tensor) and value.dim() > 0 else ()
        measured.append(TracedNode(**{**node.__dict__, "shape": shape, "flops": int(counter.get_total_flops())}))
    return TracedModel(traced.input_name, traced.input_shape, traced.input_symbolic_shape, traced.output_name,
                       measured, traced.weights)


def trace(module: nn.Module, example: torch.Tensor) -> TracedModel:
    """Export, lower and measure ``module`` on ``example`` (a batch; dim 0 is the batch)."""
    return measure(lower(export_module(module, example)), example)

