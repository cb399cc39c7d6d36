"""A stand-in node for the SDK tests: a real aiohttp server on 127.0.0.1 that decodes the binary
frame with ``decode_frame`` and answers what the test sets (a result, or an error with a code)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import msgspec
import numpy as np
from aiohttp import web

from p2pinfer.protocol.schema import FeedbackRequest, FeedbackResult, InferResult, PlanSegment
from p2pinfer.protocol.wire import CONTENT_TYPE, INPUT_TENSOR, InferFrameHeader, decode_frame


@dataclass
class ErrorAnswer:
    status: int
    code: str | None
    message: str
    retry_after: str | None = None
    body: bytes | None = None  # a raw body instead of the JSON error (a proxy's HTML page...)


@dataclass
class Received:
    header: InferFrameHeader
    input: np.ndarray


@dataclass
class FakeNode:
    name: str
    answer: ErrorAnswer | None = None  # None: answer a result
    received: list[Received] = field(default_factory=list)
    feedbacks: list[FeedbackRequest] = field(default_factory=list)
    content_lengths: list[int | None] = field(default_factory=list)
    hits: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _error_response(self) -> web.Response:
        answer = self.answer
        assert answer is not None
        headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
        if answer.body is not None:
            return web.Response(status=answer.status, body=answer.body, headers=headers, content_type="text/html")
        body = {"error": answer.message} if answer.code is None else {"error": answer.message, "code": answer.code}
        return web.json_response(body, status=answer.status, headers=headers)

    async def infer(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.answer is not None:
            return self._error_response()
        assert request.content_type == CONTENT_TYPE
        self.content_lengths.append(request.content_length)
        header, tensors = decode_frame(await request.read(), InferFrameHeader)
        array = tensors[INPUT_TENSOR]
        self.received.append(Received(header, array.copy()))
        flat = array.astype(np.float64).ravel()
        probabilities = (flat[:10] / flat[:10].sum()).tolist() if flat[:10].sum() else [0.1] * 10
        result = InferResult(
            request_id=header.request_id or "none",
            label=int(np.argmax(probabilities)),
            probabilities=probabilities,
            exit=header.exit if header.exit is not None else 2,
            variant=header.variant or "full",
            family=header.family,
            plan=[PlanSegment(node=self.name, unit="cpu", first_block=0, last_block=2)],
            timings=[],
            latency_ms=1.0,
            deadline_ms=header.deadline_ms,
            deadline_met=True,
            entry_node=self.name,
        )
        return web.Response(body=msgspec.json.encode(result), content_type="application/json")

    async def feedback(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.answer is not None:
            return self._error_response()
        feedback = msgspec.json.decode(await request.read(), type=FeedbackRequest)
        if feedback.request_id not in {received.header.request_id for received in self.received}:
            return web.json_response({"error": f"unknown request {feedback.request_id}", "code": "unknown_request"},
                                     status=404)
        self.feedbacks.append(feedback)
        result = FeedbackResult(request_id=feedback.request_id, applied=True, reward=feedback.score or 1.0)
        return web.Response(body=msgspec.json.encode(result), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.answer is not None:
            return self._error_response()
        return web.json_response({"status": "ok", "node": self.name})

    async def peers(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response([{"node": self.name, "status": "alive"}])

    async def metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=f'p2pinfer_requests_total{{node="{self.name}"}} {len(self.received)}\n')

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/v1/infer", self.infer)
        app.router.add_post("/v1/feedback", self.feedback)
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/peers", self.peers)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ThreadedNode:
    """A FakeNode (or another server) on its own event loop thread, for the blocking ``Client``."""

    def __init__(self, node: FakeNode | ClosingKeepAliveServer | SilentServer, port: int) -> None:
        self.node = node
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(node.start(port))

    def call(self, coroutine) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port: every kept-alive connection is dropped."""
        self.call(self.node.stop())
        self.call(self.node.start(self.port))

    def close(self) -> None:
        self.call(self.node.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class ClosingKeepAliveServer:
    """Answers the first request on each connection with keep-alive, then closes the connection
    when a second request arrives on it, without answering: the race where a node drops an idle
    keep-alive connection just as the client reuses it."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            body = b'{"request_id": "r", "applied": true, "reward": 1.0}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            self.answered += 1
            await reader.readuntil(b"\r\n\r\n")  # the reused connection's request: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class SilentServer:
    """Accepts connections and reads requests but never answers: a hung node."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass
        writer.close()

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = port

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            self._server = None
