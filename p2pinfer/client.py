"""The Python SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio) for any p2pinfer node.

Both send the input as a binary frame (``p2pinfer.wire``) to ``POST /v1/infer`` and decode the
answer into the schema's ``InferResult``. A non-2xx answer ``{"error", "code"}`` becomes the
same typed error the node raised (``Overloaded`` with ``retry_after_s`` from ``Retry-After``...).

Failover: given several entry URLs, a request that cannot reach a node (refused, reset, DNS,
timed out before any answer) goes to the next URL, round robin from the last one that worked;
``ConnectionFailed`` lists every URL's failure when none worked. An HTTP error answer is
never retried elsewhere, since the node received the request and running it twice would be
wrong, except ``503 Draining``, which a node answers without running anything. Retries of
one ``infer`` reuse its request id (generated here when not given), so a node can tell a
resend from a new request, and ``feedback`` goes first to the node that answered that id.

Neither client needs torch: inputs are numpy arrays, nested lists, or torch tensors when
the caller has torch.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import numpy as np

from p2pinfer.errors import (
    BadMinAccuracy,
    BadRequest,
    ConnectionFailed,
    Draining,
    P2PError,
)
from p2pinfer.protocol.error_body import error_from_answer
from p2pinfer.protocol.schema import FeedbackRequest, FeedbackResult, InferResult, PlanSegment
from p2pinfer.protocol.wire import (
    CONTENT_TYPE,
    IMAGE_TENSOR,
    INPUT_TENSOR,
    InferFrameHeader,
    encode_frame,
    frame_length,
    json_tensor,
)
from selector.qoe import QoEWeights

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
SMALL_BODY_BYTES = 64 * 1024
"""Frames up to this size are joined into one buffer: one write beats several tiny ones."""

ORIGIN_MEMORY = 4096
"""How many request ids the client remembers the answering URL of (for ``feedback``)."""

JSON = "application/json"


_result_decoder = msgspec.json.Decoder(InferResult)
_feedback_decoder = msgspec.json.Decoder(FeedbackResult)
_json_encoder = msgspec.json.Encoder()


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port`` (no trailing slash)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def probabilities_array(result: InferResult) -> np.ndarray:
    """``result.probabilities`` as a float32 numpy array (the result keeps plain lists)."""
    return np.asarray(result.probabilities, dtype=np.float32)


def _qoe_weights(qoe: QoEWeights | dict | None) -> QoEWeights:
    if qoe is None:
        return QoEWeights()
    if isinstance(qoe, QoEWeights):
        return qoe
    try:
        return msgspec.convert(qoe, QoEWeights)
    except msgspec.ValidationError as error:
        raise BadRequest(f"bad qoe weights: {error}") from None


def infer_frame(
    x: Any,
    deadline_ms: float,
    *,
    user: str = "anonymous",
    qoe: QoEWeights | dict | None = None,
    family: str = "digits-cnn",
    variant: str | None = None,
    exit: int | None = None,
    confidence_threshold: float | None = None,
    request_id: str | None = None,
    plan: list[PlanSegment] | None = None,
    image_type: str | None = None,
    min_accuracy: float | None = None,
) -> tuple[list[bytes | memoryview], str]:
    """The binary ``/v1/infer`` body for ``x`` and the request id it carries.

    ``x`` is a numpy array or torch tensor sent with its own dtype (the node says which it
    accepts), or a nested list sent as float32; with ``image_type``, the JPEG/PNG bytes.
    """
    if image_type is not None:
        x = np.frombuffer(bytes(x), dtype=np.uint8)
    elif isinstance(x, (list, tuple)):
        x = json_tensor(list(x), "float32")
    request_id = request_id or uuid.uuid4().hex
    try:  # numpy scalars are welcome here but msgspec only encodes Python numbers
        deadline_ms = float(deadline_ms)
        exit = None if exit is None else int(exit)
        confidence_threshold = None if confidence_threshold is None else float(confidence_threshold)
        min_accuracy = None if min_accuracy is None else float(min_accuracy)
    except (TypeError, ValueError) as error:
        raise BadRequest(f"deadline_ms, exit, confidence_threshold and min_accuracy must be numbers: {error}") from None
    if min_accuracy is not None and not (math.isfinite(min_accuracy) and 0.0 <= min_accuracy <= 1.0):
        raise BadMinAccuracy(f"min_accuracy must be a finite number in [0, 1], got {min_accuracy}")
    header = InferFrameHeader(
        deadline_ms=deadline_ms,
        family=family,
        user=user,
        qoe=_qoe_weights(qoe),
        variant=variant,
        exit=exit,
        confidence_threshold=confidence_threshold,
        min_accuracy=min_accuracy,
        request_id=request_id,
        plan=plan,
        image_type=image_type,
    )
    return encode_frame(header, {IMAGE_TENSOR if image_type else INPUT_TENSOR: x}), request_id


def image_payload(image: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    """The bytes of a JPEG/PNG (a path or the bytes themselves) and their media type."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    if data.startswith(b"\xff\xd8\xff"):
        return data, "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data, "image/png"
    raise BadRequest("infer_image takes a JPEG or PNG file (path or bytes)")


def _decode_answer(decoder: msgspec.json.Decoder, body: bytes, url: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as error:
        raise P2PError(f"malformed answer from {url}: {error}") from None
    except RecursionError:
        raise P2PError(f"malformed answer from {url}: nested too deeply to decode") from None


class EntryNodes:
    """The entry URLs and which to try first: the last one that worked, or for feedback the
    one that answered that request id."""

    def __init__(self, url_or_urls: str | Sequence[str]) -> None:
        urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
        if not urls:
            raise ValueError("at least one node URL is needed")
        self.urls = [normalize_url(url) for url in urls]
        self._preferred = 0
        self._origins: OrderedDict[str, int] = OrderedDict()

    def order(self, request_id: str | None = None) -> list[int]:
        start = self._origins.get(request_id, self._preferred) if request_id else self._preferred
        count = len(self.urls)
        return [(start + step) % count for step in range(count)]

    def answered(self, index: int, request_id: str | None = None) -> None:
        self._preferred = index
        if request_id:
            self._origins[request_id] = index
            self._origins.move_to_end(request_id)
            while len(self._origins) > ORIGIN_MEMORY:
                self._origins.popitem(last=False)


def _all_failed(failures: list[str], draining: list[Draining]) -> P2PError:
    if draining and len(draining) == len(failures):
        return draining[-1]
    retry_after = min((error.retry_after_s for error in draining if error.retry_after_s is not None), default=None)
    return ConnectionFailed("no node could be reached: " + "; ".join(failures), retry_after_s=retry_after)


class FramePayload(aiohttp.payload.Payload):
    """An aiohttp request body written part by part: the frame's tensors are never joined."""

    def __init__(self, parts: list[bytes | memoryview], content_type: str = CONTENT_TYPE) -> None:
        super().__init__(parts, content_type=content_type)
        self._parts = parts
        self._size = frame_length(parts)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a binary frame has no text representation")

    async def write(self, writer: Any) -> None:
        for part in self._parts:
            await writer.write(part)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        if content_length is None:
            await self.write(writer)
            return
        left = content_length
        for part in self._parts:
            if left <= 0:
                break
            size = len(part)
            await writer.write(part if size <= left else part[:left])
            left -= size


def _request_body(parts: list[bytes | memoryview]) -> bytes | list[bytes | memoryview]:
    length = frame_length(parts)
    return b"".join(parts) if length <= SMALL_BODY_BYTES or len(parts) == 1 else parts


class AsyncClient:
    """asyncio client on one persistent ``aiohttp.ClientSession`` (``async with`` or ``close()``).

    ``session``: reuse your own session (then ``close()`` leaves it open).
    ``timeout_s`` bounds each attempt; ``connect_timeout_s`` bounds connecting, so a dead host
    fails over quickly.
    """

    def __init__(
        self,
        url_or_urls: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        session: aiohttp.ClientSession | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.entry = EntryNodes(url_or_urls)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s))
        self._session = session
        self._owns_session = session is None

    @property
    def urls(self) -> list[str]:
        return self.entry.urls

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp wants a running loop, and __init__ may run outside one.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._owns_session = True
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | list[bytes | memoryview] | None = None,
        content_type: str = JSON,
        request_id: str | None = None,
    ) -> tuple[bytes, str]:
        """Send with failover; the answer body and the URL that gave it, or a typed error."""
        session = self._session_now()
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        failures: list[str] = []
        draining: list[Draining] = []
        for index in self.entry.order(request_id):
            url = self.entry.urls[index]
            for attempt in range(2):
                data = FramePayload(body, content_type) if isinstance(body, list) else body
                answered = False
                try:
                    async with session.request(method, url + path, data=data, headers=headers,
                                               timeout=self.timeout) as response:
                        answered = True
                        payload = await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
                    if answered:
                        raise ConnectionFailed(f"{url}: the answer broke off: {_describe(error)}") from error
                    if attempt == 0 and isinstance(error, aiohttp.ServerDisconnectedError):
                        continue  # most likely a pooled keep-alive connection the node had closed
                    failures.append(f"{url}: {_describe(error)}")
                    break
                except aiohttp.ClientError as error:
                    raise ConnectionFailed(f"{url}: {_describe(error)}") from error
                if status < 300:
                    self.entry.answered(index, request_id)
                    return payload, url
                answer_error = error_from_answer(status, payload, retry_after)
                if isinstance(answer_error, Draining):
                    failures.append(f"{url}: draining: {answer_error.message}")
                    draining.append(answer_error)
                    break
                raise answer_error
        raise _all_failed(failures, draining)

    async def infer(
        self,
        x: Any,
        deadline_ms: float,
        user: str = "anonymous",
        qoe: QoEWeights | dict | None = None,
        family: str = "digits-cnn",
        variant: str | None = None,
        exit: int | None = None,
        confidence_threshold: float | None = None,
        request_id: str | None = None,
        plan: list[PlanSegment] | None = None,
        min_accuracy: float | None = None,
    ) -> InferResult:
        """Run one inference; ``x`` is a numpy array, torch tensor or nested list."""
        parts, request_id = infer_frame(
            x, deadline_ms, user=user, qoe=qoe, family=family, variant=variant, exit=exit,
            confidence_threshold=confidence_threshold, request_id=request_id, plan=plan, min_accuracy=min_accuracy,
        )
        payload, url = await self._request("POST", "/v1/infer", body=_request_body(parts),
                                           content_type=CONTENT_TYPE, request_id=request_id)
        return _decode_answer(_result_decoder, payload, url)

    async def infer_image(self, image: str | os.PathLike[str] | bytes, deadline_ms: float,
                          **options: Any) -> InferResult:
        """Run one inference on a JPEG or PNG (path or bytes); the node decodes and preprocesses
        it as the family's manifest says. ``options`` are ``infer``'s keywords."""
        data, media_type = image_payload(image)
        parts, request_id = infer_frame(data, deadline_ms, image_type=media_type, **options)
        payload, url = await self._request("POST", "/v1/infer", body=_request_body(parts),
                                           content_type=CONTENT_TYPE, request_id=request_id)
        return _decode_answer(_result_decoder, payload, url)

    async def feedback(self, request_id: str, label: int | None = None, score: float | None = None) -> FeedbackResult:
        """Tell the node the correct label or a QoE score in [0, 1] for an answered request."""
        body = _json_encoder.encode(FeedbackRequest(request_id=request_id, label=label, score=score))
        payload, url = await self._request("POST", "/v1/feedback", body=body, request_id=request_id)
        return _decode_answer(_feedback_decoder, payload, url)

    async def health(self) -> dict:
        payload, url = await self._request("GET", "/v1/health")
        return _decode_answer(_any_decoder, payload, url)

    async def peers(self) -> Any:
        payload, url = await self._request("GET", "/v1/peers")
        return _decode_answer(_any_decoder, payload, url)

    async def metrics(self) -> str:
        """The node's Prometheus text exposition."""
        payload, _ = await self._request("GET", "/metrics")
        return payload.decode("utf-8", "replace")


_any_decoder = msgspec.json.Decoder()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Endpoint:
    """One entry URL's idle keep-alive connections (a small pool, so threads can share a Client)."""

    def __init__(self, url: str, timeout_s: float, connect_timeout_s: float, max_idle: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {url!r}")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused=True) or a freshly connected one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.connect(), False

    def connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=self.connect_timeout_s)
        connection.connect()
        connection.sock.settimeout(self.timeout_s)
        return connection

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


_STALE_KEEP_ALIVE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Client:
    """Blocking client on ``http.client`` keep-alive connections (no event loop, low overhead).

    Safe to share between threads: each request borrows its own connection.
    """

    def __init__(
        self,
        url_or_urls: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_idle_connections: int = 8,
    ) -> None:
        self.entry = EntryNodes(url_or_urls)
        self._endpoints = [
            _Endpoint(url, timeout_s, min(connect_timeout_s, timeout_s), max_idle_connections)
            for url in self.entry.urls
        ]

    @property
    def urls(self) -> list[str]:
        return self.entry.urls

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()

    def _exchange(
        self, endpoint: _Endpoint, method: str, path: str,
        body: bytes | list[bytes | memoryview] | None, headers: dict[str, str],
    ) -> tuple[int, bytes, str | None]:
        """One request on one endpoint, reconnecting once if a kept-alive connection had died.

        Raises OSError / HTTPException only when no answer arrived (so failover is safe).
        """
        for attempt in range(2):
            connection, reused = endpoint.take()
            try:
                connection.request(method, endpoint.base_path + path, body=body, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                if reused and attempt == 0 and isinstance(error, _STALE_KEEP_ALIVE):
                    continue
                raise
            try:
                payload = response.read()
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                raise ConnectionFailed(f"{endpoint.url}: the answer broke off: {_describe(error)}") from error
            if response.will_close:
                connection.close()
            else:
                endpoint.give_back(connection)
            return response.status, payload, response.getheader("Retry-After")
        raise AssertionError("unreachable")

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | list[bytes | memoryview] | None = None,
        content_type: str = JSON,
        request_id: str | None = None,
    ) -> tuple[bytes, str]:
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(frame_length(body) if isinstance(body, list) else len(body))
        failures: list[str] = []
        draining: list[Draining] = []
        for index in self.entry.order(request_id):
            endpoint = self._endpoints[index]
            try:
                status, payload, retry_after = self._exchange(endpoint, method, path, body, headers)
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"{endpoint.url}: {_describe(error)}")
                continue
            if status < 300:
                self.entry.answered(index, request_id)
                return payload, endpoint.url
            answer_error = error_from_answer(status, payload, retry_after)
            if isinstance(answer_error, Draining):
                failures.append(f"{endpoint.url}: draining: {answer_error.message}")
                draining.append(answer_error)
                continue
            raise answer_error
        raise _all_failed(failures, draining)

    def infer(
        self,
        x: Any,
        deadline_ms: float,
        user: str = "anonymous",
        qoe: QoEWeights | dict | None = None,
        family: str = "digits-cnn",
        variant: str | None = None,
        exit: int | None = None,
        confidence_threshold: float | None = None,
        request_id: str | None = None,
        plan: list[PlanSegment] | None = None,
        min_accuracy: float | None = None,
    ) -> InferResult:
        """Run one inference; ``x`` is a numpy array, torch tensor or nested list."""
        parts, request_id = infer_frame(
            x, deadline_ms, user=user, qoe=qoe, family=family, variant=variant, exit=exit,
            confidence_threshold=confidence_threshold, request_id=request_id, plan=plan, min_accuracy=min_accuracy,
        )
        payload, url = self._request("POST", "/v1/infer", body=_request_body(parts),
                                     content_type=CONTENT_TYPE, request_id=request_id)
        return _decode_answer(_result_decoder, payload, url)

    def infer_image(self, image: str | os.PathLike[str] | bytes, deadline_ms: float, **options: Any) -> InferResult:
        """Run one inference on a JPEG or PNG (path or bytes); the node decodes and preprocesses
        it as the family's manifest says. ``options`` are ``infer``'s keywords."""
        data, media_type = image_payload(image)
        parts, request_id = infer_frame(data, deadline_ms, image_type=media_type, **options)
        payload, url = self._request("POST", "/v1/infer", body=_request_body(parts),
                                     content_type=CONTENT_TYPE, request_id=request_id)
        return _decode_answer(_result_decoder, payload, url)

    def feedback(self, request_id: str, label: int | None = None, score: float | None = None) -> FeedbackResult:
        """Tell the node the correct label or a QoE score in [0, 1] for an answered request."""
        body = _json_encoder.encode(FeedbackRequest(request_id=request_id, label=label, score=score))
        payload, url = self._request("POST", "/v1/feedback", body=body, request_id=request_id)
        return _decode_answer(_feedback_decoder, payload, url)

    def health(self) -> dict:
        payload, url = self._request("GET", "/v1/health")
        return _decode_answer(_any_decoder, payload, url)

    def peers(self) -> Any:
        payload, url = self._request("GET", "/v1/peers")
        return _decode_answer(_any_decoder, payload, url)

    def metrics(self) -> str:
        """The node's Prometheus text exposition."""
        payload, _ = self._request("GET", "/metrics")
        return payload.decode("utf-8", "replace")
