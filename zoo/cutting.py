"""Cut points and partition: where a traced model can be split, and which K-1 cuts to use.

A cut after op *p* (in execution order) is a candidate when exactly one value is live there
(defined at or before *p*, read after it), that value is a tensor whose dim 0 is the batch,
and weights do not count (every block loads its own). Sizes derived from the batch
(``aten.sym_size.int`` and arithmetic on it) do not count either: a block recomputes them
from its own input. So a residual block, whose skip tensor is live beside the main path,
is never cut inside.

The partition picks K-1 candidates by dynamic programming over
``sum_blocks (flops_block / (total / K))**2 + BYTES_WEIGHT * sum_cuts bytes_cut / input_bytes``:
the squared term balances compute across blocks, the second prefers small boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zoo.errors import ImportSourceError, NoSingleTensorCutError
from zoo.graph import DTYPE_NAMES, BlockGraph, CandidateCut, GraphNode, Param, ParamSpec, encode_arg
from zoo.tracing import TracedModel, TracedNode

BYTES_WEIGHT = 0.1
_SIZE_OF = "aten.sym_size.int"


@dataclass(frozen=True)
class Block:
    """One block of a partition: its graph, its weights, and what the manifest says about it."""

    graph: BlockGraph
    weights: dict[str, torch.Tensor]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_bytes: int
    flops: int
    params: int


def _last_uses(traced: TracedModel) -> dict[str, int]:
    last: dict[str, int] = {}
    for position, node in enumerate(traced.nodes):
        if node.op == _SIZE_OF:
            continue  # recomputed from the block input: does not keep its tensor alive
        for name in node.uses:
            last[name] = position
    last[traced.output_name] = len(traced.nodes)
    return last


def live_values(traced: TracedModel) -> list[list[str]]:
    """For each cut position p (after op p), the values other than weights and sizes live there."""
    last = _last_uses(traced)
    defined = [(-1, traced.input_name, "tensor")] + [
        (position, node.name, node.kind) for position, node in enumerate(traced.nodes)]
    values = [(start, name) for start, name, kind in defined if kind != "size" and name in last]
    return [[name for start, name in values if start <= position < last[name]]
            for position in range(len(traced.nodes))]


def candidate_cuts(traced: TracedModel) -> list[CandidateCut]:
    """Every position where exactly one tensor (with the batch as dim 0) is live, in order."""
    batch = traced.input_symbolic_shape[0]
    cuts: list[CandidateCut] = []
    flops = 0
    for position, (node, live) in enumerate(zip(traced.nodes, live_values(traced), strict=True)):
        flops += node.flops
        if position == len(traced.nodes) - 1 or len(live) != 1:
            continue
        value = traced.node(live[0]) if live[0] != traced.input_name else None
        if value is None or value.kind != "tensor" or not value.symbolic_shape or value.symbolic_shape[0] != batch:
            continue
        cuts.append(CandidateCut(position=position, after=value.name, shape=list(value.shape),
                                 bytes=math.prod(value.shape) * 4, flops_before=flops))
    return cuts


def choose_partition(traced: TracedModel, cuts: list[CandidateCut], blocks: int) -> list[CandidateCut]:
    """The ``blocks - 1`` cuts that minimise the module docstring's cost (balanced FLOPs, small cuts)."""
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    if blocks - 1 > len(cuts):
        raise NoSingleTensorCutError(
            f"cannot cut the model into {blocks} blocks: it has {len(cuts)} point(s) where exactly one "
            f"tensor is live (needs {blocks - 1}); branches that stay live across the graph (skip "
            f"connections, multiple inputs to one op) leave no single-tensor cut")
    total = sum(node.flops for node in traced.nodes)
    ideal = max(total / blocks, 1.0)
    input_bytes = max(math.prod(traced.input_shape) * 4, 1)
    ends = [0] + [cut.flops_before for cut in cuts] + [total]  # FLOPs done at each boundary
    penalty = [0.0] + [BYTES_WEIGHT * cut.bytes / input_bytes for cut in cuts] + [0.0]
    count = len(ends)
    best = [[math.inf] * count for _ in range(blocks + 1)]
    back = [[-1] * count for _ in range(blocks + 1)]
    best[0][0] = 0.0
    for used in range(1, blocks + 1):
        for end in range(1, count):
            for start in range(used - 1, end):
                if best[used - 1][start] == math.inf:
                    continue
                cost = best[used - 1][start] + ((ends[end] - ends[start]) / ideal) ** 2 + penalty[end]
                if cost < best[used][end]:
                    best[used][end], back[used][end] = cost, start
    chosen: list[CandidateCut] = []
    end = count - 1
    for used in range(blocks, 0, -1):
        end = back[used][end]
        if used > 1:
            chosen.append(cuts[end - 1])
    return chosen[::-1]


def _params_of(values: list[object]) -> list[str]:
    names: list[str] = []
    for value in values:
        if isinstance(value, Param):
            names.append(value.name)
        elif isinstance(value, list):
            names.extend(_params_of(value))
    return names


def _block(traced: TracedModel, index: int, first: int, last: int, input_name: str, output_name: str,
           input_symbolic: tuple[str, ...]) -> Block:
    """Ops (first, last] as a block reading ``input_name``; dead ops dropped, sizes recomputed."""
    by_name = {node.name: node for node in traced.nodes}
    span = traced.nodes[first + 1:last + 1]
    needed = {output_name}
    kept: list[TracedNode] = []
    for node in reversed(span):
        if node.name in needed:
            kept.append(node)
            needed.update(node.uses)
    kept.reverse()
    emitted: list[GraphNode] = []
    defined = {input_name}

    def size_from_input(name: str) -> None:
        """Emit ``name`` (a batch-derived size defined outside the block) from the block input's shape."""
        if name in defined:
            return
        node = by_name[name]
        if node.expression in input_symbolic:
            emitted.append(GraphNode(name=name, op=_SIZE_OF,
                                     args=[{"ref": input_name}, input_symbolic.index(node.expression)]))
        elif node.op.startswith("operator.") and all(by_name[use].kind == "size" for use in node.uses):
            for use in node.uses:
                size_from_input(use)
            emitted.append(GraphNode(name=name, op=node.op, args=encode_arg(node.args), kwargs=encode_arg_dict(node)))
        else:
            raise ImportSourceError(f"size {name} ({node.expression}) crosses a cut and is not a dim of "
                                    f"the block input {input_name} {list(input_symbolic)}")
        defined.add(name)

    for node in kept:
        if node.op == _SIZE_OF and node.uses and node.uses[0] not in defined:
            size_from_input(node.name)
            continue
        for use in node.uses:
            if use not in defined:
                if by_name.get(use) is None or by_name[use].kind != "size":
                    raise ImportSourceError(f"op {node.name} in block {index} reads {use}, defined in another block")
                size_from_input(use)
        emitted.append(GraphNode(name=node.name, op=node.op, args=encode_arg(node.args), kwargs=encode_arg_dict(node)))
        defined.add(node.name)
    param_names = list(dict.fromkeys(
        name for node in kept for name in _params_of([*node.args, *node.kwargs.values()])))
    weights = {name: traced.weights[name] for name in param_names}
    params = {name: ParamSpec(shape=list(tensor.shape), dtype=DTYPE_NAMES[tensor.dtype])
              for name, tensor in weights.items()}
    input_shape = traced.input_shape if input_name == traced.input_name else by_name[input_name].shape
    output_shape = by_name[output_name].shape
    return Block(
        graph=BlockGraph(index=index, input=input_name, output=output_name, params=params, nodes=emitted),
        weights=weights, input_shape=tuple(input_shape), output_shape=tuple(output_shape),
        output_bytes=math.prod(output_shape) * 4, flops=sum(node.flops for node in span),
        params=sum(tensor.numel() for tensor in weights.values() if tensor.is_floating_point()))


def encode_arg_dict(node: TracedNode) -> dict[str, object]:
    return {key: encode_arg(value) for key, value in node.kwargs.items()}


def partition(traced: TracedModel, chosen: list[CandidateCut]) -> list[Block]:
    """The blocks between consecutive chosen cuts (the last block ends in the model's output)."""
    bounds = [(-1, traced.input_name, traced.input_symbolic_shape)]
    by_name = {node.name: node for node in traced.nodes}
    for cut in chosen:
        bounds.append((cut.position, cut.after, by_name[cut.after].symbolic_shape))
    blocks: list[Block] = []
    for index, (first, input_name, symbolic) in enumerate(bounds):
        last, output_name = ((bounds[index + 1][0], bounds[index + 1][1]) if index + 1 < len(bounds)
                             else (len(traced.nodes) - 1, traced.output_name))
        blocks.append(_block(traced, index, first, last, input_name, output_name, symbolic))
    return blocks
