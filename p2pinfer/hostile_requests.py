"""Hostile inference requests, one generator per route and encoding: byte mutations (flip,
insert, delete, truncate) of a valid body, and generated requests whose fields take hostile
values (NaN, Inf, huge floats, negative or zero weights, long ids, deep nesting, deep nesting
behind brackets inside strings, wrong types, hostile header lengths, truncated, garbage or
oversized images).

Routes (``ROUTES``): ``/v1/infer`` binary frames, JSON and raw image bodies (knobs in the
query); ``/v2/models/{family}/infer`` JSON, the binary tensor extension
(``Inference-Header-Content-Length``) and ``BYTES`` images. Tensor routes go to a node hosting
``digits-cnn``, image routes to one hosting ``text-orientation-r160`` (``NODES``): a family with
image preprocessing, so the images reach the decoder.

It lives in the package because the route tests (a bounded run in the default suite) and the
fuzzing benchmark (``benchmarks.fuzz``, thousands of cases per route) draw the same cases. It
never imports ``benchmarks``.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from PIL import Image

from p2pinfer.protocol.open_inference import HEADER_LENGTH_HEADER
from p2pinfer.protocol.wire import CONTENT_TYPE
from zoo.manifest import PRETRAINED_ZOO_DIR

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
IMAGE_FAMILY = "text-orientation"
NODES: dict[str, list[str]] = {
    "tensors": ["--variants", "digits-cnn"],
    "images": ["--zoo", str(PRETRAINED_ZOO_DIR), "--variants", "text-orientation-r160", "--max-batch", "2"]}
"""The nodes the routes are fuzzed on: what each is started with."""
SHAPE = (1, 1, 8, 8)
HOSTILE_NUMBERS: list[Any] = [0, -1, 1, 1e300, -1e300, 3e38, float("nan"), float("inf"), -0.0, 2**63, -(2**63),
                              2**64 - 1, 1e-320, 0.5, True, None, "1", [], {}]
HOSTILE_TEXT: list[Any] = ["", "a" * 200, "a b", "x\x00y", "ü" * 10, "[[[[", "digits-cnn", "digits-cnn-w1",
                           "../../etc", 5, None, ["x"], "u" * 5000]


@dataclass(frozen=True)
class Case:
    """One request: its body, content type, further headers and query string."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""

    def request_headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, **self.headers}

    def url(self, base: str) -> str:
        return f"{base}?{self.query}" if self.query else base


@dataclass(frozen=True)
class Route:
    """A fuzzed route: its path, its case generator and the node (``NODES``) it runs on."""

    path: str
    case: Callable[[random.Random], Case]
    node: str = "tensors"


def _value(rng: random.Random) -> Any:
    pool = rng.choice((HOSTILE_NUMBERS, HOSTILE_TEXT))
    return rng.choice(pool)


def _tensor(rng: random.Random) -> np.ndarray:
    choice = rng.random()
    if choice < 0.3:
        return rng.choice([np.full(SHAPE, 3e38, np.float32), np.full(SHAPE, 1e300, np.float64),
                           np.full(SHAPE, np.nan, np.float32), np.zeros((1, 1, 9, 9), np.float32),
                           np.zeros((0, 1, 8, 8), np.float32), np.zeros(SHAPE, np.int64)])
    return np.asarray(np.random.default_rng(rng.randrange(1 << 30)).normal(size=SHAPE), dtype=np.float32)


def _fields(rng: random.Random) -> dict[str, Any]:
    fields: dict[str, Any] = {"deadline_ms": 2000.0, "family": "digits-cnn"}
    for name in rng.sample(["deadline_ms", "family", "user", "qoe", "variant", "exit", "confidence_threshold",
                            "request_id", "plan", "version"], rng.randint(0, 4)):
        if name == "qoe":
            fields[name] = {key: _value(rng) for key in rng.sample(["accuracy", "latency", "energy", "x"],
                                                                  rng.randint(1, 3))}
        else:
            fields[name] = _value(rng)
    return fields


def _mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        kind = rng.random()
        where = rng.randrange(len(data))
        if kind < 0.5:
            data[where] = rng.randrange(256)
        elif kind < 0.7:
            data.insert(where, rng.randrange(256))
        elif kind < 0.9:
            del data[where]
        else:
            del data[where:]
    return bytes(data)


def _frame(fields: dict[str, Any], array: np.ndarray) -> bytes:
    """A binary frame built by hand, so hostile header values reach the node unvalidated."""
    dtype = {"float32": "float32", "float64": "float64", "int64": "int64"}[array.dtype.name]
    header = msgspec.msgpack.encode({**fields, "tensors": [
        {"name": "input", "dtype": dtype, "shape": list(array.shape), "nbytes": array.nbytes}]})
    pad = b"\0" * ((-(4 + len(header))) % 8)
    return len(header).to_bytes(4, "big") + header + pad + array.astype(array.dtype.newbyteorder("<")).tobytes()


def _json(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


def _deep(rng: random.Random) -> bytes:
    """An array nested past every decoder's recursion limit (msgspec's is near 1,000)."""
    levels = rng.choice([65, 900, 3000])
    return b"[" * levels + b"]" * levels


def _hiding_string(rng: random.Random) -> bytes:
    """A JSON string of closing brackets (escapes included): a depth count that did not skip
    strings saw it cancel the opening brackets of a deep array."""
    return b'"' + rng.choice([b"]", b"}", b"\\]", b'\\\"]']) * 3000 + b'"'


def v1_frame_case(rng: random.Random) -> Case:
    body = _frame(_fields(rng), _tensor(rng))
    return Case(_mutate(rng, body) if rng.random() < 0.6 else body, CONTENT_TYPE)


def v1_json_case(rng: random.Random) -> Case:
    choice = rng.random()
    if choice < 0.04:
        body = b'{"deadline_ms": 1000, "data": ' + _deep(rng) + b"}"
    elif choice < 0.08:  # brackets inside a string before or after the deep data
        parts = [b'"user": ' + _hiding_string(rng), b'"data": ' + _deep(rng)]
        rng.shuffle(parts)
        body = b'{"deadline_ms": 1000, ' + b", ".join(parts) + b"}"
    else:
        body = _json({**_fields(rng), "data": _tensor(rng).tolist()})
    return Case(_mutate(rng, body) if rng.random() < 0.5 else body, JSON)


V2_PARAMETERS = ["deadline_ms", "user", "variant", "exit", "confidence_threshold", "qoe_accuracy", "qoe_latency",
                 "qoe_energy", "binary_data_output"]


def _v2_parameters(rng: random.Random) -> dict[str, Any]:
    return {key: _value(rng) for key in rng.sample(V2_PARAMETERS, rng.randint(0, 4))}


def v2_case(rng: random.Random) -> Case:
    array = _tensor(rng)
    choice = rng.random()
    if choice < 0.06:  # deep data behind a string of brackets in the id or a parameter
        hiding = _hiding_string(rng)
        head = rng.choice([b'"id": ' + hiding, b'"parameters": {"user": ' + hiding + b"}"])
        body = (b"{" + head + b', "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", '
                b'"data": ' + _deep(rng) + b"}]}")
    else:
        document = {"id": rng.choice(["r1", None, "x" * 300, 5]), "parameters": _v2_parameters(rng),
                    "inputs": [{"name": "input", "shape": list(array.shape),
                                "datatype": rng.choice(["FP32", "FP64", "INT64", "BYTES", "FP16"]),
                                "data": array.ravel().tolist()}]}
        body = _json(document)
    content_type = JSON if rng.random() < 0.95 else rng.choice(["text/plain", OCTET_STREAM])
    return Case(_mutate(rng, body) if rng.random() < 0.5 else body, content_type)


def _header_length(rng: random.Random, length: int, body_length: int) -> str:
    """``Inference-Header-Content-Length``: mostly right, else hostile."""
    if rng.random() < 0.75:
        return str(length)
    return str(rng.choice([0, -1, length - 1, length + 1, body_length, body_length + 1, 2**63, "", "abc", "1e3",
                           " 12", "0x10", "٣"]))


def v2_binary_case(rng: random.Random) -> Case:
    """The binary tensor extension: a JSON header with ``binary_data_size`` and raw bytes after it."""
    array = _tensor(rng)
    datatype = {"float32": "FP32", "float64": "FP64", "int64": "INT64"}[array.dtype.name]
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    size: Any = len(raw) if rng.random() < 0.8 else _value(rng)
    inputs = [{"name": "input", "shape": list(array.shape),
               "datatype": datatype if rng.random() < 0.9 else rng.choice(["FP16", "BYTES", "UINT8", "BOOL", "X"]),
               "parameters": {"binary_data_size": size}}]
    if rng.random() < 0.1:  # a second input, sharing the binary part
        inputs.append({**inputs[0], "name": "second"})
    document: dict[str, Any] = {"inputs": inputs, "parameters": _v2_parameters(rng)}
    if rng.random() < 0.3:
        document["outputs"] = [{"name": rng.choice(["probabilities", "label", "x"]),
                                "parameters": {"binary_data": rng.choice([True, False, 1, "yes"])}}]
    header = _json(document)
    if rng.random() < 0.05:
        header = b'{"id": ' + _hiding_string(rng) + b', "inputs": ' + _deep(rng) + b"}"
    body = header + raw
    if rng.random() < 0.4:
        body = _mutate(rng, body)
    return Case(body, OCTET_STREAM if rng.random() < 0.95 else JSON,
                {HEADER_LENGTH_HEADER: _header_length(rng, len(header), len(body))})


@functools.cache
def _valid_images() -> tuple[tuple[str, bytes], ...]:
    """Valid JPEGs and PNGs of various sizes and modes (made once, deterministically)."""
    generator = np.random.default_rng(18)
    images: list[tuple[str, bytes]] = []
    for width, height in [(160, 160), (200, 120), (17, 300), (1, 1), (320, 240)]:
        pixels = generator.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        for mode in ("RGB", "L", "RGBA", "P"):
            picture = Image.fromarray(pixels).convert(mode)
            buffer = io.BytesIO()
            picture.save(buffer, "PNG")
            images.append(("image/png", buffer.getvalue()))
            if mode in ("RGB", "L"):
                buffer = io.BytesIO()
                picture.save(buffer, "JPEG", quality=int(generator.integers(5, 96)))
                images.append(("image/jpeg", buffer.getvalue()))
    return tuple(images)


@functools.cache
def _bomb_png() -> bytes:
    """A PNG of 8,000 x 8,000 blank pixels (64 MP, over the node's 40 MP): a few hundred KB."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def _image(rng: random.Random) -> tuple[str, bytes]:
    """An image body and its declared type: valid, mutated, truncated, garbage behind a magic
    number, a decompression bomb, or declared as the other type."""
    media_type, data = rng.choice(_valid_images())
    choice = rng.random()
    if choice < 0.35:
        pass
    elif choice < 0.6:
        data = _mutate(rng, data)
    elif choice < 0.75:
        data = data[:rng.randrange(len(data))]
    elif choice < 0.87:
        magic = rng.choice([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b""])
        data = magic + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    elif choice < 0.9:
        media_type, data = "image/png", _bomb_png()
    else:
        media_type = "image/png" if media_type == "image/jpeg" else "image/jpeg"
    return media_type, data


QUERY_KEYS = ["deadline_ms", "family", "user", "variant", "exit", "request_id", "confidence_threshold",
              "min_accuracy", "unknown"]


def v1_image_case(rng: random.Random) -> Case:
    """``POST /v1/infer`` with an image body and the knobs in the query."""
    media_type, data = _image(rng)
    query: dict[str, str] = {"deadline_ms": "5000", "family": IMAGE_FAMILY}
    for key in rng.sample(QUERY_KEYS, rng.randint(1, 3)) if rng.random() < 0.3 else []:  # most reach the decoder
        query[key] = str(_value(rng))
    text = "&".join(f"{key}={urllib.parse.quote(value, safe='')}" for key, value in query.items())
    return Case(data, media_type, query=text)


def v2_bytes_case(rng: random.Random) -> Case:
    """``BYTES`` inputs: base64 (or ``{"b64": ...}``, or a raw string) in JSON, or 4-byte
    length-prefixed elements in the binary extension."""
    elements = [_image(rng)[1] for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    shape: Any = [len(elements)] if rng.random() < 0.85 else rng.choice([[], [2, 1], [0], [-1], "x"])
    parameters = {"deadline_ms": 5000, **(_v2_parameters(rng) if rng.random() < 0.3 else {})}
    if rng.random() < 0.5:
        def encoded(data: bytes) -> Any:
            text = base64.b64encode(data).decode()
            return rng.choice([text, text, {"b64": text}, text[:len(text) // 2], data.decode("latin-1")])

        document = {"parameters": parameters,
                    "inputs": [{"name": "input", "shape": shape, "datatype": "BYTES",
                                "data": [encoded(data) for data in elements]}]}
        body = _json(document)
        return Case(_mutate(rng, body) if rng.random() < 0.3 else body, JSON)
    raw = b"".join(len(data).to_bytes(4, "little") + data for data in elements)
    size = len(raw) if rng.random() < 0.85 else _value(rng)
    header = _json({"parameters": parameters, "inputs": [{"name": "input", "shape": shape, "datatype": "BYTES",
                                                          "parameters": {"binary_data_size": size}}]})
    body = header + raw
    if rng.random() < 0.2:
        body = _mutate(rng, body)
    return Case(body, OCTET_STREAM, {HEADER_LENGTH_HEADER: _header_length(rng, len(header), len(body))})


ROUTES: dict[str, Route] = {  # in the order of their seeds (seed + index): new routes go last
    "v1_frame": Route("/v1/infer", v1_frame_case),
    "v1_json": Route("/v1/infer", v1_json_case),
    "v2_json": Route("/v2/models/digits-cnn/infer", v2_case),
    "v2_binary": Route("/v2/models/digits-cnn/infer", v2_binary_case),
    "v1_image": Route("/v1/infer", v1_image_case, node="images"),
    "v2_bytes": Route(f"/v2/models/{IMAGE_FAMILY}/infer", v2_bytes_case, node="images")}


def bad_case(rng: random.Random) -> Case:
    """A refused request with fresh client-chosen values each time (user, request id)."""
    user = f"user-{rng.randrange(1 << 60):x}"
    return Case(_json({"deadline_ms": 2000, "family": "digits-cnn", "user": user + "!" * rng.randint(0, 1),
                       "request_id": f"id-{rng.randrange(1 << 60):x}",
                       "data": np.full(SHAPE, rng.choice([3e38, float("nan")]), np.float32).tolist()}), JSON)
