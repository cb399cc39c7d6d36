"""The binary frame: bit-exact round trips, zero-copy decoding, alignment, and a typed error
for every way a frame can be malformed."""

from __future__ import annotations

import struct

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import (
    BadDtype,
    BadHeader,
    BadRequest,
    BadShape,
    PayloadTooLarge,
    TruncatedBody,
    UnsupportedVersion,
)
from p2pinfer.protocol.schema import WIRE_VERSION, InferRequest
from p2pinfer.protocol.wire import (
    DTYPES,
    TENSOR_ALIGNMENT,
    FrameHeader,
    InferFrameHeader,
    decode_frame,
    encode_frame,
    encode_frame_bytes,
    frame_length,
    to_torch,
)
from selector.qoe import QoEWeights


class StageHeader(FrameHeader, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A header shaped like the node's /v1/stage one: any Struct with version + tensors works."""

    request_id: str
    remaining_plan: list[tuple[str, int, int]]
    budget_ms: float


def sample(dtype_name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = DTYPES[dtype_name]
    if dtype_name == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":  # random bits: NaN payloads, infinities and subnormals must survive too
        return rng.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8).view(dtype).reshape(shape)
    return rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


def body_bytes_view(body: bytes) -> np.ndarray:
    return np.frombuffer(body, dtype=np.uint8)


def raw_frame(header: dict, tensor_bytes: list[bytes], *, header_bytes: bytes | None = None) -> bytes:
    """A frame built by hand (to forge malformed ones): tensors placed at aligned offsets."""
    encoded = msgspec.msgpack.encode(header) if header_bytes is None else header_bytes
    frame = bytearray(struct.pack(">I", len(encoded)) + encoded)
    for payload in tensor_bytes:
        frame += bytes(-len(frame) % TENSOR_ALIGNMENT)
        frame += payload
    return bytes(frame)


def spec(name: str, dtype: str, shape: list[int], nbytes: int) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, "nbytes": nbytes}


GOOD_INPUT = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)


def good_header(**overrides) -> dict:
    header = {"version": WIRE_VERSION, "deadline_ms": 50.0, "tensors": [spec("input", "float32", [1, 1, 8, 8], 256)]}
    header.update(overrides)
    return header


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", [name for name in DTYPES if name != "bfloat16"])
def test_every_dtype_round_trips_bit_exact_without_copies(dtype_name):
    array = sample(dtype_name, (2, 3, 5))
    body = encode_frame_bytes(InferFrameHeader(deadline_ms=10.0), {"input": array})
    header, tensors = decode_frame(body, InferFrameHeader)
    decoded = tensors["input"]
    assert header.tensors[0].dtype == dtype_name
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()  # bit exact, NaN payloads included
    assert np.shares_memory(decoded, body_bytes_view(body))
    assert not decoded.flags.writeable  # a view of immutable bytes
    assert decoded.flags.aligned


def test_bfloat16_round_trips_through_torch_bit_exact():
    tensor = torch.randn(4, 7).to(torch.bfloat16)
    tensor[0, 0] = float("nan")
    tensor[0, 1] = float("-inf")
    body = encode_frame_bytes(FrameHeader(), {"activation": tensor})
    header, tensors = decode_frame(body, FrameHeader)
    assert header.tensors[0].dtype == "bfloat16"
    assert tensors["activation"].dtype == np.uint16
    restored = to_torch(tensors["activation"], "bfloat16")
    assert restored.dtype == torch.bfloat16
    assert torch.equal(restored.view(torch.int16), tensor.view(torch.int16))
    assert np.shares_memory(tensors["activation"], body_bytes_view(body))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64, torch.int32,
                                   torch.uint8, torch.bool])
def test_torch_tensors_encode_and_come_back_through_to_torch(dtype):
    tensor = (torch.arange(24).reshape(2, 3, 4) % 7).to(dtype).transpose(1, 2)  # non-contiguous
    body = encode_frame_bytes(FrameHeader(), {"x": tensor})
    _, tensors = decode_frame(body, FrameHeader)
    restored = to_torch(tensors["x"])
    assert restored.dtype == dtype
    assert torch.equal(restored, tensor)


def test_encode_parts_alias_the_callers_arrays():
    array = np.random.default_rng(1).random((256, 256), dtype=np.float32)
    parts = encode_frame(FrameHeader(), {"x": array})
    tensor_parts = [part for part in parts if isinstance(part, memoryview)]
    assert len(tensor_parts) == 1
    assert np.shares_memory(np.frombuffer(tensor_parts[0], dtype=np.uint8), array)
    assert frame_length(parts) == len(b"".join(parts))


def test_several_tensors_of_odd_sizes_stay_aligned_and_in_order():
    tensors = {
        "mask": np.array([True, False, True]),  # 3 bytes: the next tensor must be padded
        "weights": np.linspace(0, 1, 5),
        "ids": np.array([7, 8, 9], dtype=np.int32),
        "pixels": np.arange(11, dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "last": np.array([1.5, -2.5], dtype=np.float16),
    }
    body = encode_frame_bytes(StageHeader(request_id="r1", remaining_plan=[("n2", 3, 5)], budget_ms=12.5), tensors)
    header, decoded = decode_frame(body, StageHeader)
    assert header.remaining_plan == [("n2", 3, 5)] and header.budget_ms == 12.5
    assert list(decoded) == list(tensors)
    for name, array in tensors.items():
        assert decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()
        assert decoded[name].flags.aligned
    offsets = [decoded[name].ctypes.data - body_bytes_view(body).ctypes.data for name in tensors if tensors[name].size]
    assert all(offset % TENSOR_ALIGNMENT == 0 for offset in offsets)


def test_a_misaligned_buffer_is_copied_so_torch_never_sees_a_misaligned_pointer():
    array = np.arange(10, dtype=np.float64)
    frame = encode_frame_bytes(FrameHeader(), {"x": array})
    shifted = memoryview(b"\x00" + frame)[1:]  # the same frame, one byte off alignment
    _, decoded = decode_frame(shifted, FrameHeader)
    assert decoded["x"].flags.aligned
    assert np.array_equal(decoded["x"], array)


def test_a_writable_buffer_gives_writable_views():
    body = bytearray(encode_frame_bytes(FrameHeader(), {"x": np.zeros(4, dtype=np.float32)}))
    _, decoded = decode_frame(body, FrameHeader)
    decoded["x"][0] = 3.0
    assert np.frombuffer(body, dtype=np.float32, count=1, offset=len(body) - 16)[0] == 3.0


def test_encode_fills_the_tensor_specs_and_keeps_the_header_fields():
    header = InferFrameHeader(deadline_ms=80.0, user="ada", qoe=QoEWeights(accuracy=2.0), variant="w50",
                              exit=2, confidence_threshold=0.9, min_accuracy=0.95, request_id="abc")
    decoded, _ = decode_frame(encode_frame_bytes(header, {"input": GOOD_INPUT}), InferFrameHeader)
    assert decoded == msgspec.structs.replace(header, tensors=decoded.tensors)
    assert [(spec.name, spec.shape, spec.nbytes) for spec in decoded.tensors] == [("input", [1, 1, 8, 8], 256)]


def test_infer_frame_header_maps_to_and_from_the_json_request():
    request = InferRequest(deadline_ms=40.0, family="resnet", user="u", variant="v", exit=1, request_id="r",
                           min_accuracy=0.9)
    header = InferFrameHeader.from_request(request)
    assert header.to_request() == request


def test_a_frame_without_tensors_is_just_a_header():
    header, tensors = decode_frame(encode_frame_bytes(StageHeader(request_id="x", remaining_plan=[], budget_ms=1)),
                                   StageHeader)
    assert header.request_id == "x" and tensors == {}


def test_unsupported_source_dtypes_are_refused():
    with pytest.raises(BadDtype, match="complex64"):
        encode_frame(FrameHeader(), {"x": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(BadDtype, match="int16"):
        encode_frame(FrameHeader(), {"x": torch.zeros(2, dtype=torch.int16)})


def test_big_endian_arrays_are_sent_little_endian():
    array = np.arange(6, dtype=">f4")
    _, decoded = decode_frame(encode_frame_bytes(FrameHeader(), {"x": array}), FrameHeader)
    assert decoded["x"].dtype == np.dtype("<f4")
    assert np.array_equal(decoded["x"], array)


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(sorted(set(DTYPES) - {"bfloat16"})), st.lists(st.integers(0, 5), max_size=3)),
        max_size=4,
    ),
    seed=st.integers(0, 2**16),
)
def test_any_mix_of_tensors_round_trips(specs, seed):
    tensors = {f"t{index}": sample(dtype, tuple(shape), seed) for index, (dtype, shape) in enumerate(specs)}
    header, decoded = decode_frame(encode_frame_bytes(FrameHeader(), tensors), FrameHeader)
    assert [spec.dtype for spec in header.tensors] == [dtype for dtype, _ in specs]
    for name, array in tensors.items():
        assert decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()


# ---- malformed frames -------------------------------------------------------------------------


def test_a_frame_round_trips_when_built_by_hand():
    """The forging helper matches the encoder, so the malformed cases below are faithful."""
    header, tensors = decode_frame(raw_frame(good_header(), [GOOD_INPUT.tobytes()]), InferFrameHeader)
    assert header.deadline_ms == 50.0
    assert np.array_equal(tensors["input"], GOOD_INPUT)


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00\x01"])
def test_a_body_shorter_than_the_length_prefix_is_truncated(body):
    with pytest.raises(TruncatedBody, match="shorter than"):
        decode_frame(body, InferFrameHeader)


def test_a_body_shorter_than_its_declared_header_is_truncated():
    body = raw_frame(good_header(), [GOOD_INPUT.tobytes()])
    with pytest.raises(TruncatedBody, match="header"):
        decode_frame(body[:20], InferFrameHeader)


def test_a_header_length_over_the_limit_is_refused_before_reading_it():
    with pytest.raises(PayloadTooLarge, match="limit"):
        decode_frame(b'{"deadline_ms": 50}', InferFrameHeader)  # JSON sent as a frame: N is huge
    body = raw_frame(good_header(user="x" * 2000), [GOOD_INPUT.tobytes()])
    with pytest.raises(PayloadTooLarge):
        decode_frame(body, InferFrameHeader, max_header_bytes=1024)
    assert decode_frame(body, InferFrameHeader)[0].user == "x" * 2000


def test_msgpack_garbage_is_a_bad_header():
    with pytest.raises(BadHeader, match="malformed"):
        decode_frame(raw_frame({}, [], header_bytes=b"\xc1\xc1\xc1"), InferFrameHeader)


def test_a_header_that_is_not_a_map_is_a_bad_header():
    with pytest.raises(BadHeader, match="object"):
        decode_frame(raw_frame({}, [], header_bytes=msgspec.msgpack.encode([1, 2])), InferFrameHeader)


def test_a_schema_mismatch_names_the_field():
    body = raw_frame(good_header(deadline_ms="soon"), [GOOD_INPUT.tobytes()])
    with pytest.raises(BadHeader, match=r"\$\.deadline_ms"):
        decode_frame(body, InferFrameHeader)
    body = raw_frame(good_header(qoe={"accuracy": "high"}), [GOOD_INPUT.tobytes()])
    with pytest.raises(BadHeader, match=r"\$\.qoe\.accuracy"):
        decode_frame(body, InferFrameHeader)


def test_a_missing_required_field_or_an_unknown_field_is_a_bad_header():
    header = good_header()
    del header["deadline_ms"]
    with pytest.raises(BadHeader, match="deadline_ms"):
        decode_frame(raw_frame(header, [GOOD_INPUT.tobytes()]), InferFrameHeader)
    with pytest.raises(BadHeader, match="colour"):
        decode_frame(raw_frame(good_header(colour="red"), [GOOD_INPUT.tobytes()]), InferFrameHeader)


def test_a_missing_version_is_a_bad_header():
    header = good_header()
    del header["version"]
    with pytest.raises(BadHeader, match="version"):
        decode_frame(raw_frame(header, [GOOD_INPUT.tobytes()]), InferFrameHeader)


def test_another_version_is_unsupported_even_if_its_fields_differ():
    header = {"version": WIRE_VERSION + 1, "tensors": [], "deadline": {"ms": 5}}
    with pytest.raises(UnsupportedVersion, match=f"version {WIRE_VERSION + 1}"):
        decode_frame(raw_frame(header, []), InferFrameHeader)
    with pytest.raises(UnsupportedVersion):
        decode_frame(encode_frame_bytes(InferFrameHeader(deadline_ms=5, version=0), {"input": GOOD_INPUT}),
                     InferFrameHeader)


def test_an_unknown_dtype_is_a_bad_dtype():
    header = good_header(tensors=[spec("input", "complex64", [1, 1, 8, 8], 512)])
    with pytest.raises(BadDtype, match="complex64"):
        decode_frame(raw_frame(header, [bytes(512)]), InferFrameHeader)


def test_shape_times_itemsize_must_equal_nbytes():
    header = good_header(tensors=[spec("input", "float32", [1, 1, 8, 8], 255)])
    with pytest.raises(BadShape, match="needs 256 bytes"):
        decode_frame(raw_frame(header, [bytes(255)]), InferFrameHeader)


def test_a_negative_dimension_is_a_bad_shape():
    header = good_header(tensors=[spec("input", "float32", [-1, 64], 256)])
    with pytest.raises(BadShape, match="negative"):
        decode_frame(raw_frame(header, [bytes(256)]), InferFrameHeader)


def test_fewer_tensor_bytes_than_declared_is_truncated():
    body = raw_frame(good_header(), [GOOD_INPUT.tobytes()])
    with pytest.raises(TruncatedBody, match="ends 1 bytes early"):
        decode_frame(body[:-1], InferFrameHeader)


def test_trailing_bytes_after_the_last_tensor_are_a_bad_request():
    body = raw_frame(good_header(), [GOOD_INPUT.tobytes()])
    with pytest.raises(BadRequest, match="3 trailing bytes") as caught:
        decode_frame(body + b"abc", InferFrameHeader)
    assert type(caught.value) is BadRequest


def test_a_tensor_named_twice_is_a_bad_header():
    header = good_header(tensors=[spec("input", "uint8", [8], 8), spec("input", "uint8", [8], 8)])
    with pytest.raises(BadHeader, match="twice"):
        decode_frame(raw_frame(header, [bytes(8), bytes(8)]), InferFrameHeader)


def test_a_bad_tensor_spec_is_a_bad_header():
    header = good_header(tensors=[{"name": "input", "dtype": "float32", "shape": [64]}])
    with pytest.raises(BadHeader, match="nbytes"):
        decode_frame(raw_frame(header, [bytes(256)]), InferFrameHeader)


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [1] * 40])
def test_absurd_shapes_are_a_bad_shape_not_a_crash(shape):
    header = good_header(tensors=[spec("input", "float32", shape, 0 if 0 in shape else 4)])
    with pytest.raises(BadShape):
        decode_frame(raw_frame(header, [bytes(0 if 0 in shape else 4)]), InferFrameHeader)
