"""The Open Inference Protocol codec: JSON and binary-extension requests as v2 clients send them,
responses (JSON and binary outputs), model metadata, and a typed error per bad request."""

from __future__ import annotations

import base64
import json

import msgspec
import numpy as np
import pytest

from p2pinfer.errors import BadDtype, BadHeader, BadRequest, BadShape, TruncatedBody
from p2pinfer.protocol import open_inference
from p2pinfer.protocol.open_inference import (
    HEADER_LENGTH_HEADER,
    RequestOutput,
    answer_parameters,
    build_infer_response,
    classification_outputs,
    model_metadata,
    parse_infer_request,
    parse_infer_response,
    server_metadata,
)
from p2pinfer.protocol.schema import InferResult, PlanSegment, SegmentTiming
from selector.qoe import QoEWeights

PIXELS = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)


def request_body(**fields) -> bytes:
    request = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                           "data": PIXELS.ravel().tolist()}]}
    request.update(fields)
    return json.dumps(request).encode()


def binary_request(inputs: list[tuple[dict, bytes | None]], align: bool = False, **fields) -> tuple[bytes, str]:
    """A request in Triton's binary extension: JSON header, then binary inputs in order
    (``align`` pads the JSON with spaces so the first binary input starts 8-byte aligned)."""
    described = []
    payload = b""
    for description, raw in inputs:
        if raw is not None:
            description = {**description, "parameters": {"binary_data_size": len(raw)}}
            payload += raw
        described.append(description)
    header = json.dumps({"inputs": described, **fields}).encode()
    if align:
        header += b" " * (-len(header) % 8)
    return header + payload, str(len(header))


# ---- requests ---------------------------------------------------------------------------------


def test_a_json_request_as_the_protocol_shows_it():
    parsed = parse_infer_request(request_body(id="42"))
    assert parsed.id == "42"
    assert list(parsed.inputs) == ["input"]
    assert parsed.input_array().dtype == np.float32
    assert np.array_equal(parsed.input_array(), PIXELS)
    assert parsed.deadline_ms is None and parsed.qoe is None and parsed.outputs is None


def test_nested_data_equals_flat_data():
    nested = request_body(inputs=[{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "data": PIXELS.tolist()}])
    assert np.array_equal(parse_infer_request(nested).input_array(), PIXELS)


@pytest.mark.parametrize("datatype,values,dtype", [
    ("FP16", [1.5, -2.0], np.float16), ("FP64", [1e-300, 2.0], np.float64), ("INT64", [2**40, -3], np.int64),
    ("INT32", [7, -7], np.int32), ("UINT8", [0, 255], np.uint8), ("BOOL", [True, False], np.bool_),
])
def test_every_supported_datatype_parses_from_json(datatype, values, dtype):
    body = request_body(inputs=[{"name": "x", "shape": [2], "datatype": datatype, "data": values}])
    array = parse_infer_request(body).input_array("x")
    assert array.dtype == dtype and array.tolist() == np.asarray(values, dtype=dtype).tolist()


def test_knobs_ride_in_parameters():
    parsed = parse_infer_request(request_body(id="r7", parameters={
        "deadline_ms": 80, "user": "ada", "qoe_accuracy": 2.0, "qoe_latency": 0.25, "variant": "w50",
        "exit": 1, "confidence_threshold": 0.8, "min_accuracy": 0.9, "custom": "kept",
    }))
    assert parsed.deadline_ms == 80.0 and parsed.user == "ada" and parsed.variant == "w50"
    assert parsed.qoe == QoEWeights(accuracy=2.0, latency=0.25)  # energy keeps its default
    assert parsed.exit == 1 and parsed.confidence_threshold == 0.8
    assert parsed.parameters["custom"] == "kept"
    request = parsed.infer_request("digits-cnn", default_deadline_ms=1000)
    assert (request.deadline_ms, request.family, request.user, request.request_id) == (80.0, "digits-cnn", "ada", "r7")
    assert request.variant == "w50" and request.exit == 1 and request.qoe.accuracy == 2.0
    assert parsed.min_accuracy == 0.9 and request.min_accuracy == 0.9


def test_a_request_without_knobs_gets_the_nodes_defaults():
    request = parse_infer_request(request_body()).infer_request("digits-cnn", default_deadline_ms=1000)
    assert request.deadline_ms == 1000 and request.user == "anonymous" and request.qoe == QoEWeights()


def test_binary_inputs_are_read_in_order_without_copies():
    mask = np.array([[True, False, True]])
    body, length = binary_request([
        ({"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}, PIXELS.tobytes()),
        ({"name": "ids", "shape": [2], "datatype": "INT64", "data": [4, 5]}, None),  # JSON between binary ones
        ({"name": "mask", "shape": [1, 3], "datatype": "BOOL"}, mask.tobytes()),
    ], align=True)
    parsed = parse_infer_request(body, length)
    assert np.array_equal(parsed.inputs["input"], PIXELS)
    assert parsed.inputs["ids"].tolist() == [4, 5]
    assert np.array_equal(parsed.inputs["mask"], mask)
    assert np.shares_memory(parsed.inputs["input"], np.frombuffer(body, dtype=np.uint8))


def test_binary_inputs_at_odd_offsets_come_back_aligned():
    values = np.arange(5, dtype=np.float64)
    body, length = binary_request([({"name": "x", "shape": [5], "datatype": "FP64"}, values.tobytes())], id="abc")
    assert int(length) % 8  # the JSON ends at an odd offset here
    array = parse_infer_request(body, length).input_array("x")
    assert array.flags.aligned and np.array_equal(array, values)


def test_input_array_picks_by_name_or_the_only_one():
    body = request_body(inputs=[{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                                {"name": "b", "shape": [1], "datatype": "FP32", "data": [2]}])
    parsed = parse_infer_request(body)
    assert parsed.input_array("b").tolist() == [2.0]
    with pytest.raises(BadRequest, match="'input'"):
        parsed.input_array()


# ---- bad requests -----------------------------------------------------------------------------


def test_bytes_elements_in_json_are_base64_or_the_raw_string():
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg"
    encoded = base64.b64encode(jpeg).decode()
    body = request_body(inputs=[{"name": "image", "shape": [3], "datatype": "BYTES",
                                 "data": [encoded, {"b64": encoded}, "hello"]}])
    parsed = parse_infer_request(body)
    assert parsed.byte_inputs == {"image": [jpeg, jpeg, b"hello"]} and parsed.inputs == {}
    assert parsed.input_images() == [jpeg, jpeg, b"hello"]
    nested = request_body(inputs=[{"name": "image", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}])
    assert parse_infer_request(nested).input_images() == [b"a", b"b"]


def test_bytes_elements_in_the_binary_extension_are_length_prefixed():
    images = [b"\x89PNG\r\n\x1a\n" + bytes(10), b"\xff\xd8\xff" + bytes(3)]
    raw = b"".join(len(image).to_bytes(4, "little") + image for image in images)
    body, length = binary_request([({"name": "image", "shape": [2], "datatype": "BYTES"}, raw),
                                   ({"name": "x", "shape": [2], "datatype": "FP32"}, bytes(8))])
    parsed = parse_infer_request(body, length)
    assert parsed.byte_inputs["image"] == images and parsed.inputs["x"].shape == (2,)
    with pytest.raises(BadRequest, match="only input"):
        parsed.input_images()


@pytest.mark.parametrize(("raw", "shape", "error", "match"), [
    (b"\x05\x00\x00\x00abc", [1], TruncatedBody, "runs past"),
    (b"\x05\x00", [1], TruncatedBody, "cut short"),
    (b"\x01\x00\x00\x00a", [2], BadShape, "needs 2 BYTES elements"),
])
def test_bad_binary_bytes_elements_are_named(raw, shape, error, match):
    body, length = binary_request([({"name": "image", "shape": shape, "datatype": "BYTES"}, raw)])
    with pytest.raises(error, match=match):
        parse_infer_request(body, length)


def test_bytes_data_must_match_its_shape_and_be_strings():
    with pytest.raises(BadShape, match="needs 2 elements"):
        parse_infer_request(request_body(inputs=[{"name": "i", "shape": [2], "datatype": "BYTES", "data": ["a"]}]))
    with pytest.raises(BadDtype, match="strings"):
        parse_infer_request(request_body(inputs=[{"name": "i", "shape": [1], "datatype": "BYTES", "data": [7]}]))
    with pytest.raises(BadRequest, match="b64"):
        parse_infer_request(request_body(inputs=[{"name": "i", "shape": [1], "datatype": "BYTES",
                                                  "data": [{"b64": "%%"}]}]))


@pytest.mark.parametrize("datatype", ["INT8", "UINT32", "BF16", "fp32"])
def test_unsupported_datatypes_are_a_bad_dtype(datatype):
    body = request_body(inputs=[{"name": "x", "shape": [1], "datatype": datatype, "data": [1]}])
    with pytest.raises(BadDtype, match=repr(datatype)):
        parse_infer_request(body)


def test_shape_and_data_length_must_agree():
    body = request_body(inputs=[{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 63}])
    with pytest.raises(BadShape, match="63 values but shape \\[1, 1, 8, 8\\] needs 64"):
        parse_infer_request(body)


def test_data_of_the_wrong_kind_is_a_bad_dtype():
    body = request_body(inputs=[{"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}])
    with pytest.raises(BadDtype):
        parse_infer_request(body)


@pytest.mark.parametrize("body,match", [
    (b"{not json", "malformed"),
    (b'{"inputs": "none"}', r"\$\.inputs"),
    (b'{"inputs": [{"name": "x", "shape": [1.5], "datatype": "FP32", "data": [1]}]}', r"\$\.inputs\[0\]\.shape"),
    (b'{"inputs": []}', "no inputs"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', "neither data"),
])
def test_malformed_requests_are_bad_requests(body, match):
    with pytest.raises(BadRequest, match=match):
        parse_infer_request(body)


@pytest.mark.parametrize("key,value", [("deadline_ms", "soon"), ("deadline_ms", True), ("exit", 1.5),
                                       ("user", 7), ("qoe_latency", "low"), ("binary_data_output", "yes")])
def test_a_parameter_of_the_wrong_type_is_named(key, value):
    with pytest.raises(BadRequest, match=key):
        parse_infer_request(request_body(parameters={key: value}))


def test_negative_qoe_weights_are_refused():
    with pytest.raises(BadRequest, match="qoe_energy"):
        parse_infer_request(request_body(parameters={"qoe_energy": -1}))


def test_binary_size_must_match_the_shape():
    body, length = binary_request([({"name": "x", "shape": [4], "datatype": "FP32"}, bytes(12))])
    with pytest.raises(BadShape, match="needs 16 bytes, but binary_data_size is 12"):
        parse_infer_request(body, length)


def test_binary_data_cut_short_is_truncated():
    body, length = binary_request([({"name": "x", "shape": [4], "datatype": "FP32"}, bytes(16))])
    with pytest.raises(TruncatedBody, match="only 10"):
        parse_infer_request(body[:-6], length)


def test_bytes_after_the_last_binary_input_are_a_bad_request():
    body, length = binary_request([({"name": "x", "shape": [4], "datatype": "FP32"}, bytes(16))])
    with pytest.raises(BadRequest, match="2 bytes after"):
        parse_infer_request(body + b"!!", length)


def test_binary_data_without_the_length_header_is_a_bad_request():
    body, _ = binary_request([({"name": "x", "shape": [4], "datatype": "FP32"}, bytes(16))])
    header_only = body[:-16]
    with pytest.raises(BadRequest, match=HEADER_LENGTH_HEADER):
        parse_infer_request(header_only)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "999999"])
def test_a_bad_header_length_is_a_bad_header(value):
    with pytest.raises(BadHeader, match=HEADER_LENGTH_HEADER):
        parse_infer_request(request_body(), value)


def test_both_binary_size_and_data_is_a_bad_request():
    header = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0],
                                     "parameters": {"binary_data_size": 4}}]}).encode()
    with pytest.raises(BadRequest, match="both"):
        parse_infer_request(header + bytes(4), len(header))


# ---- responses and metadata -------------------------------------------------------------------


def test_a_json_response_as_the_protocol_shows_it():
    outputs = classification_outputs(np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32))
    body, headers = build_infer_response("digits-cnn", outputs, request_id="42", model_version="1",
                                         parameters={"variant": "w50", "deadline_met": True})
    assert headers == {"Content-Type": "application/json"}
    response = json.loads(body)
    assert response["model_name"] == "digits-cnn" and response["id"] == "42" and response["model_version"] == "1"
    assert response["parameters"] == {"variant": "w50", "deadline_met": True}
    probabilities, label = response["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["datatype"] == "FP32"
    assert probabilities["shape"] == [2, 3] and len(probabilities["data"]) == 6
    assert np.allclose(probabilities["data"], [0.1, 0.7, 0.2, 0.6, 0.3, 0.1])
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}


def test_requested_outputs_select_and_order_them():
    outputs = classification_outputs(np.array([0.2, 0.8], dtype=np.float32))
    body, _ = build_infer_response("m", outputs, requested=[RequestOutput(name="label")])
    assert [output["name"] for output in json.loads(body)["outputs"]] == ["label"]
    with pytest.raises(BadRequest, match="unknown output 'logits'"):
        build_infer_response("m", outputs, requested=[RequestOutput(name="logits")])


def test_binary_outputs_follow_the_json_with_the_length_header():
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    outputs = classification_outputs(probabilities)
    requested = [RequestOutput(name="probabilities", parameters={"binary_data": True}), RequestOutput(name="label")]
    body, headers = build_infer_response("m", outputs, requested=requested)
    length = int(headers[HEADER_LENGTH_HEADER])
    assert headers["Content-Type"] == "application/octet-stream"
    described = msgspec.json.decode(body[:length])["outputs"]
    assert described[0] == {"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
                            "parameters": {"binary_data_size": 8}}
    assert body[length:] == probabilities.tobytes()
    decoded = parse_infer_response(body, length)
    assert np.array_equal(decoded["probabilities"], probabilities) and decoded["label"].tolist() == [1]


def test_binary_data_output_makes_every_output_binary():
    parsed = parse_infer_request(request_body(parameters={"binary_data_output": True}))
    outputs = classification_outputs(np.array([0.9, 0.1], dtype=np.float32))
    body, headers = build_infer_response("m", outputs, requested=parsed.outputs, binary_outputs=parsed.binary_outputs)
    decoded = parse_infer_response(body, headers[HEADER_LENGTH_HEADER])
    assert decoded["label"].tolist() == [0] and decoded["probabilities"].shape == (1, 2)
    assert all("data" not in output for output in msgspec.json.decode(body[:int(headers[HEADER_LENGTH_HEADER])])[
        "outputs"])


def test_model_metadata_as_the_protocol_shows_it():
    metadata = model_metadata("digits-cnn", (1, 8, 8), 10, versions=["1", "2"])
    assert metadata == {
        "name": "digits-cnn",
        "versions": ["1", "2"],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }


def test_server_metadata_names_the_extensions():
    assert "binary_tensor_data" in server_metadata("0.1.0")["extensions"]


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [1] * 40, [-1, 4]])
def test_absurd_shapes_are_a_bad_shape_not_a_crash(shape):
    with pytest.raises(BadShape):
        parse_infer_request(request_body(inputs=[{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]))
    body, length = binary_request([({"name": "x", "shape": shape, "datatype": "FP32"}, b"")])
    with pytest.raises(BadShape):
        parse_infer_request(body, length)


@pytest.mark.parametrize("datatype", sorted(open_inference.DATATYPES))
def test_every_datatype_is_named_for_its_dtype_in_either_byte_order(datatype: str) -> None:
    array = np.zeros(3, dtype=open_inference.DATATYPES[datatype])
    assert open_inference.datatype_of(array) == datatype
    assert open_inference.datatype_of(array.astype(array.dtype.newbyteorder(">"))) == datatype


def test_the_answer_parameters_carry_each_rows_plan_with_its_codecs_as_json_strings():
    """A native answer reports the codec and wire bytes of each hop (``plan``, ``timings``); the
    v2 answer says the same in ``parameters``, whose values the spec allows to be strings,
    numbers or booleans only: lists travel as JSON strings."""
    plan = [PlanSegment(node="device", unit="cpu", first_block=0, last_block=1),
            PlanSegment(node="edge", unit="cuda:0", first_block=2, last_block=4, codec="uint8-channel+lz4")]
    timings = [SegmentTiming(node="device", unit="cpu", first_block=0, last_block=1, compute_ms=3.0),
               SegmentTiming(node="edge", unit="cuda:0", first_block=2, last_block=4, compute_ms=1.0,
                             codec="uint8-channel+lz4", wire_bytes=169_266)]
    offload = [PlanSegment(node="edge", unit="cpu", first_block=0, last_block=2, codec="image/jpeg")]
    results = [InferResult(request_id="r-0", label=1, probabilities=[0.1, 0.9], exit=4, variant="v", family="f",
                           plan=plan, timings=timings, latency_ms=9.0, deadline_ms=50.0, deadline_met=True),
               InferResult(request_id="r-1", label=0, probabilities=[0.9, 0.1], exit=4, variant="v", family="f",
                           plan=offload, timings=[], latency_ms=60.0, deadline_ms=50.0, deadline_met=False)]
    parameters = answer_parameters(results)
    assert all(isinstance(value, (str, int, bool)) for value in parameters.values())
    assert parameters["variant"] == "v" and parameters["exit"] == 4 and parameters["deadline_met"] is False
    assert json.loads(str(parameters["request_ids"])) == ["r-0", "r-1"]
    assert json.loads(str(parameters["plan"])) == [
        [{"node": "device", "unit": "cpu", "first_block": 0, "last_block": 1, "codec": "float32", "wire_bytes": 0},
         {"node": "edge", "unit": "cuda:0", "first_block": 2, "last_block": 4, "codec": "uint8-channel+lz4",
          "wire_bytes": 169_266}],
        [{"node": "edge", "unit": "cpu", "first_block": 0, "last_block": 2, "codec": "image/jpeg", "wire_bytes": 0}]]
    body, _ = build_infer_response("f", classification_outputs(np.array([[0.1, 0.9]])), parameters=parameters)
    assert json.loads(body)["parameters"] == parameters
