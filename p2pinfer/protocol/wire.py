"""The binary frame (``application/x-p2pinfer``): a typed msgpack header plus raw tensor bytes.

Layout, offsets counted from the first byte of the frame::

    [4-byte big-endian uint32 N][N bytes msgpack header][pad][tensor 0][pad][tensor 1]...

Each ``pad`` is 0 to 7 zero bytes that move the next tensor to an offset that is a multiple of
``TENSOR_ALIGNMENT`` (8, the largest item size we carry); the frame ends exactly at the last
tensor's last byte. The padding is there because the receiver hands the decoded arrays to
torch without copying, and torch's kernels assume naturally aligned storage: a misaligned
float32 pointer is undefined behaviour (garbage or SIGBUS on the ARM boards this runs on).
Python ``bytes``/``bytearray`` buffers start 16-byte aligned, so offsets aligned within the
frame stay aligned in memory.

The header is any msgspec Struct with ``version: int`` and ``tensors: list[TensorSpec]``
(subclass ``FrameHeader`` to get both); ``tensors`` describes the raw tensors in order (name,
dtype, C-order shape, nbytes, little endian). ``decode_frame`` reads a lenient envelope of
those two fields first, so a header from another version is refused as such
(``UnsupportedVersion``) instead of failing on whatever field that version renamed.

Tensors are never pickled and never passed to ``torch.load``: they are raw bytes that
``numpy.frombuffer`` views in place.
"""

from __future__ import annotations

import math
import struct
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import numpy as np

from p2pinfer.errors import (
    BadDtype,
    BadHeader,
    BadRequest,
    BadShape,
    NestedTooDeeply,
    NonFiniteInput,
    PayloadTooLarge,
    TruncatedBody,
    UnsupportedVersion,
)
from p2pinfer.protocol.schema import WIRE_VERSION, InferRequest, PlanSegment, TensorSpec
from selector.qoe import QoEWeights

CONTENT_TYPE = "application/x-p2pinfer"
"""Media type of a binary frame."""

INPUT_TENSOR = "input"
"""Name of the model input tensor in an ``InferFrameHeader`` frame."""

IMAGE_TENSOR = "image"
"""Name of the encoded image (1-D uint8 JPEG/PNG bytes) in a frame whose header has ``image_type``."""

MAX_HEADER_BYTES = 64 * 1024
"""Default limit on the msgpack header: headers are small, a huge one is garbage or an attack."""

TENSOR_ALIGNMENT = 8
"""Every tensor starts at a frame offset that is a multiple of this (see the module docstring)."""

MAX_DIMENSIONS = 32
"""Shapes with more axes are refused (numpy's own limit is 64)."""

MAX_ELEMENTS = 2**40
"""A dimension this large can only be an attack on an empty tensor's allocation."""

LENGTH_PREFIX = struct.Struct(">I")

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # raw bits: numpy has no bfloat16, see ``to_torch``
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
"""Wire dtype name -> the numpy dtype its bytes decode to (always little endian)."""

FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})

_PADDING = bytes(TENSOR_ALIGNMENT)

HeaderT = TypeVar("HeaderT", bound=msgspec.Struct)
TensorLike = Any  # np.ndarray | torch.Tensor; torch is optional, so not named in annotations


class FrameHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of frame headers: subclass it and add the message's own fields.

    ``tensors`` is filled in by ``encode_frame`` from the arrays it is given; leave it empty.
    """

    version: int = WIRE_VERSION
    tensors: list[TensorSpec] = []


class FrameEnvelope(msgspec.Struct, frozen=True):
    """The two fields every header has, read before the typed header (unknown fields ignored)."""

    version: int
    tensors: list[TensorSpec] = []


class InferFrameHeader(FrameHeader, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Header of a binary ``POST /v1/infer``: ``InferRequest``'s fields, the input rides as the
    frame's tensor named ``input`` (``INPUT_TENSOR``) instead of in ``data``; with ``image_type``
    ("image/jpeg" | "image/png") the frame carries the encoded image as ``image`` instead."""

    deadline_ms: float
    family: str = "digits-cnn"
    user: str = "anonymous"
    qoe: QoEWeights = QoEWeights()
    variant: str | None = None
    exit: int | None = None
    confidence_threshold: float | None = None
    min_accuracy: float | None = None
    request_id: str | None = None
    plan: list[PlanSegment] | None = None
    image_type: str | None = None

    def to_request(self) -> InferRequest:
        """The same request as the JSON route's ``InferRequest`` (``data`` left empty)."""
        return InferRequest(
            deadline_ms=self.deadline_ms,
            family=self.family,
            user=self.user,
            qoe=self.qoe,
            variant=self.variant,
            exit=self.exit,
            confidence_threshold=self.confidence_threshold,
            min_accuracy=self.min_accuracy,
            request_id=self.request_id,
            plan=self.plan,
            version=self.version,
        )

    @classmethod
    def from_request(cls, request: InferRequest) -> InferFrameHeader:
        return cls(
            deadline_ms=request.deadline_ms,
            family=request.family,
            user=request.user,
            qoe=request.qoe,
            variant=request.variant,
            exit=request.exit,
            confidence_threshold=request.confidence_threshold,
            min_accuracy=request.min_accuracy,
            request_id=request.request_id,
            plan=request.plan,
            version=request.version,
        )


_header_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(FrameEnvelope)
_header_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def _aligned(offset: int) -> int:
    return (offset + TENSOR_ALIGNMENT - 1) & ~(TENSOR_ALIGNMENT - 1)


def _torch_module() -> Any:
    """torch if something already imported it: a torch tensor cannot exist otherwise, and the
    client must work (and import fast) without torch."""
    return sys.modules.get("torch")


def as_wire_array(value: TensorLike) -> tuple[np.ndarray, str]:
    """A C-contiguous little-endian numpy array of ``value`` and its wire dtype name.

    Copies only when it must (non-contiguous, big endian, or on an accelerator); bfloat16 torch
    tensors come back as their raw uint16 bits.
    """
    torch = _torch_module()
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.resolve_conj().resolve_neg().contiguous()
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(np.uint16), "bfloat16"
        name = str(tensor.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise BadDtype(f"tensor dtype {name} cannot travel on the wire (supported: {', '.join(DTYPES)})")
        return tensor.numpy(), name
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    name = array.dtype.name
    if name == "bfloat16":  # ml_dtypes' bfloat16, if the caller uses it
        array = array.view(np.uint16)
    elif name not in DTYPES:
        raise BadDtype(f"array dtype {name} cannot travel on the wire (supported: {', '.join(DTYPES)})")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array, name


def encode_frame(header: HeaderT, tensors: Mapping[str, TensorLike] | None = None) -> list[bytes | memoryview]:
    """Encode a frame as a list of parts to write back to back, without copying tensor bytes.

    ``header`` must have ``version`` and ``tensors`` fields (see ``FrameHeader``); its
    ``tensors`` is replaced by the specs of ``tensors`` (numpy arrays or torch tensors, in
    the mapping's order). The parts are the length prefix + header, padding, and flat
    ``uint8`` memoryviews of the arrays: they alias the caller's memory, so do not modify the
    arrays until the parts are written. ``b"".join(parts)`` is the frame.
    """
    specs: list[TensorSpec] = []
    views: list[memoryview] = []
    for name, value in (tensors or {}).items():
        array, dtype_name = as_wire_array(value)
        specs.append(TensorSpec(name=name, dtype=dtype_name, shape=list(array.shape), nbytes=array.nbytes))
        views.append(array.reshape(-1).view(np.uint8).data)  # .data: the array's memoryview
    header_bytes = _header_encoder.encode(msgspec.structs.replace(header, tensors=specs))
    offset = LENGTH_PREFIX.size + len(header_bytes)
    head = LENGTH_PREFIX.pack(len(header_bytes)) + header_bytes
    if views:  # the first tensor's padding rides with the header: one part fewer
        head += _PADDING[:_aligned(offset) - offset]
        offset = _aligned(offset)
    parts: list[bytes | memoryview] = [head]
    for index, view in enumerate(views):
        padding = _aligned(offset) - offset
        if index and padding:
            parts.append(_PADDING[:padding])
            offset += padding
        if view.nbytes:
            parts.append(view)
        offset += view.nbytes
    return parts


def encode_frame_bytes(header: HeaderT, tensors: Mapping[str, TensorLike] | None = None) -> bytes:
    """The frame as one ``bytes`` (one copy of the tensor bytes), for transports that need it."""
    return b"".join(encode_frame(header, tensors))


def frame_length(parts: Sequence[bytes | memoryview]) -> int:
    """Total byte length of encoded parts (the Content-Length)."""
    return sum(len(part) if isinstance(part, bytes) else part.nbytes for part in parts)


def _header_decoder(header_type: type) -> msgspec.msgpack.Decoder[Any]:
    decoder = _header_decoders.get(header_type)
    if decoder is None:
        decoder = _header_decoders[header_type] = msgspec.msgpack.Decoder(header_type)
    return decoder


def check_shape(shape: Sequence[int], name: str = "input") -> None:
    """``BadShape`` for a shape numpy would choke on (negative, too many axes, or a huge axis
    beside a zero one, which makes an empty array no byte count can bound)."""
    if any(dim < 0 for dim in shape):
        raise BadShape(f"{name} has a negative dimension in shape {list(shape)}")
    if len(shape) > MAX_DIMENSIONS:
        raise BadShape(f"{name} has {len(shape)} dimensions, over the limit of {MAX_DIMENSIONS}")
    if any(dim > MAX_ELEMENTS for dim in shape):
        raise BadShape(f"{name} has an absurd dimension in shape {list(shape)}")


def _check_spec(spec: TensorSpec) -> np.dtype:
    dtype = DTYPES.get(spec.dtype)
    if dtype is None:
        raise BadDtype(f"tensor {spec.name!r} has dtype {spec.dtype!r}; supported: {', '.join(DTYPES)}")
    shape = spec.shape
    if len(shape) > MAX_DIMENSIONS or (shape and (min(shape) < 0 or max(shape) > MAX_ELEMENTS)):
        check_shape(shape, f"tensor {spec.name!r}")  # says what is wrong (the usual shape costs two builtins)
    needed = math.prod(spec.shape) * dtype.itemsize
    if needed != spec.nbytes:
        raise BadShape(
            f"tensor {spec.name!r}: shape {spec.shape} of {spec.dtype} needs {needed} bytes, "
            f"but the header says nbytes={spec.nbytes}"
        )
    return dtype


def decode_frame(
    body: bytes | bytearray | memoryview,
    header_type: type[HeaderT],
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> tuple[HeaderT, dict[str, np.ndarray]]:
    """Decode a frame into its typed header and ``{name: array}`` in frame order.

    The arrays are views into ``body`` (no copy): read-only when ``body`` is ``bytes``, and
    they keep ``body`` alive. Use ``to_torch`` (or ``torch.from_numpy``, which warns about
    read-only arrays) and do not write to the resulting tensors; copy first if you must.
    A tensor whose bytes happen to be misaligned in memory (a ``memoryview`` sliced at an odd
    offset) is copied instead, so torch never sees a misaligned pointer.

    Raises ``TruncatedBody``, ``PayloadTooLarge`` (header over ``max_header_bytes``),
    ``BadHeader`` (naming the field), ``UnsupportedVersion``, ``BadDtype``, ``BadShape`` or
    ``BadRequest`` (trailing bytes), each with a message that says what is wrong.
    """
    view = body if isinstance(body, memoryview) else memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    length = len(view)
    if length < LENGTH_PREFIX.size:
        raise TruncatedBody(f"frame is {length} bytes, shorter than its 4-byte header length prefix")
    (header_length,) = LENGTH_PREFIX.unpack_from(view)
    if header_length > max_header_bytes:
        raise PayloadTooLarge(
            f"frame header length is {header_length} bytes, over the {max_header_bytes}-byte limit "
            f"(is the body really {CONTENT_TYPE}?)"
        )
    header_end = LENGTH_PREFIX.size + header_length
    if header_end > length:
        raise TruncatedBody(
            f"frame declares a {header_length}-byte header but only {length - LENGTH_PREFIX.size} bytes follow"
        )
    header_view = view[LENGTH_PREFIX.size:header_end]
    try:
        envelope = _envelope_decoder.decode(header_view)
    except msgspec.DecodeError as error:
        raise BadHeader(f"bad frame header: {error}") from None
    except RecursionError:
        raise NestedTooDeeply("frame header nested too deeply to decode") from None
    if envelope.version != WIRE_VERSION:
        raise UnsupportedVersion(
            f"frame header version {envelope.version} is not supported (this side speaks version {WIRE_VERSION})"
        )
    try:
        header = _header_decoder(header_type).decode(header_view)
    except msgspec.DecodeError as error:
        raise BadHeader(f"bad frame header: {error}") from None
    except RecursionError:
        raise NestedTooDeeply("frame header nested too deeply to decode") from None

    layout: list[tuple[TensorSpec, np.dtype, int]] = []
    offset = header_end
    for spec in envelope.tensors:
        dtype = _check_spec(spec)
        offset = _aligned(offset)
        layout.append((spec, dtype, offset))
        offset += spec.nbytes
    if len(layout) > 1 and len({spec.name for spec, _, _ in layout}) != len(layout):
        raise BadHeader(f"frame header names a tensor twice: {[spec.name for spec, _, _ in layout]}")
    if offset > length:
        declared = sum(spec.nbytes for spec in envelope.tensors)
        raise TruncatedBody(
            f"frame header declares {declared} tensor bytes, but the body ends {offset - length} bytes early"
        )
    if offset < length:
        raise BadRequest(f"frame has {length - offset} trailing bytes after its last tensor")

    arrays: dict[str, np.ndarray] = {}
    for spec, dtype, start in layout:
        count = spec.nbytes // dtype.itemsize
        if count == 0:
            arrays[spec.name] = np.empty(spec.shape, dtype=dtype)
            continue
        array = np.frombuffer(view, dtype=dtype, count=count, offset=start).reshape(spec.shape)
        if not array.flags.aligned:
            array = array.copy()
        arrays[spec.name] = array
    return header, arrays


def to_torch(array: np.ndarray, dtype_name: str | None = None) -> Any:
    """A torch tensor sharing ``array``'s memory; ``dtype_name="bfloat16"`` reinterprets the
    raw uint16 bits a bfloat16 wire tensor decodes to.

    A decoded array is usually read-only (a view of the request body): torch cannot mark a
    tensor read-only, so this silences its warning, and the caller must not write in place
    (``.clone()`` first if a kernel would). Big-endian or misaligned arrays are copied.
    """
    import torch

    if array.dtype.byteorder == ">" or not array.flags.aligned:
        array = array.astype(array.dtype.newbyteorder("="), copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if dtype_name == "bfloat16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)


def _has_non_finite(array: np.ndarray, dtype_name: str) -> bool:
    if dtype_name == "bfloat16":  # raw bits: all exponent bits set means Inf or NaN
        return bool(np.any((array.view(np.uint16) & 0x7F80) == 0x7F80))
    return not bool(np.isfinite(array).all())


def validate_input(
    array: np.ndarray,
    expected_shape: Sequence[int],
    allowed_dtypes: Sequence[str] = ("float32",),
    *,
    model: str = "the model",
    dtype_name: str | None = None,
    max_batch: int | None = None,
    name: str = "input",
) -> np.ndarray:
    """Check a model input and return it with a batch axis.

    ``expected_shape`` is one sample's shape (no batch axis). A single sample without the
    batch axis gets one added (a view). ``dtype_name`` overrides the array's own dtype name,
    for bfloat16 tensors that decode to raw uint16. Raises ``BadShape`` (the message shows
    both shapes, e.g. "input shape [1, 9, 9] does not match digits-cnn's [N, 1, 8, 8]"),
    ``BadDtype`` or ``NonFiniteInput`` (NaN/Inf in a floating point input).
    """
    expected = list(expected_shape)
    shape = list(array.shape)
    if shape == expected:
        array = array[np.newaxis]
    elif not (len(shape) == len(expected) + 1 and shape[1:] == expected):
        raise BadShape(f"{name} shape {shape} does not match {model}'s {_batched_shape(expected)}")
    if array.shape[0] == 0:
        raise BadShape(f"{name} shape {shape} is an empty batch; {model} expects {_batched_shape(expected)} "
                       f"with N >= 1")
    if max_batch is not None and array.shape[0] > max_batch:
        raise BadShape(f"{name} batch of {array.shape[0]} is over {model}'s limit of {max_batch}")
    actual_dtype = dtype_name or _dtype_name(array.dtype)
    if actual_dtype not in allowed_dtypes:
        accepted = ", ".join(allowed_dtypes)
        raise BadDtype(f"{name} dtype {actual_dtype} is not accepted by {model} (accepted: {accepted})")
    if actual_dtype in FLOAT_DTYPES and _has_non_finite(array, actual_dtype):
        raise NonFiniteInput(f"{name} contains NaN or Inf values")
    return array


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, remembered: numpy computes it in Python on every read (2.7 µs, a third
    of checking an input)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = dtype.name
        if len(_DTYPE_NAMES) < 256:  # dtypes of decoded arrays: a handful, structured ones aside
            _DTYPE_NAMES[dtype] = name
    return name


def _batched_shape(expected: list[int]) -> str:
    return f"[N, {', '.join(map(str, expected))}]" if expected else "[N]"


_INTEGER_KINDS = frozenset("iu")
_ACCEPTED_KINDS: dict[str, frozenset[str]] = {
    "f": frozenset("iuf"),  # JSON numbers for a float tensor: integers or floats
    "i": _INTEGER_KINDS,  # integer tensors: integers only, never silently truncated floats
    "u": _INTEGER_KINDS,
    "b": frozenset("b"),  # bool tensors: true/false only
}


def json_tensor(data: Any, dtype: str = "float32", shape: Sequence[int] | None = None, *,
                name: str = "input") -> np.ndarray:
    """A numpy array from JSON data (nested lists, or a flat row-major list with ``shape``).

    Refuses what numpy would otherwise accept silently: ragged lists (``BadShape``), strings,
    nulls, floats for an integer dtype, values out of the dtype's range (``BadDtype``), and a
    value count that does not fill ``shape`` (``BadShape``). Meant for small inputs; send a
    binary frame for big ones.
    """
    target = DTYPES.get(dtype)
    if target is None or dtype == "bfloat16":
        supported = ", ".join(name for name in DTYPES if name != "bfloat16")
        raise BadDtype(f"{name}: dtype {dtype!r} is not supported for JSON data (supported: {supported})")
    if not isinstance(data, list):
        raise BadShape(f"{name}: data must be a (nested) list of numbers, got {type(data).__name__}")
    try:
        parsed = np.array(data)
    except ValueError as error:
        raise BadShape(f"{name}: data is a ragged nested list ({error})") from None
    except (OverflowError, TypeError) as error:
        raise BadDtype(f"{name}: data cannot be read as numbers ({error})") from None
    if parsed.size and parsed.dtype.kind not in _ACCEPTED_KINDS[target.kind]:
        raise BadDtype(f"{name}: data holds {_describe_kind(parsed)} values, which a {dtype} tensor cannot take")
    if target.kind in _INTEGER_KINDS and parsed.size:
        limits = np.iinfo(target)
        if parsed.min() < limits.min or parsed.max() > limits.max:
            raise BadDtype(f"{name}: data has values outside {dtype}'s range [{limits.min}, {limits.max}]")
    with np.errstate(over="ignore"):  # 1e39 as float32 becomes inf: validate_input names it
        array = parsed.astype(target, copy=False)
    if shape is not None:
        shape = list(shape)
        check_shape(shape, name)
        if array.size != math.prod(shape):
            raise BadShape(f"{name}: data has {array.size} values but shape {shape} needs {math.prod(shape)}")
        if list(array.shape) != shape:
            array = array.reshape(shape)
    return array


def _describe_kind(array: np.ndarray) -> str:
    return {"U": "string", "S": "string", "O": "null, mixed or out-of-range", "f": "non-integer",
            "b": "boolean", "i": "integer", "u": "integer", "c": "complex"}.get(array.dtype.kind, array.dtype.name)
