"""ONNX to a torch module, for the standard CNN-classifier op set (only the ``onnx`` package parses).

Why not onnx2torch: it imports torchvision at import time, and PyPI's torchvision does not
import beside this project's torch build. The module built here interprets the ONNX nodes
in order with torch functions, so ``torch.export`` traces it like any other model.

Values are tensors (data), numpy arrays (initializers and ``Constant`` outputs, folded where
all inputs are constant) or lists of ints (``Shape`` outputs, whose batch entry stays symbolic
under export). Float initializers become buffers. A constant ``Reshape`` target whose first
entry is the model's static batch size (usually 1) is read as "the batch" so that models
exported with batch 1 still run at any batch size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ImportSourceError, UnsupportedOpError

Value = Any  # torch.Tensor | np.ndarray | list[int]


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _ints(value: Value) -> list[int]:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, np.ndarray):
        return [int(item) for item in value.reshape(-1)]
    raise UnsupportedOpError(f"expected a constant or shape-derived list of ints, got {type(value).__name__}")


def _scalar(value: Value) -> float | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(-1)[0])
    raise UnsupportedOpError("expected a constant scalar")


class OnnxModule(nn.Module):
    """An ONNX graph run node by node with torch ops; one input, one output."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        self.opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 13)
        self.constants: dict[str, np.ndarray] = {}
        self.buffer_names: dict[str, str] = {}
        for initializer in graph.initializer:
            self.constants[initializer.name] = numpy_helper.to_array(initializer)
        initializer_names = set(self.constants)
        inputs = [value for value in graph.input if value.name not in initializer_names]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ImportSourceError(f"the ONNX graph has {len(inputs)} inputs and {len(graph.output)} outputs; "
                                    f"an importable classifier has one of each")
        self.input_name = inputs[0].name
        self.output_name = graph.output[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.input_dims: list[int | None] = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
        self.static_batch = self.input_dims[0] if self.input_dims else None
        self.nodes = [(node.op_type, list(node.input), list(node.output), _attributes(node)) for node in graph.node]
        unknown = sorted({op for op, *_ in self.nodes if op not in _HANDLERS})
        if unknown:
            raise UnsupportedOpError(f"ONNX ops the importer cannot convert: {', '.join(unknown)}")
        self._fold_constants()
        for index, (name, array) in enumerate(self.constants.items()):
            if array.dtype.kind == "f" and array.size > 1:
                buffer = f"c{index}_{re.sub(r'[^A-Za-z0-9_]', '_', name)[:48]}"
                self.register_buffer(buffer, torch.from_numpy(array.astype(np.float32)))
                self.buffer_names[name] = buffer

    def _fold_constants(self) -> None:
        """Evaluate ops whose inputs are all constant (weights reshaped, Constant nodes) once, now."""
        remaining = []
        for op, inputs, outputs, attributes in self.nodes:
            present = [name for name in inputs if name]
            if op != "Shape" and all(name in self.constants for name in present):
                values: list[Value] = [self.constants[name] if name else None for name in inputs]
                values = [torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) and value.dtype.kind == "f"
                          else value for value in values]
                results = _HANDLERS[op](self, values, attributes)
                for name, result in zip(outputs, results, strict=False):
                    self.constants[name] = result.numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
            else:
                remaining.append((op, inputs, outputs, attributes))
        self.nodes = remaining

    def tensor(self, value: Value, like: torch.Tensor | None = None) -> Any:
        """A data-path operand: tensors as they are, constant scalars as Python numbers."""
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, np.ndarray) and value.size == 1 and (like is None or like.dim() >= value.ndim):
            return value.reshape(-1)[0].item()
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.copy())
        raise UnsupportedOpError(f"cannot use {type(value).__name__} as a tensor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Value] = {name: self.get_buffer(buffer) for name, buffer in self.buffer_names.items()}
        for name, array in self.constants.items():
            env.setdefault(name, array)
        env[self.input_name] = x
        for op, inputs, outputs, attributes in self.nodes:
            results = _HANDLERS[op](self, [env[name] if name else None for name in inputs], attributes)
            for name, result in zip(outputs, results, strict=False):
                env[name] = result
        return env[self.output_name]


# ----- handlers: (module, inputs, attributes) -> outputs ---------------------------------------

Handler = Callable[[OnnxModule, list[Value], dict[str, Any]], list[Value]]
_HANDLERS: dict[str, Handler] = {}


def _handler(*names: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for name in names:
            _HANDLERS[name] = function
        return function
    return register


def _symmetric_pads(pads: list[int], rank: int) -> tuple[list[int], list[int] | None]:
    """ONNX [b1, b2, ..., e1, e2, ...] as torch padding, or (zeros, F.pad order) when asymmetric."""
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return begin, None
    torch_pads: list[int] = []
    for start, stop in zip(reversed(begin), reversed(end), strict=True):
        torch_pads += [start, stop]
    return [0] * rank, torch_pads


def _auto_pads(attributes: dict[str, Any], x: torch.Tensor, kernel: list[int], strides: list[int],
               dilations: list[int]) -> list[int]:
    rank = len(kernel)
    mode = attributes.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        return list(attributes.get("pads", [0] * 2 * rank))
    if mode == "VALID":
        return [0] * 2 * rank
    begin, end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((-(-int(size) // s) - 1) * s + (k - 1) * d + 1 - int(size), 0)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin + end


@_handler("Conv")
def _conv(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    rank = weight.dim() - 2
    kernel = list(attributes.get("kernel_shape", weight.shape[2:]))
    strides = list(attributes.get("strides", [1] * rank))
    dilations = list(attributes.get("dilations", [1] * rank))
    padding, explicit = _symmetric_pads(_auto_pads(attributes, x, kernel, strides, dilations), rank)
    if explicit is not None:
        x = F.pad(x, explicit)
    convolution = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(rank)
    if convolution is None:
        raise UnsupportedOpError(f"Conv of rank {rank}")
    return [convolution(x, weight, bias, strides, padding, dilations, int(attributes.get("group", 1)))]


@_handler("BatchNormalization")
def _batch_norm(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, scale, bias, mean, var = inputs[:5]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(attributes.get("epsilon", 1e-5)))]


@_handler("Relu")
def _relu(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [torch.relu(inputs[0])]


@_handler("LeakyRelu")
def _leaky_relu(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [F.leaky_relu(inputs[0], float(attributes.get("alpha", 0.01)))]


@_handler("Clip")
def _clip(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    low = _scalar(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else attributes.get("min")
    high = _scalar(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else attributes.get("max")
    if isinstance(inputs[0], torch.Tensor) and low is not None and high is not None:
        return [F.hardtanh(inputs[0], float(low), float(high))]
    return [torch.clamp(module.tensor(inputs[0]), low, high)]


@_handler("Sigmoid")
def _sigmoid(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [torch.sigmoid(inputs[0])]


@_handler("Tanh")
def _tanh(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [torch.tanh(inputs[0])]


@_handler("HardSigmoid")
def _hard_sigmoid(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    alpha, beta = float(attributes.get("alpha", 0.2)), float(attributes.get("beta", 0.5))
    return [torch.clamp(inputs[0] * alpha + beta, 0.0, 1.0)]


@_handler("HardSwish")
def _hard_swish(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [F.hardswish(inputs[0])]


def _arithmetic(function: Callable[[Any, Any], Any]) -> Handler:
    def handle(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
        left, right = inputs
        if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
            if isinstance(left, list) or isinstance(right, list):  # shape arithmetic, batch may be symbolic
                left_items = _ints(left)
                right_items = _ints(right)
                if len(left_items) == 1:
                    left_items = left_items * len(right_items)
                if len(right_items) == 1:
                    right_items = right_items * len(left_items)
                return [[function(a, b) for a, b in zip(left_items, right_items, strict=True)]]
            return [np.asarray(function(left, right)).astype(np.result_type(left, right))]
        if not isinstance(left, torch.Tensor):
            return [function(module.tensor(left, right), right)]
        return [function(left, module.tensor(right, left))]
    return handle


_HANDLERS["Add"] = _arithmetic(lambda a, b: a + b)
_HANDLERS["Sub"] = _arithmetic(lambda a, b: a - b)
_HANDLERS["Mul"] = _arithmetic(lambda a, b: a * b)
_HANDLERS["Div"] = _arithmetic(lambda a, b: a // b if isinstance(a, int) and isinstance(b, int) else a / b)


@_handler("GlobalAveragePool")
def _global_average_pool(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x.dim() == 4:
        return [F.adaptive_avg_pool2d(x, 1)]
    return [x.mean(dim=list(range(2, x.dim())), keepdim=True)]


@_handler("GlobalMaxPool")
def _global_max_pool(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    return [x.amax(dim=list(range(2, x.dim())), keepdim=True)]


def _pool_geometry(attributes: dict[str, Any], x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(attributes["kernel_shape"])
    strides = list(attributes.get("strides", [1] * len(kernel)))
    dilations = list(attributes.get("dilations", [1] * len(kernel)))
    return kernel, strides, dilations, _auto_pads(attributes, x, kernel, strides, dilations)


@_handler("MaxPool")
def _max_pool(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    kernel, strides, dilations, pads = _pool_geometry(attributes, x)
    if len(kernel) != 2:
        raise UnsupportedOpError(f"MaxPool of rank {len(kernel)}")
    padding, explicit = _symmetric_pads(pads, 2)
    if explicit is not None:
        x = F.pad(x, explicit, value=float("-inf"))
    return [F.max_pool2d(x, kernel, strides, padding, dilations, ceil_mode=bool(attributes.get("ceil_mode", 0)))]


@_handler("AveragePool")
def _average_pool(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    kernel, strides, _dilations, pads = _pool_geometry(attributes, x)
    include_pad = bool(attributes.get("count_include_pad", 0))
    if len(kernel) != 2:
        raise UnsupportedOpError(f"AveragePool of rank {len(kernel)}")
    padding, explicit = _symmetric_pads(pads, 2)
    if explicit is not None:
        if not include_pad:
            raise UnsupportedOpError("AveragePool with asymmetric padding and count_include_pad=0")
        x = F.pad(x, explicit)
    return [F.avg_pool2d(x, kernel, strides, padding, ceil_mode=bool(attributes.get("ceil_mode", 0)),
                         count_include_pad=include_pad)]


@_handler("Flatten")
def _flatten(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, axis = inputs[0], int(attributes.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    if axis == 0:
        return [x.reshape(1, -1)]
    return [x.flatten(axis) if axis == 1 else x.flatten(0, axis - 1).flatten(1)]


@_handler("Reshape")
def _reshape(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, target = inputs[0], _ints(inputs[1])
    constant = isinstance(inputs[1], np.ndarray)
    if not isinstance(x, torch.Tensor):
        return [np.reshape(np.asarray(x), target)]
    allow_zero = int(attributes.get("allowzero", 0))
    shape: list[Any] = [x.shape[i] if item == 0 and not allow_zero and i < x.dim() else item
                        for i, item in enumerate(target)]
    if constant and module.static_batch is not None and shape and shape[0] == module.static_batch and x.dim() > 0:
        shape[0] = x.shape[0]  # a batch-1 export's constant target: keep the actual batch
    return [x.reshape(shape)]


@_handler("Gemm")
def _gemm(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(attributes.get("alpha", 1.0)), float(attributes.get("beta", 1.0))
    if attributes.get("transA", 0):
        a = a.t()
    if attributes.get("transB", 0) and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1):
        return [F.linear(a, b, c)]
    if attributes.get("transB", 0):
        b = b.t()
    out = torch.matmul(a, b)
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        out = out + (module.tensor(c, out) * beta if beta != 1.0 else module.tensor(c, out))
    return [out]


@_handler("MatMul")
def _matmul(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [torch.matmul(module.tensor(inputs[0]), module.tensor(inputs[1]))]


@_handler("Concat")
def _concat(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    if any(isinstance(value, torch.Tensor) for value in inputs):
        return [torch.cat([module.tensor(value) for value in inputs], dim=int(attributes["axis"]))]
    if any(isinstance(value, list) for value in inputs):
        return [[item for value in inputs for item in _ints(value)]]
    return [np.concatenate(inputs, axis=int(attributes["axis"]))]


@_handler("Pad")
def _pad(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    pads = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else list(attributes["pads"])
    value = _scalar(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else attributes.get("value", 0.0)
    if len(inputs) > 3 and inputs[3] is not None:
        raise UnsupportedOpError("Pad with axes")
    mode = attributes.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    _, torch_pads = _symmetric_pads(pads, x.dim())
    if torch_pads is None:
        torch_pads = []
        for size in reversed(pads[:x.dim()]):
            torch_pads += [size, size]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # F.pad's non-constant modes pad only spatial dims
    if mode == "constant":
        return [F.pad(x, torch_pads, value=float(value or 0.0))]
    return [F.pad(x, torch_pads, mode={"edge": "replicate"}.get(mode, mode))]


def _axes(inputs: list[Value], attributes: dict[str, Any]) -> list[int] | None:
    if len(inputs) > 1 and inputs[1] is not None:
        return _ints(inputs[1])
    return list(attributes["axes"]) if "axes" in attributes else None


@_handler("ReduceMean")
def _reduce_mean(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, axes = inputs[0], _axes(inputs, attributes)
    if axes is None:
        axes = list(range(x.dim()))
    return [x.mean(dim=axes, keepdim=bool(attributes.get("keepdims", 1)))]


@_handler("Transpose")
def _transpose(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    perm = list(attributes.get("perm", reversed(range(x.dim()))))
    return [x.permute(perm) if isinstance(x, torch.Tensor) else np.transpose(x, perm)]


@_handler("Squeeze")
def _squeeze(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, axes = inputs[0], _axes(inputs, attributes)
    if isinstance(x, list):
        return [x[0]] if len(x) == 1 else [x]
    if isinstance(x, np.ndarray):
        return [np.squeeze(x, axis=tuple(axes) if axes is not None else None)]
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(axis % x.dim() for axis in axes))]


@_handler("Unsqueeze")
def _unsqueeze(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x, axes = inputs[0], _axes(inputs, attributes)
    if not isinstance(x, (torch.Tensor, np.ndarray)):  # a size taken from a Shape
        return [[x] if not isinstance(x, list) else x]
    # Unsqueeze's axes are required (an input from opset 13, an attribute before): the model
    # passed onnx.checker.check_model in load_onnx
    assert axes is not None
    if isinstance(x, np.ndarray):
        return [np.expand_dims(x, tuple(axes))]
    for axis in sorted(axis % (x.dim() + len(axes)) for axis in axes):
        x = x.unsqueeze(axis)
    return [x]


def _softmax(function: Callable[[torch.Tensor, int], torch.Tensor]) -> Handler:
    """Opset 13 normalises along ``axis``; earlier opsets along all dims from ``axis`` on, flattened."""
    def handle(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
        x = inputs[0]
        axis = int(attributes.get("axis", -1 if module.opset >= 13 else 1)) % x.dim()
        if module.opset >= 13 or axis == x.dim() - 1:
            return [function(x, axis)]
        flat = x.flatten(axis).flatten(0, axis - 1) if axis > 0 else x.reshape(1, -1)
        return [function(flat, -1).reshape(x.shape)]
    return handle


_HANDLERS["Softmax"] = _softmax(torch.softmax)
_HANDLERS["LogSoftmax"] = _softmax(torch.log_softmax)


@_handler("Identity", "Dropout")
def _identity(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    return [inputs[0]]


@_handler("Constant")
def _constant(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    from onnx import numpy_helper

    if "value" in attributes:
        return [numpy_helper.to_array(attributes["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attributes:
            return [np.asarray(attributes[key], dtype=dtype)]
    raise UnsupportedOpError(f"Constant with attributes {sorted(attributes)}")


@_handler("Shape")
def _shape(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    sizes = list(x.shape)
    start, end = int(attributes.get("start", 0)), attributes.get("end")
    return [sizes[start:None if end is None else int(end)]]


@_handler("Gather")
def _gather(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    data, indices = inputs
    axis = int(attributes.get("axis", 0))
    if isinstance(data, list):
        picked = [data[int(index)] for index in np.asarray(indices).reshape(-1)]
        return [picked[0] if np.asarray(indices).ndim == 0 else picked]
    if isinstance(data, np.ndarray):
        return [np.take(data, indices, axis=axis)]
    if not isinstance(indices, np.ndarray):
        raise UnsupportedOpError("Gather with computed indices")
    index = torch.from_numpy(indices.astype(np.int64).reshape(-1))
    out = data.index_select(axis, index)
    return [out.reshape([*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]])]


@_handler("Cast")
def _cast(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    from onnx import helper

    x = inputs[0]
    dtype = helper.tensor_dtype_to_np_dtype(int(attributes["to"]))
    if isinstance(x, list):
        return [x]
    if isinstance(x, np.ndarray):
        return [x.astype(dtype)]
    return [x.to({np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64}.get(np.dtype(dtype), x.dtype))]


@_handler("Slice")
def _slice(module: OnnxModule, inputs: list[Value], attributes: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if len(inputs) > 1:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(attributes["starts"]), list(attributes["ends"])
        axes, steps = list(attributes.get("axes", range(len(starts)))), [1] * len(starts)
    limit = 1 << 62
    if isinstance(x, list):
        return [x[starts[0]:None if ends[0] >= limit else ends[0]:steps[0]]]
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index = [slice(None)] * (x.ndim if isinstance(x, np.ndarray) else x.dim())
        index[axis] = slice(start, None if end >= limit else end, step)
        x = x[tuple(index)]
    return [x]


def load_onnx(path: Path | str) -> OnnxModule:
    """Parse an ONNX file (checked by ``onnx.checker``) into an ``OnnxModule``."""
    try:
        import onnx
    except ImportError:
        raise ImportSourceError("importing ONNX needs the onnx package: pip install 'p2pinfer[onnx]'") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (OSError, onnx.checker.ValidationError) as error:
        raise ImportSourceError(f"cannot read ONNX model {path}: {error}") from None
    return OnnxModule(model).eval()


def example_input(module: OnnxModule, input_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A batch-2 example of the graph's input (``input_shape`` fills symbolic or overrides dims)."""
    dims = list(input_shape) if input_shape is not None else module.input_dims[1:]
    sizes = [int(dim) for dim in dims if dim is not None and dim > 0]
    if len(sizes) != len(dims):
        raise ImportSourceError(f"the ONNX input has symbolic dims {module.input_dims}: pass --input-shape")
    return torch.randn(2, *sizes)
