"""The Open Inference Protocol (KServe v2, as Triton's HTTP endpoint speaks it): request and
response codec, framework-agnostic (the node's routes call these; no aiohttp here).

Existing v2 clients (tritonclient, KServe's SDK, curl) work against a node unchanged: inputs
arrive as JSON tensors ``{name, shape, datatype, data}`` with ``data`` flat or nested (row
major), or through Triton's binary tensor extension, where the request's first
``Inference-Header-Content-Length`` bytes are the JSON and each input with
``parameters.binary_data_size`` takes its raw little-endian bytes from what follows, in input
order. The per-request knobs of a native request (deadline, user, QoE weights, pinned
variant/exit, confidence threshold) ride in the request's ``parameters``, which the protocol
reserves for exactly that.

Errors are the typed ``p2pinfer.errors``; the node answers them through the one shared encoder
(``protocol/error_body.py``: ``{"error": message, "code": code}`` with their HTTP status, the
protocol's ``{"error": message}`` plus the code).

``BYTES`` inputs carry encoded images (JPEG/PNG, as Triton's image clients send them): one
element per batch row. In JSON an element is a string, base64 (what the KServe SDKs send for
binary content; ``{"b64": ...}`` is accepted too) or, when it is not valid base64, the raw
string's UTF-8 bytes (the spec's plain form); in the binary extension the input's bytes are,
per element, a 4-byte little-endian length and that many bytes (Triton's serialisation).
They come back as ``ParsedRequest.byte_inputs``; the node decodes them (``image_input``).

The response's ``parameters`` say what answered (``answer_parameters``): the variant and exit,
whether every row met its deadline, and, as JSON strings (the protocol's parameter values are
strings, numbers or booleans), the rows' request ids and each row's plan with the codec and
wire bytes of every hop, as a native answer's ``plan`` and ``timings`` do.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from p2pinfer.errors import BadDtype, BadHeader, BadRequest, BadShape, NestedTooDeeply, TruncatedBody
from p2pinfer.protocol.schema import InferRequest, InferResult, PlanSegment, SegmentTiming
from p2pinfer.protocol.wire import check_shape, json_tensor
from selector.qoe import QoEWeights

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
"""HTTP header of Triton's binary extension: length of the JSON part of the body."""

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

DATATYPES: dict[str, str] = {
    "FP32": "float32",
    "FP16": "float16",
    "FP64": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "UINT8": "uint8",
    "BOOL": "bool",
}
"""Protocol datatype -> numpy dtype name, for the datatypes a node accepts."""

_NUMPY_DTYPES = {datatype: np.dtype(name).newbyteorder("<") for datatype, name in DATATYPES.items()}
_DATATYPE_OF = {name: datatype for datatype, name in DATATYPES.items()}
_DATATYPE_OF_DTYPE = {np.dtype(name): datatype for name, datatype in _DATATYPE_OF.items()}

BYTES = "BYTES"
MAX_BYTES_ELEMENTS = 1024  # elements of one BYTES input: images, each one request
PROBABILITIES_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"


class RequestInput(msgspec.Struct, frozen=True):
    """``$request_input`` of the protocol."""

    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: dict[str, Any] = {}


class RequestOutput(msgspec.Struct, frozen=True):
    """``$request_output``: which outputs to return, and whether as binary data."""

    name: str
    parameters: dict[str, Any] = {}


class InferenceRequest(msgspec.Struct, frozen=True):
    """``$inference_request`` of the protocol."""

    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[RequestOutput] | None = None


class ParsedRequest(msgspec.Struct, frozen=True):
    """A decoded v2 request: numpy inputs in request order plus the knobs from ``parameters``."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    byte_inputs: dict[str, list[bytes]] = {}  # BYTES inputs: their elements, row major
    deadline_ms: float | None = None
    user: str | None = None
    qoe: QoEWeights | None = None
    variant: str | None = None
    exit: int | None = None
    confidence_threshold: float | None = None
    min_accuracy: float | None = None
    outputs: list[RequestOutput] | None = None
    binary_outputs: bool = False  # the request-level ``binary_data_output`` parameter
    parameters: dict[str, Any] = {}

    def input_images(self) -> list[bytes] | None:
        """The elements of the request's only input when it is ``BYTES`` (encoded images), else None."""
        if len(self.byte_inputs) == 1 and not self.inputs:
            return next(iter(self.byte_inputs.values()))
        if self.byte_inputs:
            raise BadRequest(f"a BYTES input must be the request's only input; it has "
                             f"{[*self.inputs, *self.byte_inputs]}")
        return None

    def input_array(self, name: str = "input") -> np.ndarray:
        """The input called ``name``, or the only input whatever its name (models here have one)."""
        if name in self.inputs:
            return self.inputs[name]
        if len(self.inputs) == 1:
            return next(iter(self.inputs.values()))
        raise BadRequest(f"expected an input named {name!r}; the request has {list(self.inputs)}")

    def infer_request(self, family: str, default_deadline_ms: float) -> InferRequest:
        """The native request these knobs describe (the input array stays separate)."""
        return InferRequest(
            deadline_ms=default_deadline_ms if self.deadline_ms is None else self.deadline_ms,
            family=family,
            user=self.user or "anonymous",
            qoe=self.qoe or QoEWeights(),
            variant=self.variant,
            exit=self.exit,
            confidence_threshold=self.confidence_threshold,
            min_accuracy=self.min_accuracy,
            request_id=self.id,
        )


_request_decoder = msgspec.json.Decoder(InferenceRequest)
_json_encoder = msgspec.json.Encoder()


def numpy_dtype_name(datatype: str, *, name: str = "input") -> str:
    """The numpy dtype name for a protocol datatype, or ``BadDtype`` naming what is accepted."""
    dtype_name = DATATYPES.get(datatype)
    if dtype_name is None:
        if datatype == BYTES:
            raise BadDtype(f"{name}: BYTES carries encoded images only ({BYTES} with JPEG/PNG elements)")
        raise BadDtype(f"{name}: datatype {datatype!r} is not supported ({', '.join(DATATYPES)})")
    return dtype_name


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of a numpy array (looked up by the dtype itself: ``dtype.name`` is
    built in Python, ~5 us, twice per answer)."""
    datatype = _DATATYPE_OF_DTYPE.get(array.dtype)
    if datatype is not None:
        return datatype
    datatype = _DATATYPE_OF.get(array.dtype.name)  # another byte order of a known type
    if datatype is None:
        raise BadDtype(f"dtype {array.dtype.name} has no Open Inference Protocol datatype here")
    return datatype


def parse_header_length(value: str | int | None, body_length: int) -> int | None:
    """The ``Inference-Header-Content-Length`` value as an int, or ``BadHeader``."""
    if value is None:
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise BadHeader(f"{HEADER_LENGTH_HEADER} must be an integer, got {value!r}") from None
    if not 0 < length <= body_length:
        raise BadHeader(f"{HEADER_LENGTH_HEADER} is {length}, but the body is {body_length} bytes")
    return length


def _number(parameters: dict[str, Any], key: str) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"parameter {key!r} must be a number, got {value!r}")
    return float(value)


def _integer(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"parameter {key!r} must be an integer, got {value!r}")
    return value


def _text(parameters: dict[str, Any], key: str) -> str | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"parameter {key!r} must be a string, got {value!r}")
    return value


def _qoe(parameters: dict[str, Any]) -> QoEWeights | None:
    weights = {field: _number(parameters, f"qoe_{field}") for field in ("accuracy", "latency", "energy")}
    given = {field: value for field, value in weights.items() if value is not None}
    if not given:
        return None
    invalid = [f"qoe_{field}" for field, value in given.items() if value < 0 or not math.isfinite(value)]
    if invalid:
        raise BadRequest(f"parameters {invalid} must be finite and non-negative")
    try:
        return QoEWeights(**given)
    except ValueError as error:  # all zero: selector's InvalidParameterError
        raise BadRequest(f"QoE parameters: {error}") from None


def _binary_input(spec: RequestInput, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    size = spec.parameters.get("binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"input {spec.name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if spec.data is not None:
        raise BadRequest(f"input {spec.name!r} has both binary_data_size and JSON data")
    dtype = _NUMPY_DTYPES[spec.datatype]
    needed = math.prod(spec.shape) * dtype.itemsize
    if size != needed:
        raise BadShape(
            f"input {spec.name!r}: shape {spec.shape} of {spec.datatype} needs {needed} bytes, "
            f"but binary_data_size is {size}"
        )
    if offset + size > len(binary):
        raise TruncatedBody(
            f"input {spec.name!r} needs {size} binary bytes, only {len(binary) - offset} are left in the body"
        )
    if size == 0:
        return np.empty(spec.shape, dtype=dtype), offset
    array = np.frombuffer(binary, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(spec.shape)
    if not array.flags.aligned:  # torch needs aligned storage (see p2pinfer.protocol.wire)
        array = array.copy()
    return array, offset + size


def _bytes_element(value: object, name: str) -> bytes:
    """One JSON element of a BYTES input: base64 (or ``{"b64": ...}``), else the raw string."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {name!r}: 'b64' is not valid base64") from None
    if not isinstance(value, str):
        raise BadDtype(f"input {name!r}: BYTES elements are strings (base64 or raw), got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode()


def _flatten(data: object) -> list[object]:
    if isinstance(data, list):
        return [item for element in data for item in _flatten(element)]
    return [data]


def _bytes_input(spec: RequestInput, binary: memoryview | None, offset: int) -> tuple[list[bytes], int]:
    """The elements of a BYTES input, from JSON ``data`` or the binary extension
    (per element: 4-byte little-endian length, then the bytes)."""
    count = math.prod(spec.shape)
    if count > MAX_BYTES_ELEMENTS:
        raise BadShape(f"input {spec.name!r}: {count} BYTES elements, at most {MAX_BYTES_ELEMENTS}")
    if binary is None:
        if spec.data is None:
            raise BadRequest(f"input {spec.name!r} has neither data nor binary_data_size")
        given = [_bytes_element(value, spec.name) for value in _flatten(spec.data)]
        if len(given) != count:
            raise BadShape(f"input {spec.name!r}: shape {spec.shape} needs {count} elements, data has {len(given)}")
        return given, offset
    size = spec.parameters.get("binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"input {spec.name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if spec.data is not None:
        raise BadRequest(f"input {spec.name!r} has both binary_data_size and JSON data")
    if offset + size > len(binary):
        raise TruncatedBody(
            f"input {spec.name!r} needs {size} binary bytes, only {len(binary) - offset} are left in the body")
    chunk = binary[offset:offset + size]
    elements: list[bytes] = []
    position = 0
    while position < size:
        if position + 4 > size:
            raise TruncatedBody(f"input {spec.name!r}: a BYTES element's 4-byte length is cut short")
        length = int.from_bytes(chunk[position:position + 4], "little")
        if position + 4 + length > size:
            raise TruncatedBody(f"input {spec.name!r}: a BYTES element of {length} bytes runs past "
                                f"binary_data_size ({size})")
        elements.append(bytes(chunk[position + 4:position + 4 + length]))
        position += 4 + length
    if len(elements) != count:
        raise BadShape(f"input {spec.name!r}: shape {spec.shape} needs {count} BYTES elements, "
                       f"the binary data holds {len(elements)}")
    return elements, offset + size


def parse_infer_request(body: bytes | bytearray | memoryview, header_length: str | int | None = None) -> ParsedRequest:
    """Decode ``POST /v2/models/{family}/infer``.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None for a plain
    JSON body). Binary inputs are views into ``body`` (no copy, read-only for ``bytes``).
    """
    view = body if isinstance(body, memoryview) else memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    length = parse_header_length(header_length, len(view))
    json_part = view if length is None else view[:length]
    try:
        request = _request_decoder.decode(json_part)
    except msgspec.DecodeError as error:
        raise BadRequest(f"bad inference request: {error}") from None
    except RecursionError:
        raise NestedTooDeeply("the inference request is nested too deeply to decode") from None
    if not request.inputs:
        raise BadRequest("the inference request has no inputs")

    binary = view[length:] if length is not None else view[len(view):]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    byte_inputs: dict[str, list[bytes]] = {}
    for spec in request.inputs:
        if spec.name in inputs or spec.name in byte_inputs:
            raise BadRequest(f"input {spec.name!r} appears twice")
        if spec.datatype == BYTES:
            check_shape(spec.shape, f"input {spec.name!r}")
            if "binary_data_size" in spec.parameters and length is None:
                raise BadRequest(
                    f"input {spec.name!r} has binary_data_size but the request has no {HEADER_LENGTH_HEADER} header")
            in_binary = binary if "binary_data_size" in spec.parameters else None
            byte_inputs[spec.name], offset = _bytes_input(spec, in_binary, offset)
            continue
        dtype_name = numpy_dtype_name(spec.datatype, name=f"input {spec.name!r}")
        check_shape(spec.shape, f"input {spec.name!r}")
        if "binary_data_size" in spec.parameters:
            if length is None:
                raise BadRequest(
                    f"input {spec.name!r} has binary_data_size but the request has no {HEADER_LENGTH_HEADER} header"
                )
            inputs[spec.name], offset = _binary_input(spec, binary, offset)
        elif spec.data is None:
            raise BadRequest(f"input {spec.name!r} has neither data nor binary_data_size")
        else:
            inputs[spec.name] = json_tensor(spec.data, dtype_name, spec.shape, name=f"input {spec.name!r}")
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes after the last binary input")

    parameters = request.parameters
    binary_outputs = parameters.get("binary_data_output", False)
    if not isinstance(binary_outputs, bool):
        raise BadRequest(f"parameter 'binary_data_output' must be a boolean, got {binary_outputs!r}")
    return ParsedRequest(
        inputs=inputs,
        id=request.id,
        byte_inputs=byte_inputs,
        deadline_ms=_number(parameters, "deadline_ms"),
        user=_text(parameters, "user"),
        qoe=_qoe(parameters),
        variant=_text(parameters, "variant"),
        exit=_integer(parameters, "exit"),
        confidence_threshold=_number(parameters, "confidence_threshold"),
        min_accuracy=_number(parameters, "min_accuracy"),
        outputs=request.outputs,
        binary_outputs=binary_outputs,
        parameters=parameters,
    )


def classification_outputs(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs every classifier here returns: ``probabilities`` FP32 [batch, classes] and
    ``label`` INT64 [batch] (argmax)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim == 1:
        probabilities = probabilities[np.newaxis]
    return {
        PROBABILITIES_OUTPUT: probabilities,
        LABEL_OUTPUT: probabilities.argmax(axis=1).astype(np.int64),
    }


def plan_hops(plan: Sequence[PlanSegment], timings: Sequence[SegmentTiming]) -> list[dict[str, Any]]:
    """One answer's plan as the v2 ``plan`` parameter lists it: per segment its node, unit and
    blocks, the codec of the boundary into it and that boundary's bytes on the wire (0: no hop;
    from the timing of the same segment, absent when the segment did not run)."""
    wire = {(timing.node, timing.first_block): timing.wire_bytes for timing in timings}
    return [{"node": segment.node, "unit": segment.unit, "first_block": segment.first_block,
             "last_block": segment.last_block, "codec": segment.codec,
             "wire_bytes": wire.get((segment.node, segment.first_block), 0)} for segment in plan]


def answer_parameters(results: Sequence[InferResult]) -> dict[str, str | int | bool]:
    """The v2 response's ``parameters`` for the answers of a request's rows (in batch order):
    ``variant`` and ``exit`` (the first row's), ``deadline_met`` (every row's), and as JSON
    strings, since a parameter value may only be a string, number or boolean (a KServe client
    converting them to its gRPC types refuses a list or an object): ``request_ids`` (a list)
    and ``plan`` (a list per row of ``plan_hops``)."""
    return {"variant": results[0].variant, "exit": results[0].exit,
            "deadline_met": all(result.deadline_met for result in results),
            "request_ids": json.dumps([result.request_id for result in results], separators=(",", ":")),
            "plan": json.dumps([plan_hops(result.plan, result.timings) for result in results],
                               separators=(",", ":"))}


def _wants_binary(output: RequestOutput) -> bool:
    value = output.parameters.get("binary_data", False)
    if not isinstance(value, bool):
        raise BadRequest(f"output {output.name!r}: binary_data must be a boolean, got {value!r}")
    return value


def build_infer_response(
    model_name: str,
    outputs: dict[str, np.ndarray],
    *,
    request_id: str | None = None,
    model_version: str | None = None,
    parameters: dict[str, Any] | None = None,
    requested: list[RequestOutput] | None = None,
    binary_outputs: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """The response body and the HTTP headers to send with it.

    ``requested`` (the request's ``outputs``) selects and orders the outputs; all outputs when
    None. An output asked for with ``parameters: {binary_data: true}`` (or every output when
    ``binary_outputs``, the request's ``binary_data_output``) goes as raw bytes after the JSON,
    with ``Inference-Header-Content-Length`` telling where the JSON ends.
    """
    if requested is None:
        selected = [(name, binary_outputs) for name in outputs]
    else:
        selected = []
        for output in requested:
            if output.name not in outputs:
                raise BadRequest(f"unknown output {output.name!r}; {model_name} has {', '.join(outputs)}")
            selected.append((output.name, binary_outputs or _wants_binary(output)))

    described: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for name, binary in selected:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)

    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = described
    json_bytes = _json_encoder.encode(response)
    if not binary_parts:
        return json_bytes, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(json_bytes))}
    return b"".join([json_bytes, *binary_parts]), headers


def parse_infer_response(body: bytes, header_length: str | int | None = None) -> dict[str, np.ndarray]:
    """Outputs of a v2 response as numpy arrays (for tests and Python callers of the v2 routes)."""
    view = memoryview(body)
    length = parse_header_length(header_length, len(view))
    response = msgspec.json.decode(view if length is None else view[:length])
    offset = length or 0
    arrays: dict[str, np.ndarray] = {}
    for output in response["outputs"]:
        dtype = _NUMPY_DTYPES[output["datatype"]]
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.asarray(output["data"], dtype=dtype).reshape(output["shape"])
        else:
            arrays[output["name"]] = np.frombuffer(view, dtype=dtype, count=size // dtype.itemsize,
                                                   offset=offset).reshape(output["shape"])
            offset += size
    return arrays


def tensor_metadata(name: str, datatype: str, shape: Sequence[int]) -> dict[str, Any]:
    """``$metadata_tensor``: -1 marks a variable dimension (the batch)."""
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def model_metadata(
    family: str,
    input_shape: Sequence[int],
    classes: int,
    *,
    versions: Sequence[str] = ("1",),
    input_name: str = "input",
    input_datatype: str = "FP32",
    platform: str = "pytorch",
) -> dict[str, Any]:
    """``GET /v2/models/{family}``: one input [-1, *input_shape] (any batch), outputs
    ``probabilities`` [-1, classes] and ``label`` [-1]."""
    return {
        "name": family,
        "versions": list(versions),
        "platform": platform,
        "inputs": [tensor_metadata(input_name, input_datatype, [-1, *input_shape])],
        "outputs": [
            tensor_metadata(PROBABILITIES_OUTPUT, "FP32", [-1, classes]),
            tensor_metadata(LABEL_OUTPUT, "INT64", [-1]),
        ],
    }


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the server's name, version and protocol extensions."""
    return {"name": "p2pinfer", "version": version, "extensions": ["binary_tensor_data", "parameters"]}
