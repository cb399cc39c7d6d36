"""A real node process on 127.0.0.1: results, bad input, overload, drain, Open Inference Protocol."""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import urllib.error
import urllib.request

import aiohttp
import msgspec
import numpy as np
import pytest
import torch

from p2pinfer import AsyncClient, Client
from p2pinfer.errors import UnknownRequest
from p2pinfer.protocol.wire import CONTENT_TYPE, InferFrameHeader, encode_frame_bytes
from p2pinfer.testing import async_wait_until
from selector.qoe import QoEWeights
from zoo.dataset import held_out
from zoo.model_slice import load_slice

CNN = "digits-cnn-w1"


def digits(count: int = 5, shape=(1, 8, 8)):
    images, labels = held_out(shape)
    return images[:count].numpy(), labels[:count].numpy()


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_results_through_the_node_equal_the_in_process_forward(node_factory):
    node = node_factory("--variants", "digits-cnn")
    images, labels = digits()
    model = load_slice(CNN)
    expected = torch.softmax(model.exit_logits(2, model.run(torch.from_numpy(images))), -1)
    with Client(node.url) as client:
        for index in range(len(images)):
            result = client.infer(images[index], deadline_ms=1000, family="digits-cnn", variant=CNN)
            assert result.variant == CNN and result.exit == 2 and result.deadline_met
            assert np.allclose(result.probabilities, expected[index].numpy(), atol=2e-6)
            assert result.label == int(expected[index].argmax())
            assert result.plan[0].first_block == 0 and result.plan[0].last_block == 2
            assert result.timings[0].compute_ms > 0
    # the JSON route gives the same answer
    status, body, _ = post(f"{node.url}/v1/infer", json.dumps(
        {"deadline_ms": 1000, "family": "digits-cnn", "variant": CNN, "data": images[:1].tolist()}).encode(),
        "application/json")
    assert status == 200 and np.allclose(body["probabilities"], expected[0].numpy(), atol=2e-6)


def frame(deadline_ms: float = 1000.0, array: np.ndarray | None = None, **fields) -> bytes:
    array = digits(1)[0] if array is None else array
    return encode_frame_bytes(InferFrameHeader(deadline_ms=deadline_ms, family="digits-cnn", **fields),
                              {"input": array})


def test_each_bad_input_gets_a_clear_4xx_and_the_node_keeps_serving(node_factory):
    node = node_factory("--variants", "digits-cnn", "--max-body-bytes", "20000")
    image = digits(1)[0]
    good = frame()
    header_length = struct.unpack(">I", good[:4])[0]
    versionless = msgspec.msgpack.decode(good[4:4 + header_length])
    versionless["version"] = 99
    new_header = msgspec.msgpack.encode(versionless)
    future_version = struct.pack(">I", len(new_header)) + new_header + good[4 + header_length:]
    nan_image = image.copy()
    nan_image[0, 0, 0, 0] = np.nan
    cases = {
        "bad_shape": (frame(array=np.zeros((1, 1, 9, 9), np.float32)), CONTENT_TYPE),
        "bad_dtype": (frame(array=np.zeros((1, 1, 8, 8), np.int64)), CONTENT_TYPE),
        "non_finite_input": (frame(array=nan_image), CONTENT_TYPE),
        "payload_too_large": (frame(array=np.zeros((100, 1, 8, 8), np.float32)), CONTENT_TYPE),
        "truncated_body": (good[:-10], CONTENT_TYPE),
        "bad_header": (struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1" + b"x" * 8, CONTENT_TYPE),
        "unsupported_version": (future_version, CONTENT_TYPE),
        "unknown_family": (encode_frame_bytes(InferFrameHeader(deadline_ms=100, family="imagenet"),
                                              {"input": image}), CONTENT_TYPE),
        "unknown_variant": (frame(variant="digits-cnn-w7"), CONTENT_TYPE),
        "bad_deadline:negative": (frame(deadline_ms=-5), CONTENT_TYPE),
        "bad_deadline:zero": (frame(deadline_ms=0), CONTENT_TYPE),
        "bad_deadline:nan": (frame(deadline_ms=math.nan), CONTENT_TYPE),
        "bad_deadline:absurd": (frame(deadline_ms=1e12), CONTENT_TYPE),
        "unsupported_media_type": (b"hello", "text/plain"),
        "bad_request:json": (b"{not json", "application/json"),
    }
    for name, (body, content_type) in cases.items():
        status, answer, _ = post(f"{node.url}/v1/infer", body, content_type)
        code = name.split(":")[0]
        assert 400 <= status < 500, (name, status, answer)
        assert answer["code"] == code, (name, answer)
        assert answer["error"], name
        # the node keeps serving: a good request right after succeeds
        status, answer, _ = post(f"{node.url}/v1/infer", good, CONTENT_TYPE)
        assert status == 200 and answer["label"] in range(10), name
    with Client(node.url) as client:
        with pytest.raises(UnknownRequest):
            client.feedback("no-such-request", label=3)
        metrics = client.metrics()
    rejected = metric(metrics, "p2pinfer_rejected_inputs_total")
    assert rejected == len(cases) + 1, metrics  # + the unknown request id on feedback
    assert 'reason="bad_deadline"' in metrics and 'reason="unknown_request"' in metrics


def test_feedback_for_an_answered_request_is_applied(node_factory):
    node = node_factory("--variants", "digits-cnn")
    images, labels = digits(1)
    with Client(node.url) as client:
        result = client.infer(images[0], deadline_ms=1000)
        # the policy chose the arm and the planner placed it: the answer says what it predicted
        assert result.predicted_ms is not None and 0.0 < result.predicted_ms < 1000.0
        planner = client.health()["planner"]["prediction_residual_ms"]
        assert planner["samples"] >= 1 and planner["mean"] != 0.0  # the answer taught the planner its bias
        routes = client.health()["planner"]["route_residual_ms"]  # ... and its route's overhead
        assert [route["samples"] for route in routes.values()] == [1], routes
        entry = client.health()["planner"]["entry_overhead_ms"]  # ... and what the entry adds to a local plan
        assert list(entry) == ["local"] and entry["local"]["samples"] == 1 and entry["local"]["mean"] > 0.0, entry
        feedback = client.feedback(result.request_id, label=int(labels[0]))
        assert feedback.applied and feedback.request_id == result.request_id
        assert re.search(r'p2pinfer_feedback_total\{kind="label"\} 1\.0', client.metrics())


async def test_a_full_queue_answers_429_with_retry_after(node_factory):
    node = node_factory("--variants", "digits-resnet-w1", "--queue-capacity", "1", "--max-batch", "1")
    images, _ = digits(1, (1, 64, 64))
    body = encode_frame_bytes(InferFrameHeader(deadline_ms=30000, family="digits-resnet"), {"input": images})
    async with aiohttp.ClientSession() as session:
        async def one() -> tuple[int, str | None]:
            async with session.post(f"{node.url}/v1/infer", data=body,
                                    headers={"Content-Type": CONTENT_TYPE}) as answer:
                await answer.read()
                return answer.status, answer.headers.get("Retry-After")

        outcomes = await asyncio.gather(*[one() for _ in range(12)])
    statuses = [status for status, _ in outcomes]
    assert 429 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 429}
    assert all(retry is not None and int(retry) >= 1 for status, retry in outcomes if status == 429)


async def test_sigterm_drains_in_flight_requests_then_exits_zero(node_factory):
    # a Pi's speed (compute padded to it): the six requests queue long enough for the health poll to see
    # all six in flight; at this host's own speed they could all be answered between two polls (1 run in 6)
    node = node_factory("--variants", "digits-resnet-w1", "--max-batch", "1", "--device-profile", "rpi4")
    images, _ = digits(1, (1, 64, 64))
    async with AsyncClient(node.url) as client:
        tasks = [asyncio.create_task(client.infer(images[0], deadline_ms=30000, family="digits-resnet",
                                                  variant="digits-resnet-w1"))
                 for _ in range(6)]

        async def all_accepted() -> bool:
            health = await client.health()
            return health["in_flight"] >= 6

        await async_wait_until(all_accepted, timeout_s=20, message="6 requests in flight")
        node.process.send_signal(15)
        results = await asyncio.gather(*tasks)
    assert len(results) == 6 and all(result.exit == 3 for result in results)
    assert await asyncio.to_thread(node.process.wait, 30) == 0


def test_open_inference_protocol_routes_answer_as_the_protocol_shows(node_factory):
    node = node_factory("--variants", "digits-cnn")
    images, labels = digits(2)
    model = load_slice(CNN)
    expected = torch.softmax(model.exit_logits(2, model.run(torch.from_numpy(images))), -1).numpy()

    def get(path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{node.url}{path}", timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert get("/v2/health/live")[0] == 200 and get("/v2/health/ready")[0] == 200
    status, metadata = get("/v2/models/digits-cnn")
    assert status == 200 and metadata["name"] == "digits-cnn"
    assert metadata["inputs"][0]["shape"] == [-1, 1, 8, 8] and metadata["inputs"][0]["datatype"] == "FP32"
    assert get("/v2/models/digits-cnn/ready") == (200, {"name": "digits-cnn", "ready": True})
    assert get("/v2/models/imagenet")[0] == 404
    request = {"id": "req-7", "parameters": {"deadline_ms": 2000, "variant": CNN},
               "inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                           "data": images.ravel().tolist()}]}
    status, answer, _ = post(f"{node.url}/v2/models/digits-cnn/infer", json.dumps(request).encode(),
                             "application/json")
    assert status == 200, answer
    assert answer["model_name"] == "digits-cnn" and answer["id"] == "req-7"
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10] and outputs["probabilities"]["datatype"] == "FP32"
    assert np.allclose(np.array(outputs["probabilities"]["data"]).reshape(2, 10), expected, atol=2e-6)
    assert outputs["label"]["data"] == expected.argmax(-1).tolist()
    bad = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "BYTES", "data": ["x"] * 64}]}
    status, answer, _ = post(f"{node.url}/v2/models/digits-cnn/infer", json.dumps(bad).encode(), "application/json")
    assert status == 400 and "error" in answer


async def test_a_resent_request_id_runs_once(node_factory):
    node = node_factory("--variants", "digits-resnet-w0.25", "--max-batch", "1")
    images, _ = digits(1, (1, 64, 64))
    async with AsyncClient(node.url) as client:
        first, second = await asyncio.gather(*[
            client.infer(images[0], deadline_ms=30000, family="digits-resnet", request_id="same-id")
            for _ in range(2)])
        metrics = await client.metrics()
    assert first == second  # the very same answer, timings included
    assert metric(metrics, 'p2pinfer_block_compute_seconds_count{block="0"') == 1


# ---- issue 18 (hardening): one regression test per defect ------------------------------------

def v2_request(data: list, parameters: dict | None = None, shape=(1, 1, 8, 8)) -> bytes:
    return json.dumps({"parameters": parameters or {"deadline_ms": 2000},
                       "inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32", "data": data}]}).encode()


def native_json(array: np.ndarray, **fields) -> bytes:
    return json.dumps({"deadline_ms": 2000, "family": "digits-cnn", **fields, "data": array.tolist()}).encode()


def test_hardening_every_defect_is_a_4xx_counted_and_never_a_500(node_factory):
    node = node_factory("--variants", "digits-cnn")
    image = digits(1)[0]
    v1, v2 = f"{node.url}/v1/infer", f"{node.url}/v2/models/digits-cnn/infer"
    flat = image.ravel().tolist()
    statuses: list[int] = []

    def expect(status_wanted: set[int], url: str, body: bytes, content_type: str) -> dict:
        status, answer, _ = post(url, body, content_type)
        statuses.append(status)
        assert status in status_wanted, (status, answer)
        assert "code" in answer and "error" in answer
        return answer

    # 1. invalid QoE weights on every route and encoding
    for weights in ({"accuracy": -1}, {"accuracy": 0, "latency": 0, "energy": 0}):
        expect({400}, v1, native_json(image, qoe=weights), "application/json")
        expect({400}, v2, v2_request(flat, {"deadline_ms": 2000, **{f"qoe_{k}": v for k, v in weights.items()}}),
               "application/json")
    expect({400}, v1, native_json(image, qoe={"accuracy": float("nan")}).replace(b"NaN", b"1e999"),
           "application/json")
    with pytest.raises(ValueError):  # the SDK's weights refuse before anything is sent
        InferFrameHeader(deadline_ms=1000, qoe=QoEWeights(accuracy=-1.0))
    raw_header = msgspec.msgpack.encode({"deadline_ms": 1000.0, "family": "digits-cnn",
                                         "qoe": {"accuracy": -1.0, "latency": 0.5, "energy": 0.1},
                                         "tensors": [{"name": "input", "dtype": "float32", "shape": [1, 1, 8, 8],
                                                      "nbytes": 256}]})
    pad = b"\0" * ((-(4 + len(raw_header))) % 8)
    expect({400}, v1, struct.pack(">I", len(raw_header)) + raw_header + pad + image.astype("<f4").tobytes(),
           CONTENT_TYPE)
    # 2. finite but huge inputs: float32 3e38, float64 1e300 (overflows float32)
    huge = np.full_like(image, 3e38)
    expect({400, 422}, v1, frame(array=huge), CONTENT_TYPE)
    expect({400, 422}, v1, native_json(huge), "application/json")
    expect({400, 422}, v1, frame(array=np.full(image.shape, 1e300)), CONTENT_TYPE)
    expect({400, 422}, v2, v2_request([3e38] * 64), "application/json")
    # 3. JSON nested 1,000 levels
    deep = b'{"deadline_ms": 1000, "data": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    expect({400}, v1, deep, "application/json")
    expect({400}, v2, b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}", "application/json")
    expect({400}, f"{node.url}/v1/feedback", b'{"request_id": ' + b"[" * 1000 + b"]" * 1000 + b"}",
           "application/json")
    # ... and 3,000 levels behind closing brackets in a string (the audit's bypass: was a 500)
    deeper = b"[" * 3000 + b"]" * 3000
    closing = b"]" * 3000
    for url, body in [
            (v1, b'{"deadline_ms": 1000, "user": "' + closing + b'", "data": ' + deeper + b"}"),
            (v1, b'{"deadline_ms": 1000, "data": ' + deeper + b', "user": "' + closing + b'"}'),
            (v2, b'{"id": "' + closing + b'", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], '
                 b'"datatype": "FP32", "data": ' + deeper + b"}]}"),
            (v2, b'{"parameters": {"user": "' + b"}" * 3000 + b'"}, "inputs": [{"name": "input", '
                 b'"shape": [1, 1, 8, 8], "datatype": "FP32", "data": ' + deeper + b"}]}"),
            (f"{node.url}/v1/feedback", b'{"request_id": "' + closing + b'", "label": ' + deeper + b"}")]:
        assert expect({400}, url, body, "application/json")["code"] == "nested_too_deeply", (url, body[:40])
    # 8. a request id reused with a different request: 409
    status, first, _ = post(v1, native_json(image, request_id="reused-1"), "application/json")
    assert status == 200
    status, again, _ = post(v1, native_json(image, request_id="reused-1"), "application/json")
    assert status == 200 and again == first
    answer = expect({409}, v1, native_json(image * 0.5, request_id="reused-1"), "application/json")
    assert answer["code"] == "request_conflict"
    expect({409}, v1, native_json(image, request_id="reused-1", user="someone-else"), "application/json")
    # 10. client-chosen ids are bounded in length and charset
    expect({400}, v1, native_json(image, user="u" * (3 << 20)), "application/json")
    expect({400}, v1, native_json(image, user="a b"), "application/json")
    expect({400}, v1, native_json(image, request_id="x" * 129), "application/json")
    expect({400}, v2, v2_request(flat, {"deadline_ms": 2000, "user": "u" * 1000}), "application/json")
    # minor: text/plain on /v2, exit without variant, confidence threshold out of range
    expect({415}, v2, v2_request(flat), "text/plain")
    expect({400}, v1, native_json(image, exit=99), "application/json")
    expect({400}, v1, native_json(image, exit=-1), "application/json")
    expect({400}, v1, native_json(image, confidence_threshold=-1), "application/json")
    expect({400}, v1, frame(confidence_threshold=float("nan")), CONTENT_TYPE)
    expect({400}, v2, v2_request(flat, {"deadline_ms": 2000, "confidence_threshold": 2.0}), "application/json")
    # 4. every error answer is counted, /v2 included; nothing reached the last resort
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert metric(text, "p2pinfer_error_answers_total") == sum(1 for status in statuses if status >= 400)
    assert metric(text, "p2pinfer_internal_errors_total") == 0
    assert metric(text, 'p2pinfer_error_answers_total{code="unsupported_media_type"}') == 1
    # table sizes and the in-flight gauge are read when scraped; every batch run is counted
    assert metric(text, 'p2pinfer_state_entries{table="request_ids"}') >= 1  # "reused-1" is remembered
    assert metric(text, 'p2pinfer_state_entries{table="users"}') >= 1
    assert metric(text, "p2pinfer_in_flight") == 0
    assert metric(text, "p2pinfer_batch_size_count") >= 1


async def test_sigterm_ends_a_node_with_a_stalled_upload_within_the_drain_timeout(node_factory):
    """Defect 6: a client that stops mid-upload cannot hold the node past --drain-timeout + 1 s."""
    node = node_factory("--variants", "digits-cnn", "--drain-timeout", "1")
    port = int(node.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"deadline_ms\": 1000, ")
    await writer.drain()

    async def stalled_in_flight() -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"{node.url}/v1/health") as answer:
            return (await answer.json())["in_flight"] >= 1

    await async_wait_until(stalled_in_flight, timeout_s=10, message="the stalled upload in flight")
    started = asyncio.get_running_loop().time()
    node.process.send_signal(15)
    assert await asyncio.to_thread(node.process.wait, 30) == 0
    elapsed = asyncio.get_running_loop().time() - started
    writer.close()
    assert elapsed < 1 + 1, f"exited {elapsed:.2f} s after SIGTERM with --drain-timeout 1 (the bound: drain + 1 s)"


def test_fuzzed_requests_on_both_routes_and_encodings_never_get_a_5xx(node_factory):
    """The bounded fuzzer of the default suite (``benchmarks.fuzz`` runs >= 5,000 cases per
    route): generated hostile fields and byte mutations on every route and encoding of
    ``p2pinfer.hostile_requests.ROUTES`` (v1 frames, JSON and image bodies; v2 JSON, the binary extension
    and BYTES images), each on the node it needs; every answer is < 500 or a 504."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from p2pinfer.hostile_requests import NODES, ROUTES

    nodes = {name: node_factory(*NODES[name]) for name in sorted({route.node for route in ROUTES.values()})}
    seen: dict[str, dict[int, int]] = {name: {} for name in ROUTES}
    examples = 15 * len(ROUTES)

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.randoms(use_true_random=False), st.sampled_from(sorted(ROUTES)))
    def one(rng, name):
        route = ROUTES[name]
        case = route.case(rng)
        request = urllib.request.Request(case.url(f"{nodes[route.node].url}{route.path}"), data=case.body,
                                         headers=case.request_headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status = answer.status
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
            assert status < 500 or status == 504, (name, status, text[:300])
            assert json.loads(text)["code"], (name, text[:300])  # the typed error body, whatever refused it
        seen[name][status] = seen[name].get(status, 0) + 1

    one()
    assert sum(sum(statuses.values()) for statuses in seen.values()) == examples
    assert all(seen[name] for name in ROUTES), seen  # every route was fuzzed
    assert all(400 in statuses for statuses in seen.values()), seen


def test_a_wrong_secret_or_a_dead_seed_is_shown_in_health(node_factory):
    """Defect 9: a node with the wrong secret is alone, and /v1/health says why (both sides).
    The two run on different event loops (uvloop by default, asyncio's own when asked): both
    gossip, sign and refuse alike, and health names the loop."""
    from p2pinfer.testing import free_port, wait_until

    first = node_factory("--variants", "digits-cnn", "--secret", "right", "--gossip-interval", "0.1")
    dead_seed = f"127.0.0.1:{free_port()}"  # nothing listens there
    second = node_factory("--variants", "digits-cnn", "--secret", "wrong", "--gossip-interval", "0.1",
                          "--seed", first.address, "--seed", dead_seed, "--event-loop", "asyncio")

    def health(node) -> dict:
        with urllib.request.urlopen(f"{node.url}/v1/health", timeout=10) as answer:
            return json.loads(answer.read())

    wait_until(lambda: "refused: bad_signature" in health(first)["cluster"], timeout_s=20,
               message="the seed shows the refused signatures")
    wait_until(lambda: "refused our signature" in health(second)["cluster"], timeout_s=20,
               message="the joiner shows that its signature was refused")
    assert health(first)["cluster"].startswith("alone: ")
    assert (health(first)["event_loop"], health(second)["event_loop"]) == ("uvloop", "asyncio")
    # the dead seed has its own line, beside the refusing one
    wait_until(lambda: f"{dead_seed} unreachable" in health(second)["cluster"], timeout_s=20,
               message="the joiner shows its dead seed as unreachable")
    assert f"{first.address} refused our signature" in health(second)["cluster"]
    assert any("bad_signature" in line for line in first.output)
    assert any(f"gossip to {dead_seed}: unreachable" in line for line in second.output)


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as raw bytes; the status, headers and body of the answer (read to the
    connection's close: the node closes a connection whose request it could not parse)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_a_request_head_aiohttp_cannot_parse_gets_the_typed_error_counted_and_one_log_line(node_factory):
    """A 64 KB header line (and a 64 KB request line, and a malformed header) are refused by
    aiohttp's parser before any route: the answer is still the node's JSON error body, counted
    in the request and error metrics, and the log has one line for each, not a traceback."""
    from p2pinfer.testing import wait_until

    node = node_factory("--variants", "digits-cnn")
    port = int(node.url.rsplit(":", 1)[1])
    big_header = b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\nContent-Length: 0\r\n\r\n"
    long_line = b"GET /v1/health?" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    bad_header = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"
    answers = [raw_exchange(port, request) for request in (big_header, long_line, bad_header)]
    for status, headers, body in answers:
        assert headers["content-type"].startswith("application/json"), (status, headers, body[:200])
    codes = [(status, json.loads(body)["code"]) for status, _, body in answers]
    assert codes == [(431, "header_too_large"), (431, "header_too_large"), (400, "bad_request")], codes
    assert "8190 bytes" in json.loads(answers[0][2])["error"]
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert metric(text, 'p2pinfer_error_answers_total{code="header_too_large"}') == 2
    assert metric(text, 'p2pinfer_error_answers_total{code="bad_request"}') == 1
    assert metric(text, 'p2pinfer_requests_total{outcome="header_too_large"}') == 2
    assert metric(text, 'p2pinfer_rejected_inputs_total{reason="header_too_large"}') == 2
    wait_until(lambda: sum("refused an unreadable request" in line for line in node.output) == 3, timeout_s=10,
               message="one log line per unparsable request")
    assert not any("Traceback" in line or "LineTooLong" in line for line in node.output), node.output[-20:]
