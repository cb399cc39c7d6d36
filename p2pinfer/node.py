"""One node process: an aiohttp server in front of the executor, the controller and (in
their own modules) membership and collaborative execution.

Lifecycle follows aiohttp's ``AppRunner``/``TCPSite``: ``start`` loads the hosted model
slices (in a thread, not on the loop), binds, and is ready; ``stop`` refuses new work with
503, waits for in-flight requests to finish (drain), then closes.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import torch
from aiohttp import web

from p2pinfer.controller import ArmChoice, Controller
from p2pinfer.errors import (
    BadDeadline,
    BadRequest,
    Draining,
    P2PError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from p2pinfer.executor import Executor
from p2pinfer.metrics import NodeMetrics
from p2pinfer.model_host import ModelHost
from p2pinfer.open_inference_routes import add_open_inference_routes
from p2pinfer.schema import FeedbackRequest, InferRequest

JSON = "application/json"


@dataclass
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    node_id: str | None = None
    zoo_dir: str | None = None
    variants: str = "all"
    device_profile: str = "native"
    threads: int = 1
    workers: int = 1
    secret: str | None = None
    queue_capacity: int = 64
    max_body_bytes: int = 8 << 20
    max_deadline_ms: float = 600_000.0
    batch_window_ms: float = 2.0
    max_batch: int = 8
    policy: str = "fixed"
    fixed_arm: str | None = None  # "variant@exit"
    drain_timeout_s: float = 30.0
    seeds: list[str] = field(default_factory=list)


def parse_arm(text: str) -> ArmChoice:
    variant, separator, exit_text = text.rpartition("@")
    if not separator:
        raise BadRequest(f"arm {text!r} must look like VARIANT@EXIT")
    return ArmChoice(variant, int(exit_text))


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.metrics = NodeMetrics()
        self.draining = False
        self.in_flight = 0
        self.started_at = time.monotonic()
        self.host: ModelHost | None = None
        self.executor: Executor | None = None
        self.controller: Controller | None = None
        self.runner: web.AppRunner | None = None
        self.port = config.port
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        torch.set_num_threads(self.config.threads)
        config = self.config
        self.host = await asyncio.to_thread(ModelHost, config.zoo_dir, config.variants, "cpu", config.threads)
        self.executor = Executor(
            self.host.models, self.host.predict_seconds, capacity=config.queue_capacity, workers=config.workers,
            max_batch=config.max_batch, batch_window_s=config.batch_window_ms / 1000, on_block=self._on_block)
        fixed = parse_arm(config.fixed_arm) if config.fixed_arm else None
        self.controller = Controller(self.node_id, self.host, self.executor, self.metrics, fixed_arm=fixed)
        app = web.Application(client_max_size=config.max_body_bytes + 1024, middlewares=[self._errors])
        self.add_routes(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.host, config.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Drain: refuse new work (503), let in-flight requests finish, then close."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.config.drain_timeout_s)
        except asyncio.TimeoutError:
            pass
        if self.runner is not None:
            await self.runner.cleanup()
        if self.executor is not None:
            await asyncio.to_thread(self.executor.close)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/infer", self.handle_infer)
        app.router.add_post("/v1/feedback", self.handle_feedback)
        app.router.add_get("/v1/health", self.handle_health)
        app.router.add_get("/v1/peers", self.handle_peers)
        app.router.add_get("/metrics", self.handle_metrics)
        add_open_inference_routes(app, self)

    # ---- plumbing ----------------------------------------------------------------------
    def _on_block(self, variant: str, block: int, seconds: float, batch_size: int) -> None:
        self.metrics.block_compute.labels(variant=variant, block=str(block)).observe(seconds)
        if self.host is not None:
            self.host.observe(variant, block, seconds, batch_size)

    def _enter(self) -> None:
        if self.draining:
            raise Draining("node is draining: retry on another node", retry_after_s=1.0)
        self.in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self.in_flight)

    def _leave(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
        if self.in_flight == 0:
            self._idle.set()

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except P2PError as error:
            return self.error_response(error)
        except web.HTTPRequestEntityTooLarge:
            return self.error_response(PayloadTooLarge(
                f"body larger than the node's limit of {self.config.max_body_bytes} bytes"))

    def error_response(self, error: P2PError) -> web.Response:
        if 400 <= error.status < 500 and error.status not in (401, 429):
            self.metrics.rejected_inputs.labels(reason=error.code).inc()
        headers = {}
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        body = msgspec.json.encode({"error": error.message, "code": error.code})
        return web.Response(status=error.status, body=body, content_type=JSON, headers=headers)

    async def read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            raise PayloadTooLarge(f"body of {request.content_length} bytes is over the node's limit of "
                                  f"{self.config.max_body_bytes} bytes")
        return await request.read()

    def check_deadline(self, deadline_ms: float) -> None:
        if not math.isfinite(deadline_ms) or deadline_ms <= 0:
            raise BadDeadline(f"deadline_ms must be a positive finite number of milliseconds, got {deadline_ms}")
        if deadline_ms > self.config.max_deadline_ms:
            raise BadDeadline(f"deadline_ms {deadline_ms} is over the node's maximum of "
                              f"{self.config.max_deadline_ms} ms")

    async def decode_infer(self, request: web.Request) -> tuple[InferRequest, np.ndarray]:
        from p2pinfer import wire

        body = await self.read_body(request)
        content_type = request.content_type
        if content_type == wire.CONTENT_TYPE:
            header, tensors = wire.decode_frame(body, wire.InferFrameHeader)
            infer_request = header.to_request()
            if "input" not in tensors:
                raise BadRequest("binary frame has no tensor named 'input'")
            array = tensors["input"]
        elif content_type == JSON:
            try:
                infer_request = msgspec.json.decode(body, type=InferRequest)
            except msgspec.ValidationError as error:
                raise BadRequest(f"invalid request: {error}") from None
            except msgspec.DecodeError as error:
                raise BadRequest(f"body is not valid JSON: {error}") from None
            if infer_request.data is None:
                raise BadRequest("JSON request has no 'data' (the input tensor as nested lists)")
            array = wire.json_tensor(infer_request.data, "float32")
        else:
            raise UnsupportedMediaType(f"content type {content_type!r} is not supported; send {JSON} or "
                                       f"{wire.CONTENT_TYPE}")
        if infer_request.version != wire.WIRE_VERSION:
            from p2pinfer.errors import UnsupportedVersion

            raise UnsupportedVersion(f"request version {infer_request.version}, node speaks {wire.WIRE_VERSION}")
        self.check_deadline(infer_request.deadline_ms)
        assert self.host is not None
        variant = self.host.require_family(infer_request.family)
        array = wire.validate_input(array, tuple(variant.input_shape), ("float32", "float16", "float64"),
                                    model=infer_request.family)
        return infer_request, array.astype(np.float32, copy=False)

    # ---- handlers ----------------------------------------------------------------------
    async def handle_infer(self, request: web.Request) -> web.Response:
        received_at = time.monotonic()
        self._enter()
        try:
            infer_request, array = await self.decode_infer(request)
            if len(array) != 1:
                raise BadRequest(f"/v1/infer takes one sample per request, got a batch of {len(array)}")
            assert self.controller is not None
            tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
            try:
                result = await self.controller.infer(infer_request, tensor, received_at)
            except P2PError as error:
                self.metrics.requests.labels(outcome=error.code).inc()
                if error.code == "deadline_exceeded":
                    self.metrics.deadline_misses.inc()
                raise
            self.metrics.requests.labels(outcome="ok").inc()
            self.metrics.latency.observe(result.latency_ms / 1000)
            if not result.deadline_met:
                self.metrics.deadline_misses.inc()
            return web.Response(body=msgspec.json.encode(result), content_type=JSON)
        finally:
            self._leave()

    async def handle_feedback(self, request: web.Request) -> web.Response:
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"feedback must be {JSON}, got {request.content_type!r}")
        body = await self.read_body(request)
        try:
            feedback = msgspec.json.decode(body, type=FeedbackRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise BadRequest(f"invalid feedback: {error}") from None
        assert self.controller is not None
        result = self.controller.feedback(feedback)
        return web.Response(body=msgspec.json.encode(result), content_type=JSON)

    def health(self) -> dict:
        assert self.executor is not None and self.host is not None
        return {"status": "draining" if self.draining else "ok", "node_id": self.node_id, "url": self.url,
                "queue_depth": len(self.executor.queue), "in_flight": self.in_flight,
                "variants": sorted(self.host.ranges), "families": self.host.families(),
                "uptime_s": round(time.monotonic() - self.started_at, 3), "pid": os.getpid()}

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health(), status=503 if self.draining else 200)

    async def handle_peers(self, request: web.Request) -> web.Response:
        return web.json_response({"self": self.node_id, "peers": [self.health()]})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        if self.executor is not None:
            self.metrics.queue_depth.set(len(self.executor.queue))
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")


def default_zoo_dir() -> Path:
    from zoo.manifest import DEFAULT_ZOO_DIR

    return DEFAULT_ZOO_DIR
