"""Hostile inference requests, one generator per route: byte mutations (flip, insert, delete,
truncate) of a valid body, and generated requests whose fields take hostile values (NaN, Inf,
huge floats, negative or zero weights, long ids, deep nesting, wrong types).

It lives in the package because the route tests (a bounded run in the default suite) and
the fuzzing benchmark (``benchmarks.fuzz``, thousands of cases per route) draw the same cases.
It never imports ``benchmarks``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from p2pinfer.protocol.wire import CONTENT_TYPE

JSON = "application/json"
INPUT_SHAPE = (1, 1, 8, 8)  # digits-cnn's input, the family the fuzzed node serves
HOSTILE_NUMBERS: list[Any] = [0, -1, 1, 1e300, -1e300, 3e38, float("nan"), float("inf"), -0.0, 2**63, -(2**63),
                              2**64 - 1, 1e-320, 0.5, True, None, "1", [], {}]
HOSTILE_TEXT: list[Any] = ["", "a" * 200, "a b", "x\x00y", "ü" * 10, "[[[[", "digits-cnn", "digits-cnn-w1",
                           "../../etc", 5, None, ["x"], "u" * 5000]

Case = Callable[[random.Random], tuple[bytes, str]]
"""A generator of one request: ``(body, content type)`` drawn from the given random source."""


def _value(rng: random.Random) -> Any:
    pool = rng.choice((HOSTILE_NUMBERS, HOSTILE_TEXT))
    return rng.choice(pool)


def _tensor(rng: random.Random) -> np.ndarray:
    choice = rng.random()
    if choice < 0.3:
        return rng.choice([np.full(INPUT_SHAPE, 3e38, np.float32), np.full(INPUT_SHAPE, 1e300, np.float64),
                           np.full(INPUT_SHAPE, np.nan, np.float32), np.zeros((1, 1, 9, 9), np.float32),
                           np.zeros((0, 1, 8, 8), np.float32), np.zeros(INPUT_SHAPE, np.int64)])
    return np.asarray(np.random.default_rng(rng.randrange(1 << 30)).normal(size=INPUT_SHAPE), dtype=np.float32)


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


def json_body(document: Any) -> bytes:
    """JSON as a hostile client writes it: NaN and Infinity allowed."""
    return json.dumps(document, allow_nan=True).encode()


def v1_frame_case(rng: random.Random) -> tuple[bytes, str]:
    """``/v1/infer`` in the binary frame, mutated 60 % of the time."""
    body = _frame(_fields(rng), _tensor(rng))
    return (_mutate(rng, body) if rng.random() < 0.6 else body), CONTENT_TYPE


def v1_json_case(rng: random.Random) -> tuple[bytes, str]:
    """``/v1/infer`` as JSON (5 % of them nested 900 deep), mutated half the time."""
    document = {**_fields(rng), "data": _tensor(rng).tolist()}
    if rng.random() < 0.05:
        document["data"] = json.loads("[" * 900 + "]" * 900)
    body = json_body(document)
    return (_mutate(rng, body) if rng.random() < 0.5 else body), JSON


def v2_case(rng: random.Random) -> tuple[bytes, str]:
    """An Open Inference (v2) JSON request, mutated half the time, 5 % with a wrong content type."""
    array = _tensor(rng)
    parameters = {key: _value(rng) for key in rng.sample(
        ["deadline_ms", "user", "variant", "exit", "confidence_threshold", "qoe_accuracy", "qoe_latency",
         "qoe_energy", "binary_data_output"], rng.randint(0, 4))}
    document = {"id": rng.choice(["r1", None, "x" * 300, 5]), "parameters": parameters,
                "inputs": [{"name": "input", "shape": list(array.shape),
                            "datatype": rng.choice(["FP32", "FP64", "INT64", "BYTES", "FP16"]),
                            "data": array.ravel().tolist()}]}
    body = json_body(document)
    content_type = JSON if rng.random() < 0.95 else rng.choice(["text/plain", "application/octet-stream"])
    return (_mutate(rng, body) if rng.random() < 0.5 else body), content_type


CASES_BY_ROUTE: dict[str, tuple[str, Case]] = {
    "v1_frame": ("/v1/infer", v1_frame_case),
    "v1_json": ("/v1/infer", v1_json_case),
    "v2_json": ("/v2/models/digits-cnn/infer", v2_case),
}
"""Route name -> (path on the node, generator of one hostile request for it)."""
