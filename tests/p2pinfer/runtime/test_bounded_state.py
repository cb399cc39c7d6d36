"""An in-process node under what no request should cause: an unexpected exception reaches the
last-resort handler (a typed 500, logged with the request id, counted), and client-chosen ids
fill the node's tables past their caps (users, the statistics report, runs in progress), which
evict or refuse and say so in /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from p2pinfer.errors import Overloaded
from p2pinfer.protocol.schema import InferRequest
from p2pinfer.runtime import telemetry
from p2pinfer.runtime.controller import MAX_IN_PROGRESS
from p2pinfer.runtime.device_state import MAX_TRACKED_USERS
from p2pinfer.runtime.node import Node, NodeConfig
from p2pinfer.runtime.services import NodeServices
from p2pinfer.testing import async_wait_until


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    # a queue that holds every run of the in-progress test once they are let go
    started = Node(NodeConfig(variants="digits-cnn-w0.25", cpu_backend="cpu-eager", max_batch=8,
                              queue_capacity=2 * MAX_IN_PROGRESS))
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


def services_of(node: Node) -> NodeServices:
    assert node.services is not None
    return node.services


def metric(text: str, sample: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample))


async def scrape(node: Node) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}/metrics") as answer:
        return await answer.text()


def sample() -> np.ndarray:
    return np.zeros((1, 1, 8, 8), dtype=np.float32)


async def test_an_unexpected_exception_is_a_typed_500_logged_with_the_request_id_and_counted(
        node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    controller = services_of(node).controller

    async def broken(*arguments: object, **options: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(controller, "infer", broken)
    body = {"deadline_ms": 2000, "family": "digits-cnn", "request_id": "fault-1", "data": sample().tolist()}
    v2_body = {"id": "fault-2", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                             "data": [0.0] * 64}]}
    with caplog.at_level(logging.ERROR, logger="p2pinfer.node"):
        async with aiohttp.ClientSession() as session:
            answers = []
            for path, document in (("/v1/infer", body), ("/v2/models/digits-cnn/infer", v2_body)):
                async with session.post(f"{node.url}{path}", json=document) as answer:
                    answers.append((answer.status, answer.content_type, await answer.json()))
    for (status, content_type, answer), request_id in zip(answers, ("fault-1", "fault-2"), strict=True):
        assert (status, content_type, answer["code"]) == (500, "application/json", "internal_error"), answer
        assert answer["error"] == f"internal error (RuntimeError) on request id {request_id}; the node logged it"
    lines = [record for record in caplog.records if record.name == "p2pinfer.node" and "internal error" in
             record.getMessage()]
    assert [record.getMessage() for record in lines] == [
        "internal error on POST /v1/infer (request id fault-1): RuntimeError: injected fault",
        "internal error on POST /v2/models/digits-cnn/infer (request id fault-2): RuntimeError: injected fault"]
    assert all(record.exc_info is not None for record in lines)  # the traceback, for the operator
    text = await scrape(node)
    assert metric(text, 'p2pinfer_internal_errors_total{route="/v1/infer"}') == 1
    assert metric(text, 'p2pinfer_internal_errors_total{route="/v2/models/{family}/infer"}') == 1
    assert metric(text, 'p2pinfer_error_answers_total{code="internal_error"}') == 2


async def test_more_users_than_the_cap_evict_the_least_recent_and_are_counted(node: Node) -> None:
    services = services_of(node)
    extra = 76
    for index in range(MAX_TRACKED_USERS + extra):
        request = InferRequest(deadline_ms=5000, family="digits-cnn", user=f"user-{index}")
        await services.controller.infer(request, sample(), time.monotonic())
    usage = services.device.user_usage
    assert len(usage) == MAX_TRACKED_USERS
    assert "user-0" not in usage and f"user-{extra - 1}" not in usage  # the oldest went first
    assert f"user-{extra}" in usage and f"user-{MAX_TRACKED_USERS + extra - 1}" in usage
    text = await scrape(node)
    assert metric(text, 'p2pinfer_state_entries{table="users"}') == MAX_TRACKED_USERS
    assert metric(text, 'p2pinfer_state_evictions_total{table="users"}') == extra


async def test_runs_in_progress_past_the_cap_are_refused_429_and_the_table_empties(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs are held open (each waits in the controller) until the table is full: the next
    request id is refused with ``Overloaded`` (429 with Retry-After over HTTP); released,
    every run finishes and leaves the table."""
    controller = services_of(node).controller
    release = asyncio.Event()
    real_infer = controller._infer

    async def held(*arguments, **options):
        await release.wait()
        return await real_infer(*arguments, **options)

    monkeypatch.setattr(controller, "_infer", held)
    runs = [asyncio.create_task(controller.infer(
        InferRequest(deadline_ms=30000, family="digits-cnn", request_id=f"run-{index}"), sample(), time.monotonic()))
        for index in range(MAX_IN_PROGRESS)]
    await async_wait_until(lambda: len(controller.in_progress) == MAX_IN_PROGRESS,
                           timeout_s=20, message="every run in progress")
    with pytest.raises(Overloaded, match=f"{MAX_IN_PROGRESS} requests already in progress") as refused:
        await controller.infer(InferRequest(deadline_ms=30000, family="digits-cnn", request_id="one-too-many"),
                               sample(), time.monotonic())
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    body = {"deadline_ms": 30000, "family": "digits-cnn", "request_id": "over-http", "data": sample().tolist()}
    async with aiohttp.ClientSession() as session, session.post(f"{node.url}/v1/infer", json=body) as answer:
        assert (answer.status, (await answer.json())["code"]) == (429, "overloaded")
        assert int(answer.headers["Retry-After"]) >= 1
    assert metric(await scrape(node), 'p2pinfer_state_entries{table="in_progress"}') == MAX_IN_PROGRESS
    release.set()
    results = await asyncio.gather(*runs)
    assert {result.request_id for result in results} == {f"run-{index}" for index in range(MAX_IN_PROGRESS)}
    text = await scrape(node)
    assert metric(text, 'p2pinfer_state_entries{table="in_progress"}') == 0
    assert metric(text, 'p2pinfer_state_entries{table="request_ids"}') == MAX_IN_PROGRESS


class FakeDevice:
    """What ``run_telemetry`` reads of a node's device: 1,000 users, one of them busy."""

    node_id = "node-a"

    def __init__(self) -> None:
        self.utilisation = 0.0
        self.user_usage: OrderedDict[str, float] = OrderedDict((f"user-{index}", 1.0) for index in range(1000))
        self.user_usage["busy-user"] = 50.0

    def busy_seconds(self) -> float:
        return 0.0

    def advance_thermal(self, utilisation: float) -> None:
        pass

    def load(self) -> None:
        return None

    def thermal_record(self) -> None:
        return None


class FakeAgent:
    def __init__(self) -> None:
        self.reports: list[dict[str, float]] = []

    def update_self(self, **fields: object) -> None:
        pass

    def record_link(self, *arguments: object) -> None:
        pass

    def publish_stats(self, stats: object, user_demand: dict[str, float]) -> None:
        self.reports.append(dict(user_demand))


class NoLinks:
    def estimates(self) -> dict:
        return {}


async def test_the_statistics_report_names_at_most_the_busiest_users() -> None:
    agent = FakeAgent()
    task = asyncio.create_task(telemetry.run_telemetry(FakeDevice(), agent, NoLinks(), None,
                                                       period_s=0.001))
    try:
        await async_wait_until(lambda: bool(agent.reports), timeout_s=10,
                               message="the first statistics report")
    finally:
        task.cancel()
    report = agent.reports[0]
    assert len(report) == telemetry.MAX_REPORTED_USERS == 256
    assert "busy-user" in report and report["busy-user"] == max(report.values())


async def test_the_feedback_log_keyed_by_client_ids_has_a_size_gauge(node: Node) -> None:
    services = services_of(node)
    for index in range(3):
        request = InferRequest(deadline_ms=5000, family="digits-cnn", request_id=f"answered-{index}")
        await services.controller.infer(request, sample(), time.monotonic())
    assert metric(await scrape(node), 'p2pinfer_state_entries{table="answered"}') == 3
