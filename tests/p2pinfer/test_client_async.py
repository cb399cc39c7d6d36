"""AsyncClient against real aiohttp servers on loopback: the binary request, typed results and
errors, failover on connection errors only, and feedback routed to the node that answered."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import numpy as np
import pytest
import torch

from p2pinfer import AsyncClient
from p2pinfer.client import probabilities_array
from p2pinfer.errors import (
    BadShape,
    ConnectionFailed,
    DeadlineExceeded,
    Draining,
    NotFound,
    Overloaded,
    P2PError,
    UnknownRequest,
)
from p2pinfer.protocol.schema import InferResult
from p2pinfer.protocol.wire import frame_length
from p2pinfer.testing import free_port
from selector.qoe import QoEWeights
from tests.p2pinfer.client_test_servers import ClosingKeepAliveServer, ErrorAnswer, FakeNode, SilentServer

DIGIT = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)


@pytest.fixture
async def start_node():
    started: list[FakeNode] = []

    async def start(name: str, answer: ErrorAnswer | None = None) -> FakeNode:
        node = FakeNode(name, answer)
        await node.start(free_port())
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


async def test_infer_sends_a_binary_frame_and_returns_the_typed_result(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        result = await client.infer(DIGIT, deadline_ms=50, user="ada", qoe={"accuracy": 2.0}, family="digits-cnn",
                                    variant="w50", exit=1, confidence_threshold=0.9, request_id="r1")
    assert isinstance(result, InferResult)
    assert (result.request_id, result.variant, result.exit, result.entry_node) == ("r1", "w50", 1, "a")
    header = node.received[0].header
    assert (header.deadline_ms, header.user, header.family, header.variant, header.exit) == (50, "ada", "digits-cnn",
                                                                                              "w50", 1)
    assert header.qoe == QoEWeights(accuracy=2.0) and header.confidence_threshold == 0.9
    assert node.received[0].input.tobytes() == DIGIT.tobytes()
    probabilities = probabilities_array(result)
    assert probabilities.dtype == np.float32 and probabilities.shape == (10,)
    assert int(probabilities.argmax()) == result.label


async def test_a_request_id_is_made_when_none_is_given(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        result = await client.infer(DIGIT, deadline_ms=50)
    assert len(result.request_id) == 32 and result.request_id == node.received[0].header.request_id


async def test_a_big_input_is_sent_in_parts_with_a_content_length(start_node):
    node = await start_node("a")
    big = np.random.default_rng(1).random((1, 3, 256, 256), dtype=np.float32)  # 768 KiB
    async with AsyncClient(node.url) as client:
        await client.infer(big, deadline_ms=50)
    assert node.received[0].input.tobytes() == big.tobytes()
    assert node.content_lengths[0] is not None and node.content_lengths[0] > big.nbytes  # not chunked


async def test_torch_tensors_and_nested_lists_are_accepted(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        await client.infer(torch.from_numpy(DIGIT), deadline_ms=50)
        await client.infer(DIGIT.tolist(), deadline_ms=50)
    assert node.received[0].input.tobytes() == DIGIT.tobytes()
    assert node.received[1].input.dtype == np.float32 and np.array_equal(node.received[1].input, DIGIT)


async def test_429_raises_overloaded_with_retry_after_and_does_not_fail_over(start_node):
    busy = await start_node("busy", ErrorAnswer(429, "overloaded", "queue is full", retry_after="2"))
    spare = await start_node("spare")
    async with AsyncClient([busy.url, spare.url]) as client:
        with pytest.raises(Overloaded, match="queue is full") as caught:
            await client.infer(DIGIT, deadline_ms=50)
    assert caught.value.retry_after_s == 2.0 and caught.value.status == 429
    assert spare.hits == 0


@pytest.mark.parametrize("answer,error_type", [
    (ErrorAnswer(400, "bad_shape", "input shape [1, 9, 9] does not match"), BadShape),
    (ErrorAnswer(504, "deadline_exceeded", "budget spent"), DeadlineExceeded),
    (ErrorAnswer(404, None, "no such route"), NotFound),  # no code: mapped by status
    (ErrorAnswer(500, None, "", body=b"<html>boom</html>"), P2PError),  # not even JSON
    (ErrorAnswer(418, "teapot", "short and stout"), P2PError),  # a code this client does not know
])
async def test_error_answers_become_the_same_typed_error(start_node, answer, error_type):
    node = await start_node("a", answer)
    async with AsyncClient(node.url) as client:
        with pytest.raises(error_type) as caught:
            await client.infer(DIGIT, deadline_ms=50)
    assert type(caught.value) is error_type
    if answer.body is None:
        assert caught.value.message == answer.message


async def test_a_connection_error_fails_over_to_the_next_url(start_node):
    good = await start_node("good")
    async with AsyncClient([dead_url(), good.url]) as client:
        result = await client.infer(DIGIT, deadline_ms=50)
    assert result.entry_node == "good" and len(good.received) == 1


async def test_all_urls_dead_raises_connection_failed_naming_each():
    urls = [dead_url(), dead_url()]
    async with AsyncClient(urls, connect_timeout_s=2) as client:
        with pytest.raises(ConnectionFailed) as caught:
            await client.infer(DIGIT, deadline_ms=50)
    assert all(url in caught.value.message for url in urls)


async def test_no_failover_on_a_4xx_answer(start_node):
    refusing = await start_node("refusing", ErrorAnswer(400, "bad_shape", "wrong shape"))
    spare = await start_node("spare")
    async with AsyncClient([refusing.url, spare.url]) as client:
        with pytest.raises(BadShape):
            await client.infer(DIGIT, deadline_ms=50)
    assert refusing.hits == 1 and spare.hits == 0


async def test_no_failover_on_a_5xx_answer_other_than_draining(start_node):
    failing = await start_node("failing", ErrorAnswer(500, "internal", "executor crashed"))
    spare = await start_node("spare")
    async with AsyncClient([failing.url, spare.url]) as client:
        with pytest.raises(P2PError, match="executor crashed"):
            await client.infer(DIGIT, deadline_ms=50)
    assert spare.hits == 0


async def test_a_draining_node_fails_over_with_the_same_request_id(start_node):
    draining = await start_node("draining", ErrorAnswer(503, "draining", "shutting down", retry_after="1"))
    good = await start_node("good")
    async with AsyncClient([draining.url, good.url]) as client:
        result = await client.infer(DIGIT, deadline_ms=50, request_id="same")
    assert draining.hits == 1 and result.entry_node == "good" and good.received[0].header.request_id == "same"


async def test_only_draining_nodes_raise_draining(start_node):
    first = await start_node("a", ErrorAnswer(503, "draining", "shutting down", retry_after="3"))
    second = await start_node("b", ErrorAnswer(503, "draining", "shutting down", retry_after="3"))
    async with AsyncClient([first.url, second.url]) as client:
        with pytest.raises(Draining) as caught:
            await client.infer(DIGIT, deadline_ms=50)
    assert caught.value.retry_after_s == 3.0 and first.hits == second.hits == 1


async def test_requests_start_at_the_last_node_that_answered(start_node):
    first = await start_node("a", ErrorAnswer(503, "draining", "shutting down"))
    second = await start_node("b")
    async with AsyncClient([first.url, second.url]) as client:
        await client.infer(DIGIT, deadline_ms=50)
        first.answer = None  # back in service: the client still starts at b
        await client.infer(DIGIT, deadline_ms=50)
    assert first.hits == 1 and len(second.received) == 2


async def test_feedback_goes_to_the_node_that_answered_the_request(start_node):
    first = await start_node("a")
    second = await start_node("b")
    async with AsyncClient([first.url, second.url]) as client:
        answered_by_a = await client.infer(DIGIT, deadline_ms=50)
        first.answer = ErrorAnswer(503, "draining", "restarting")
        await client.infer(DIGIT, deadline_ms=50)  # answered by b, now the preferred node
        first.answer = None
        feedback = await client.feedback(answered_by_a.request_id, label=3, score=0.5)
        with pytest.raises(UnknownRequest):
            await client.feedback("never-sent", label=1)
    assert feedback.applied and feedback.request_id == answered_by_a.request_id and feedback.reward == 0.5
    assert [item.label for item in first.feedbacks] == [3] and second.feedbacks == []


async def test_health_peers_and_metrics(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        assert await client.health() == {"status": "ok", "node": "a"}
        assert await client.peers() == [{"node": "a", "status": "alive"}]
        assert 'p2pinfer_requests_total{node="a"} 0' in await client.metrics()


async def test_the_client_survives_a_node_restart(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        await client.infer(DIGIT, deadline_ms=50)
        await node.stop()
        await node.start(node.port)  # every kept-alive connection is gone
        result = await client.infer(DIGIT, deadline_ms=50)
    assert result.entry_node == "a" and len(node.received) == 2


async def test_a_given_session_is_used_and_left_open(start_node):
    node = await start_node("a")
    async with aiohttp.ClientSession() as session:
        client = AsyncClient(node.url, session=session)
        await client.infer(DIGIT, deadline_ms=50)
        await client.close()
        assert not session.closed


async def test_bad_qoe_weights_are_refused_before_sending(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        with pytest.raises(P2PError, match="qoe"):
            await client.infer(DIGIT, deadline_ms=50, qoe={"accuracy": "high"})
    assert node.hits == 0


def test_urls_are_normalized():
    client = AsyncClient(["127.0.0.1:8000", "http://node-b:9000/"])
    assert client.urls == ["http://127.0.0.1:8000", "http://node-b:9000"]
    assert frame_length([b"ab", memoryview(np.zeros(3, dtype=np.float32)).cast("B")]) == 14


def test_the_sdk_imports_without_torch():
    code = "import sys, p2pinfer; from p2pinfer import Client, AsyncClient; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_keep_alive_connection_dropped_as_it_is_reused_is_retried_once():
    server = ClosingKeepAliveServer()
    await server.start(free_port())
    try:
        async with AsyncClient(server.url) as client:
            assert (await client.health())["applied"]
            assert (await client.feedback("r", label=1)).applied  # a POST: aiohttp itself only retries GETs
    finally:
        await server.stop()
    assert server.connections == 2 and server.answered == 2


async def test_a_node_that_never_answers_times_out_and_fails_over(start_node):
    silent = SilentServer()
    await silent.start(free_port())
    good = await start_node("good")
    try:
        async with AsyncClient([silent.url, good.url], timeout_s=0.3) as client:
            result = await client.infer(DIGIT, deadline_ms=50)
    finally:
        await silent.stop()
    assert silent.connections == 1 and result.entry_node == "good"


async def test_numpy_scalars_are_accepted_as_knobs(start_node):
    node = await start_node("a")
    async with AsyncClient(node.url) as client:
        await client.infer(DIGIT, deadline_ms=np.float32(40), exit=np.int64(1), confidence_threshold=np.float64(0.5))
    header = node.received[0].header
    assert (header.deadline_ms, header.exit, header.confidence_threshold) == (40.0, 1, 0.5)
    assert type(header.exit) is int
