"""The node's native HTTP routes: ``/v1/infer``, ``/v1/feedback``, ``/v1/health``,
``/v1/peers``, ``/metrics`` and the signed ``/v1/emulation``, plus the error middleware
that turns every typed error into the one error body (``protocol.error_body``).

Peer routes (``/v1/stage``, ``/v1/gossip``) live with their services; the Open Inference
routes in ``open_inference_routes``. Every client route passes the same ``RequestGate``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

import msgspec
import numpy as np
import torch
from aiohttp import web
from aiohttp.typedefs import Middleware

from p2pinfer.errors import BadRequest, P2PError, PayloadTooLarge, UnsupportedMediaType, UnsupportedVersion
from p2pinfer.membership.messages import member_as_json
from p2pinfer.protocol import error_body, wire
from p2pinfer.protocol.schema import WIRE_VERSION, FeedbackRequest, InferRequest
from p2pinfer.runtime.metrics import NodeMetrics
from p2pinfer.runtime.services import NodeServices
from zoo.backend import BackendInfo

JSON = "application/json"
INPUT_DTYPES = ("float32", "float16", "float64")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EmulationCommand(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    temperature_c: float | None = None
    hold: bool = False
    release: bool = False


def error_middleware(metrics: NodeMetrics, max_body_bytes: int) -> Middleware:
    """Typed errors become their error body; 4xx refusals of bad input are counted by reason."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except P2PError as error:
            return error_answer(metrics, error)
        except web.HTTPRequestEntityTooLarge:
            return error_answer(metrics, PayloadTooLarge(
                f"body larger than the node's limit of {max_body_bytes} bytes"))

    return errors


def error_answer(metrics: NodeMetrics, error: P2PError) -> web.Response:
    if 400 <= error.status < 500 and error.status not in (401, 429):
        metrics.rejected_inputs.labels(reason=error.code).inc()
    return error_body.error_response(error)


async def decode_infer(services: NodeServices, request: web.Request) -> tuple[InferRequest, np.ndarray]:
    """The request and its input tensor, validated against the family's input shape."""
    body = await services.gate.read_body(request)
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
    if infer_request.version != WIRE_VERSION:
        raise UnsupportedVersion(f"request version {infer_request.version}, node speaks {WIRE_VERSION}")
    services.gate.check_deadline(infer_request.deadline_ms)
    variant = services.host.require_family(infer_request.family)
    array = wire.validate_input(array, tuple(variant.input_shape), INPUT_DTYPES, model=infer_request.family)
    return infer_request, array.astype(np.float32, copy=False)


def health(services: NodeServices) -> dict[str, object]:
    gate, host = services.gate, services.host
    return {"status": "draining" if gate.draining else "ok", "node_id": services.node_id, "url": services.url,
            "queue_depth": len(services.device.executor.queue), "in_flight": gate.in_flight,
            "variants": sorted(host.ranges), "families": host.families(),
            "uptime_s": round(time.monotonic() - services.started_at, 3), "pid": os.getpid(),
            "coordinator": services.agent.coordinator(),
            "policy": services.controller.policy_summary(),
            "merged_observations": services.sharing.absorbed_observations if services.sharing else 0,
            "units": units_report(services), "backends": [backend_report(info) for info in services.backends]}


def units_report(services: NodeServices) -> list[dict[str, object]]:
    """Each compute unit: its backend and precision, its speed under the device profile
    (emulated or real), and what its warm-up did (batch sizes, seconds, first forward)."""
    profile = services.device.profile
    return [{"name": warm.unit, "backend": warm.backend, "precision": warm.precision,
             "speed": profile.unit_speed(warm.unit),
             "warmup": {"batch_sizes": list(warm.batch_sizes), "variants": warm.variants, "seconds": warm.seconds,
                        "first_forward_ms": warm.first_forward_ms, "profile_measured": warm.profile_measured}}
            for warm in services.warmups]


def backend_report(info: BackendInfo) -> dict[str, object]:
    """A backend as health shows it: available (devices, precisions) or the reason it is missing."""
    if not info.available:
        return {"name": info.name, "available": False, "reason": info.reason}
    return {"name": info.name, "available": True, "devices": list(info.devices), "precisions": list(info.precisions),
            "detail": info.detail}


def node_routes(services: NodeServices) -> list[web.RouteDef]:
    gate, metrics = services.gate, services.metrics

    async def infer(request: web.Request) -> web.Response:
        received_at = time.monotonic()
        with gate.admitted():
            infer_request, array = await decode_infer(services, request)
            if len(array) != 1:
                raise BadRequest(f"/v1/infer takes one sample per request, got a batch of {len(array)}")
            tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
            try:
                result = await services.controller.infer(infer_request, tensor, received_at)
            except P2PError as error:
                gate.failed(error)
                raise
            gate.answered(result.latency_ms, result.deadline_met)
            return web.Response(body=msgspec.json.encode(result), content_type=JSON)

    async def feedback(request: web.Request) -> web.Response:
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"feedback must be {JSON}, got {request.content_type!r}")
        body = await gate.read_body(request)
        try:
            message = msgspec.json.decode(body, type=FeedbackRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise BadRequest(f"invalid feedback: {error}") from None
        result = services.controller.feedback(message)
        return web.Response(body=msgspec.json.encode(result), content_type=JSON)

    async def health_route(request: web.Request) -> web.Response:
        return web.json_response(health(services), status=503 if gate.draining else 200)

    async def peers(request: web.Request) -> web.Response:
        agent = services.agent
        guidance = agent.guidance()
        records = []
        for member in agent.members():
            record = member_as_json(member)
            record["status"] = member.status.name.lower()
            record["url"] = f"http://{member.address}"
            records.append(record)
        return web.json_response({
            "self": services.node_id, "coordinator": agent.coordinator(), "peers": records,
            "guidance": None if guidance is None else msgspec.to_builtins(guidance),
            "policy": services.policy,
            "merged_observations": services.sharing.absorbed_observations if services.sharing else 0})

    async def emulation(request: web.Request) -> web.Response:
        """Signed like a peer message (the cluster secret): drive the emulated device, e.g.
        ``{"temperature_c": 85, "hold": true}`` to heat it, ``{"release": true}`` to let go."""
        body = await gate.read_body(request)
        try:
            command = msgspec.json.decode(body, type=EmulationCommand)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise BadRequest(f"invalid emulation command: {error}") from None
        thermal = services.device.thermal
        if command.release:
            thermal.release()
        if command.temperature_c is not None:
            thermal.inject(command.temperature_c, hold=command.hold)
        services.device.refresh_thermal()
        reading = thermal.reading()
        return web.json_response({"temperature_c": reading.temperature_c, "throttle_factor": reading.throttle_factor,
                                  "source": reading.source})

    async def metrics_route(request: web.Request) -> web.Response:
        metrics.queue_depth.set(len(services.device.executor.queue))
        agent = services.agent
        for kind, count in agent.counters.items():
            metrics.gossip_events.labels(kind=kind).set(count)
        statuses: dict[str, int] = {}
        for member in agent.members():
            statuses[member.status.name.lower()] = statuses.get(member.status.name.lower(), 0) + 1
        for status in ("alive", "suspect", "dead", "left"):
            metrics.members.labels(status=status).set(statuses.get(status, 0))
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    return [web.post("/v1/infer", infer), web.post("/v1/feedback", feedback), web.get("/v1/health", health_route),
            web.get("/v1/peers", peers), web.get("/metrics", metrics_route), web.post("/v1/emulation", emulation)]


__all__ = ["EmulationCommand", "backend_report", "decode_infer", "error_answer", "error_middleware", "health",
           "node_routes", "units_report"]
