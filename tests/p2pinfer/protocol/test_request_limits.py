"""p2pinfer.protocol.request_limits: the JSON depth limit, exact where it must be and cheap where it can be."""

from __future__ import annotations

import json
import random
import struct

import msgspec
import pytest

from p2pinfer.errors import BadRequest, NestedTooDeeply
from p2pinfer.membership.messages import decode_message
from p2pinfer.protocol.error_body import decode_error_body
from p2pinfer.protocol.open_inference import parse_infer_request
from p2pinfer.protocol.request_limits import MAX_JSON_DEPTH, check_json_depth, json_depth
from p2pinfer.protocol.wire import InferFrameHeader, decode_frame


@pytest.mark.parametrize(("text", "depth"), [
    ("", 0), ("{}", 1), ('{"a": [1, 2]}', 2), ("[[[]]]", 3), ('{"a": {"b": [[1], [2]]}, "c": [3]}', 4),
    ("[" * 70 + "]" * 70, 70)])
def test_json_depth_is_the_deepest_nesting(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth
    assert json_depth(memoryview(text.encode())) == depth


def test_nesting_over_the_limit_is_refused_and_naming_the_depth() -> None:
    body = ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode()
    with pytest.raises(BadRequest, match=f"nested {MAX_JSON_DEPTH + 1} levels deep"):
        check_json_depth(body)
    with pytest.raises(BadRequest, match="nested 1000 levels deep"):
        check_json_depth(bytearray(b"{" * 1000))  # unclosed: the depth still counts
    check_json_depth(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode())  # at the limit: accepted


def test_many_brackets_at_a_shallow_depth_take_the_exact_scan_and_pass() -> None:
    """More opening brackets than the limit (a nested-list tensor): counted exactly, not refused."""
    body = json.dumps({"data": [[[float(row), float(column)] for column in range(10)] for row in range(10)]}).encode()
    assert body.count(b"[") > MAX_JSON_DEPTH
    check_json_depth(body)
    assert json_depth(body) == 4


DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize("text", [
    '{"user": "' + "]" * 3000 + '", "data": ' + DEEP + "}",  # closing brackets in a string before
    '{"data": ' + DEEP + ', "user": "' + "}" * 3000 + '"}',  # and after the deep part
    '{"id": "' + "]" * 3000 + '", "inputs": [{"data": ' + DEEP + "}]}",
    '{"parameters": {"user": "' + "}" * 3000 + '"}, "inputs": [{"data": ' + DEEP + "}]}",
    '{"user": "\\\\", "data": ' + DEEP + "}",  # an escaped backslash ends the string before the data
])
def test_brackets_inside_strings_do_not_lower_the_depth(text: str) -> None:
    """The bypass of issue 18's audit: ``]`` in a string cancelled the ``[`` of a deep array."""
    assert json_depth(text.encode()) >= 3000
    with pytest.raises(NestedTooDeeply, match="nested 300[0-9] levels deep"):
        check_json_depth(text.encode())


@pytest.mark.parametrize(("text", "depth"), [
    ('{"a": "[[[[", "b": [1]}', 2), ('["\\"]', 1), ('["\\\"[[["]', 1), ('["a\\\\", [[]]]', 3),
    ('{"k]]": {"v": "}}"}}', 2), ('["unclosed [[[[', 1)])
def test_json_depth_skips_strings_and_honours_escapes(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth


def test_json_depth_equals_the_parsed_depth_of_random_documents() -> None:
    """Random documents whose strings are full of brackets, quotes and backslashes."""
    rng = random.Random(18)
    alphabet = '[]{}"\\ab,:'

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    def document(level: int) -> object:
        choice = rng.random()
        if level > 6 or choice < 0.3:
            return text()
        if choice < 0.65:
            return [document(level + 1) for _ in range(rng.randint(0, 3))]
        return {text(): document(level + 1) for _ in range(rng.randint(0, 3))}

    def depth(value: object) -> int:
        if isinstance(value, list):
            return 1 + max((depth(item) for item in value), default=0)
        if isinstance(value, dict):
            return 1 + max((depth(item) for item in value.values()), default=0)
        return 0

    for _ in range(2000):
        value = document(0)
        assert json_depth(json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()) == depth(value)


def test_every_decoder_turns_a_recursion_error_into_a_typed_400() -> None:
    """The second line of defence, for a body no depth check saw: each decoder of the node's
    inputs answers ``NestedTooDeeply`` (400) instead of raising ``RecursionError`` (a 500)."""
    deep_json = DEEP.encode()
    deep_msgpack = b"\x91" * 5000 + b"\xc0"  # 5,000 one-element arrays around a nil
    with pytest.raises(NestedTooDeeply):  # the v2 decoder, without the route's depth check
        parse_infer_request(b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}], '
                            b'"parameters": {"user": ' + deep_json + b"}}")
    # a frame header and a gossip message with one more (unknown) field, nested 5,000 levels
    header = b"\x84" + msgspec.msgpack.encode({"version": 1, "deadline_ms": 1.0, "tensors": []})[1:]
    header += msgspec.msgpack.encode("extra") + deep_msgpack
    with pytest.raises(NestedTooDeeply):
        decode_frame(struct.pack(">I", len(header)) + header, InferFrameHeader)
    with pytest.raises(NestedTooDeeply):
        decode_message(b"\x82" + msgspec.msgpack.encode("version") + b"\x01" + msgspec.msgpack.encode("extra")
                       + deep_msgpack)
    assert decode_error_body(b'{"error": "x", "extra": ' + deep_json + b"}") is None  # not an error body
