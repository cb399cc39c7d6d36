"""p2pinfer.protocol.request_limits: the JSON depth limit, exact where it must be and cheap where it can be."""

from __future__ import annotations

import json

import pytest

from p2pinfer.errors import BadRequest
from p2pinfer.protocol.request_limits import MAX_JSON_DEPTH, check_json_depth, json_depth


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
