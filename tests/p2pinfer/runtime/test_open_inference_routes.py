"""OIP v2 ``BYTES`` image inputs through a real node (the real family): Triton's binary
serialisation (4-byte little-endian length + bytes per element), JSON base64 (JPEG, PNG and
garbage), a batch of two, 400 ``bad_image`` for bytes that are not an image, and the plan each
answer reports in the response's ``parameters``."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from p2pinfer.protocol.open_inference import HEADER_LENGTH_HEADER, parse_infer_response
from zoo import orientation_data
from zoo.manifest import PRETRAINED_ZOO_DIR

FAMILY = "text-orientation"
VARIANT = "text-orientation-r160"


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"{url}/v2/models/{FAMILY}/infer", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def binary_bytes_request(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(len(image).to_bytes(4, "little") + image for image in images)
    header = json.dumps({"parameters": {"deadline_ms": 30000, "variant": VARIANT},
                         "inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH_HEADER: str(len(header))}


def test_bytes_images_through_a_node(node_factory) -> None:
    node = node_factory("--node-id", "solo", "--zoo", str(PRETRAINED_ZOO_DIR), "--variants", f"{VARIANT}:0-4")
    pages = [orientation_data.sample(orientation_data.HELD_OUT_SEED, index) for index in (2, 3)]
    jpeg, png = encoded(pages[0].image, "JPEG"), encoded(pages[1].image, "PNG")

    body, headers = binary_bytes_request([jpeg, png])
    status, answer, answer_headers = post(node.url, body, headers)
    assert status == 200, answer
    outputs = parse_infer_response(answer, answer_headers.get(HEADER_LENGTH_HEADER))
    assert outputs["label"].tolist() == [pages[0].label, pages[1].label]
    # every parameter value is a string, number or boolean (the spec's); the plan of each row is a JSON string
    parameters = json.loads(answer)["parameters"]  # no output asked for binary: the answer is JSON
    assert all(isinstance(value, (str, int, float, bool)) for value in parameters.values()), parameters
    local = [{"node": "solo", "unit": "cpu", "first_block": 0, "last_block": 4, "codec": "float32", "wire_bytes": 0}]
    assert json.loads(parameters["plan"]) == [local, local] and len(json.loads(parameters["request_ids"])) == 2

    def json_request(element: str) -> bytes:
        return json.dumps({"parameters": {"deadline_ms": 30000, "variant": VARIANT},
                           "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                       "data": [element]}]}).encode()

    for image, row in ((png, 1), (jpeg, 0)):
        status, answer, _ = post(node.url, json_request(base64.b64encode(image).decode()),
                                 {"Content-Type": "application/json"})
        assert status == 200, answer
        single = parse_infer_response(answer)
        assert single["label"].tolist() == [pages[row].label]
        assert np.allclose(single["probabilities"][0], outputs["probabilities"][row], atol=1e-5)
        assert json.loads(json.loads(answer)["parameters"]["plan"]) == [local]
    # garbage in JSON: base64 of bytes that are no image, and a string that is not base64 (its raw bytes)
    for element in (base64.b64encode(b"not an image at all").decode(), "%%% not base64, not an image %%%"):
        status, answer, _ = post(node.url, json_request(element), {"Content-Type": "application/json"})
        assert status == 400 and b"bad_image" in answer, answer

    for bad in (b"not an image at all", jpeg[: len(jpeg) // 3]):
        body, headers = binary_bytes_request([bad])
        status, answer, _ = post(node.url, body, headers)
        assert status == 400 and b"bad_image" in answer, answer
    status, answer, _ = post(node.url, *binary_bytes_request([jpeg]))
    assert status == 200  # and the node keeps serving
