"""The blocking Client against real aiohttp servers (on their own loop threads): same contract as
AsyncClient, on http.client keep-alive connections."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from p2pinfer import Client
from p2pinfer.errors import BadShape, ConnectionFailed, DeadlineExceeded, Draining, Overloaded, UnknownRequest
from p2pinfer.protocol.schema import InferResult
from p2pinfer.testing import free_port
from tests.p2pinfer.client_test_servers import (
    ClosingKeepAliveServer,
    ErrorAnswer,
    FakeNode,
    SilentServer,
    ThreadedNode,
)

DIGIT = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)


@pytest.fixture
def start_node():
    started: list[ThreadedNode] = []

    def start(name: str, answer: ErrorAnswer | None = None) -> ThreadedNode:
        threaded = ThreadedNode(FakeNode(name, answer), free_port())
        started.append(threaded)
        return threaded

    yield start
    for threaded in started:
        threaded.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_infer_returns_the_typed_result(start_node):
    node = start_node("a").node
    with Client(node.url) as client:
        result = client.infer(DIGIT, deadline_ms=50, user="ada", variant="w50", exit=1, request_id="r1")
    assert isinstance(result, InferResult)
    assert (result.request_id, result.variant, result.exit, result.entry_node) == ("r1", "w50", 1, "a")
    header = node.received[0].header
    assert (header.deadline_ms, header.user, header.variant, header.exit) == (50, "ada", "w50", 1)
    assert node.received[0].input.tobytes() == DIGIT.tobytes()


def test_a_big_torch_input_is_sent_in_parts_with_a_content_length(start_node):
    node = start_node("a").node
    big = torch.rand(1, 3, 256, 256)
    with Client(node.url) as client:
        client.infer(big, deadline_ms=50)
    assert node.received[0].input.tobytes() == big.numpy().tobytes()
    assert node.content_lengths[0] is not None and node.content_lengths[0] > 3 * 256 * 256 * 4


def test_keep_alive_connections_are_reused(start_node):
    node = start_node("a").node
    with Client(node.url) as client:
        for _ in range(3):
            client.infer(DIGIT, deadline_ms=50)
        assert len(client._endpoints[0]._idle) == 1  # one connection served all three


def test_a_dropped_keep_alive_connection_is_reopened_once(start_node):
    threaded = start_node("a")
    with Client(threaded.node.url) as client:
        client.infer(DIGIT, deadline_ms=50)
        threaded.restart()  # the server side of the pooled connection is gone
        result = client.infer(DIGIT, deadline_ms=50)
    assert result.entry_node == "a" and len(threaded.node.received) == 2


def test_429_raises_overloaded_with_retry_after_and_does_not_fail_over(start_node):
    busy = start_node("busy", ErrorAnswer(429, "overloaded", "queue is full", retry_after="2.5")).node
    spare = start_node("spare").node
    with Client([busy.url, spare.url]) as client, pytest.raises(Overloaded) as caught:
        client.infer(DIGIT, deadline_ms=50)
    assert caught.value.retry_after_s == 2.5 and spare.hits == 0


def test_error_codes_map_to_the_same_classes(start_node):
    node = start_node("a", ErrorAnswer(504, "deadline_exceeded", "budget spent after block 2")).node
    with Client(node.url) as client, pytest.raises(DeadlineExceeded, match="budget spent after block 2"):
        client.infer(DIGIT, deadline_ms=50)


def test_a_connection_error_fails_over_to_the_next_url(start_node):
    good = start_node("good").node
    with Client([dead_url(), good.url]) as client:
        result = client.infer(DIGIT, deadline_ms=50)
    assert result.entry_node == "good" and len(good.received) == 1


def test_all_urls_dead_raises_connection_failed_naming_each():
    urls = [dead_url(), dead_url()]
    with Client(urls, connect_timeout_s=2) as client, pytest.raises(ConnectionFailed) as caught:
        client.infer(DIGIT, deadline_ms=50)
    assert all(url in caught.value.message for url in urls)


def test_an_unresolvable_host_fails_over():
    client = Client(["http://no-such-host.invalid:1", dead_url()], connect_timeout_s=2)
    with client, pytest.raises(ConnectionFailed, match="no-such-host.invalid"):
        client.health()


def test_no_failover_on_a_4xx_answer(start_node):
    refusing = start_node("refusing", ErrorAnswer(400, "bad_shape", "wrong shape")).node
    spare = start_node("spare").node
    with Client([refusing.url, spare.url]) as client, pytest.raises(BadShape, match="wrong shape"):
        client.infer(DIGIT, deadline_ms=50)
    assert refusing.hits == 1 and spare.hits == 0


def test_a_draining_node_fails_over_and_only_draining_raises_draining(start_node):
    draining = start_node("draining", ErrorAnswer(503, "draining", "shutting down", retry_after="1")).node
    good = start_node("good").node
    with Client([draining.url, good.url]) as client:
        assert client.infer(DIGIT, deadline_ms=50).entry_node == "good"
    with Client([draining.url]) as client, pytest.raises(Draining) as caught:
        client.infer(DIGIT, deadline_ms=50)
    assert caught.value.retry_after_s == 1.0


def test_feedback_goes_to_the_node_that_answered_the_request(start_node):
    first = start_node("a").node
    second = start_node("b").node
    with Client([first.url, second.url]) as client:
        answered_by_a = client.infer(DIGIT, deadline_ms=50)
        first.answer = ErrorAnswer(503, "draining", "restarting")
        client.infer(DIGIT, deadline_ms=50)  # answered by b, now the preferred node
        first.answer = None
        feedback = client.feedback(answered_by_a.request_id, score=0.25)
        with pytest.raises(UnknownRequest):
            client.feedback("never-sent", label=1)
    assert feedback.applied and feedback.reward == 0.25
    assert len(first.feedbacks) == 1 and second.feedbacks == []


def test_health_peers_and_metrics(start_node):
    node = start_node("a").node
    with Client(node.url) as client:
        assert client.health() == {"status": "ok", "node": "a"}
        assert client.peers() == [{"node": "a", "status": "alive"}]
        assert 'p2pinfer_requests_total{node="a"}' in client.metrics()


def test_threads_can_share_one_client(start_node):
    node = start_node("a").node
    errors: list[BaseException] = []
    with Client(node.url) as client:

        def work() -> None:
            try:
                for _ in range(10):
                    client.infer(DIGIT, deadline_ms=50)
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == [] and len(node.received) == 40


def test_a_keep_alive_connection_dropped_as_it_is_reused_is_retried_once():
    threaded = ThreadedNode(ClosingKeepAliveServer(), free_port())
    try:
        with Client(threaded.node.url) as client:
            assert (client.health())["applied"]
            assert (client.feedback("r", label=1)).applied  # a POST, on the reused connection
    finally:
        threaded.close()
    assert threaded.node.connections == 2 and threaded.node.answered == 2


def test_a_node_that_never_answers_times_out_and_fails_over(start_node):
    silent = ThreadedNode(SilentServer(), free_port())
    good = start_node("good").node
    try:
        with Client([silent.node.url, good.url], timeout_s=0.3) as client:
            result = client.infer(DIGIT, deadline_ms=50)
    finally:
        silent.close()
    assert silent.node.connections == 1 and result.entry_node == "good"
