"""The node's native HTTP routes: ``/v1/infer``, ``/v1/feedback``, ``/v1/health``,
``/v1/peers``, ``/metrics`` and the signed ``/v1/emulation``, plus the error middleware
that turns every typed error into the one error body (``protocol.error_body``).

Peer routes (``/v1/stage``, ``/v1/gossip``) live with their services; the Open Inference
routes in ``open_inference_routes``. Every client route passes the same ``RequestGate``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable

import msgspec
import numpy as np
from aiohttp import web
from aiohttp.typedefs import Middleware

from p2pinfer.errors import (
    BadImage,
    BadRequest,
    InternalError,
    NestedTooDeeply,
    NonFiniteInput,
    P2PError,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedVersion,
)
from p2pinfer.membership.messages import member_as_json
from p2pinfer.protocol import error_body, image_input, wire
from p2pinfer.protocol.request_limits import check_id, check_json_depth, check_request
from p2pinfer.protocol.schema import WIRE_VERSION, FeedbackRequest, InferRequest
from p2pinfer.runtime.metrics import NodeMetrics
from p2pinfer.runtime.request_gate import RequestGate
from p2pinfer.runtime.services import NodeServices
from p2pinfer.types import NodeId
from zoo.backend import BackendInfo

JSON = "application/json"
INPUT_DTYPES = ("float32", "float16", "float64")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("p2p_request_id", str)
"""The client's request id, once decoded: the last-resort handler logs it."""

log = logging.getLogger("p2pinfer.node")


class EmulationCommand(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    temperature_c: float | None = None
    hold: bool = False
    release: bool = False


def error_middleware(metrics: NodeMetrics, max_body_bytes: int) -> Middleware:
    """Typed errors become their error body; 4xx refusals of bad input are counted by reason;
    every error answer is counted by code. Anything else is the last resort: a typed 500
    (``InternalError``), logged with the request id and counted, never a bare traceback."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except P2PError as error:
            return error_answer(metrics, error)
        except web.HTTPRequestEntityTooLarge:
            return error_answer(metrics, PayloadTooLarge(
                f"body larger than the node's limit of {max_body_bytes} bytes"))
        except (web.HTTPException, asyncio.CancelledError):
            raise  # aiohttp's own 404/405 for unknown routes; cancellation of a closed connection
        except Exception as error:  # noqa: BLE001 - the last resort: every answer is typed
            request_id = request.get(REQUEST_ID, "-")
            route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
            log.error("internal error on %s %s (request id %s): %s: %s", request.method, request.path,
                      request_id, type(error).__name__, error, exc_info=error)
            metrics.internal_errors.labels(route=route).inc()
            return error_answer(metrics, InternalError(
                f"internal error ({type(error).__name__}) on request id {request_id}; the node logged it"))

    return errors


def unparsable_request_answer(gate: RequestGate, error: P2PError, remote: str | None) -> web.Response:
    """A request aiohttp could not parse (``http_server.NodeRunner``): one log line, counted as a
    request outcome and as an error answer like any other refusal, answered with the error body."""
    log.warning("refused an unreadable request from %s: %s", remote or "?", error.message)
    gate.failed(error)
    return error_answer(gate.metrics, error)


def error_answer(metrics: NodeMetrics, error: P2PError) -> web.Response:
    if 400 <= error.status < 500 and error.status not in (401, 429):
        metrics.rejected_inputs.labels(reason=error.code).inc()
    metrics.error_answers.labels(code=error.code).inc()
    return error_body.error_response(error)


Image = tuple[str, bytes]
"""A client's image as it came: (media type, JPEG/PNG bytes)."""


def _query_request(request: web.Request) -> InferRequest:
    """``POST /v1/infer`` with an ``image/jpeg`` or ``image/png`` body: the knobs ride in the query."""
    query = request.query
    unknown = set(query) - {"deadline_ms", "family", "user", "variant", "exit", "request_id", "confidence_threshold",
                          "min_accuracy"}
    if unknown:
        raise BadRequest(f"unknown query parameters {sorted(unknown)}")
    try:
        return InferRequest(
            deadline_ms=float(query.get("deadline_ms", "nan")), family=query.get("family", "digits-cnn"),
            user=query.get("user", "anonymous"), variant=query.get("variant"),
            exit=int(query["exit"]) if "exit" in query else None, request_id=query.get("request_id"),
            confidence_threshold=float(query["confidence_threshold"]) if "confidence_threshold" in query else None,
            min_accuracy=float(query["min_accuracy"]) if "min_accuracy" in query else None)
    except ValueError as error:
        raise BadRequest(f"bad query parameter: {error}") from None


async def decode_infer(services: NodeServices, request: web.Request) -> tuple[InferRequest, np.ndarray]:
    """The request and its input tensor, validated against the family's input shape."""
    infer_request, array, _ = await decode_infer_input(services, request)
    return infer_request, array


async def decode_infer_input(services: NodeServices,
                             request: web.Request) -> tuple[InferRequest, np.ndarray, Image | None]:
    """``decode_infer`` and the client's image when it sent one (a frame with ``image_type``, or
    an ``image/jpeg``/``image/png`` body): decoded and preprocessed here, kept to forward as is."""
    body = await services.gate.read_body(request)
    content_type = request.content_type
    image: Image | None = None
    if content_type == wire.CONTENT_TYPE:
        header, tensors = wire.decode_frame(body, wire.InferFrameHeader)
        infer_request = header.to_request()
        if header.image_type is not None:
            if header.image_type not in image_input.IMAGE_TYPES:
                raise BadImage(f"image_type {header.image_type!r} is not one of {', '.join(image_input.IMAGE_TYPES)}")
            encoded = tensors.get(wire.IMAGE_TENSOR)
            if encoded is None or encoded.dtype != np.uint8 or encoded.ndim != 1:
                raise BadImage("a frame with image_type needs a 1-D uint8 tensor named 'image'")
            image = (header.image_type, encoded.tobytes())
        elif "input" not in tensors:
            raise BadRequest("binary frame has no tensor named 'input'")
        else:
            array = tensors["input"]
    elif content_type in image_input.IMAGE_TYPES:
        infer_request = _query_request(request)
        image = (content_type, bytes(body))
    elif content_type == JSON:
        check_json_depth(body)
        try:
            infer_request = msgspec.json.decode(body, type=InferRequest)
        except msgspec.ValidationError as error:
            raise BadRequest(f"invalid request: {error}") from None
        except msgspec.DecodeError as error:
            raise BadRequest(f"body is not valid JSON: {error}") from None
        except RecursionError:  # check_json_depth's bound is the first line; this the second
            raise NestedTooDeeply("JSON request nested too deeply to decode") from None
        if infer_request.data is None:
            raise BadRequest("JSON request has no 'data' (the input tensor as nested lists)")
        array = wire.json_tensor(infer_request.data, "float32")
    else:
        raise UnsupportedMediaType(f"content type {content_type!r} is not supported; send {JSON}, "
                                   f"{wire.CONTENT_TYPE} or {', '.join(image_input.IMAGE_TYPES)}")
    if infer_request.version != WIRE_VERSION:
        raise UnsupportedVersion(f"request version {infer_request.version}, node speaks {WIRE_VERSION}")
    check_request(infer_request)
    if infer_request.request_id is not None:
        request[REQUEST_ID] = infer_request.request_id
    services.gate.check_deadline(infer_request.deadline_ms)
    variant = services.host.require_family(infer_request.family)
    pinned = services.host.manifest.variants.get(infer_request.variant or "")
    if pinned is not None and pinned.family == infer_request.family:
        variant = pinned  # a pinned variant's input (a family may hold one at a lower resolution)
    if image is not None:
        started = time.perf_counter()
        array = await asyncio.to_thread(image_input.image_tensor, image[1], variant.preprocessing,
                                        variant.input_shape, media_type=image[0], model=infer_request.family)
        services.selection.observe_image_decode((time.perf_counter() - started) * 1000)  # the planner prices it
    array = wire.validate_input(array, tuple(variant.input_shape), INPUT_DTYPES,
                                model=infer_request.family if pinned is None else pinned.name)
    return infer_request, as_model_input(array), image


def as_model_input(array: np.ndarray) -> np.ndarray:
    """The input as float32, refused when the cast overflows (float64 1e300 becomes Inf)."""
    if array.dtype == np.float32:  # the usual case: nothing to cast (and numpy's errstate costs more than that)
        return array
    with np.errstate(over="ignore"):
        converted = array.astype(np.float32, copy=False)
    if converted is not array and not bool(np.isfinite(converted).all()):
        raise NonFiniteInput("input has values outside float32's range (they overflow to Inf)")
    return converted


def health(services: NodeServices) -> dict[str, object]:
    gate, host = services.gate, services.host
    return {"status": "draining" if gate.draining else "ok", "node_id": services.node_id, "url": services.url,
            "queue_depth": len(services.device.executor.queue), "in_flight": gate.in_flight,
            "variants": sorted(host.ranges), "families": host.families(),
            "uptime_s": round(time.monotonic() - services.started_at, 3), "pid": os.getpid(),
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "coordinator": services.agent.coordinator(), "cluster": cluster_status(services),
            "policy": services.controller.policy_summary(),
            "planner": {"prediction_residual_ms": services.selection.residual.summary(),
                        "route_residual_ms": services.compute_model.route_summary(),
                        "entry_overhead_ms": services.compute_model.entry_overhead_summary(),
                        "codec_costs": services.codec_costs.report() if services.codec_costs else None},
            "merged_observations": services.sharing.absorbed_observations if services.sharing else 0,
            "units": units_report(services), "backends": [backend_report(info) for info in services.backends]}


def units_report(services: NodeServices) -> list[dict[str, object]]:
    """Each compute unit: its backend and precision, its speed under the device profile
    (emulated or real), how often a running batch yielded to an earlier deadline there, and
    what its warm-up did (batch sizes, seconds, first forward)."""
    profile = services.device.profile
    executors = services.device.executors
    return [{"name": warm.unit, "backend": warm.backend, "precision": warm.precision,
             "speed": profile.unit_speed(warm.unit),
             "preemptions": executors[warm.unit].preemptions if warm.unit in executors else 0,
             "warmup": {"batch_sizes": list(warm.batch_sizes), "variants": warm.variants, "seconds": warm.seconds,
                        "first_forward_ms": warm.first_forward_ms, "profile_measured": warm.profile_measured,
                        "batch_efficiency": dict(warm.batch_efficiency)}}
            for warm in services.warmups]


def backend_report(info: BackendInfo) -> dict[str, object]:
    """A backend as health shows it: available (devices, precisions) or the reason it is missing."""
    if not info.available:
        return {"name": info.name, "available": False, "reason": info.reason}
    return {"name": info.name, "available": True, "devices": list(info.devices), "precisions": list(info.precisions),
            "detail": info.detail}


def links_report(services: NodeServices) -> dict[str, dict[str, object]]:
    """This node's estimate of its link to each other member (``/v1/peers``): whether a transfer
    has measured its bandwidth yet (until then the planner prices the default) and how long ago
    the link was last measured (null when never)."""
    own = NodeId(services.node_id)
    report: dict[str, dict[str, object]] = {}
    for member in services.agent.members():
        if member.node_id == own:
            continue
        estimate = services.link_model.estimate(own, member.node_id)
        age = services.link_model.age_s(own, member.node_id)
        report[member.node_id] = {"bandwidth_mbps": round(estimate.bandwidth_mbps, 3),
                                  "rtt_ms": round(estimate.rtt_ms, 3),
                                  "bandwidth_measured": services.link_model.bandwidth_measured(own, member.node_id),
                                  "age_s": round(age, 3) if math.isfinite(age) else None}
    return report


def cluster_status(services: NodeServices) -> str:
    """One line on the cluster as this node sees it, saying why when it is alone, e.g.
    ``alone: 10 peer messages refused: bad_signature`` (a wrong ``--secret``)."""
    agent = services.agent
    if agent.identity_conflict is not None:
        return f"refused: {agent.identity_conflict.message}"
    peers = [member for member in agent.members() if member.node_id != services.node_id
             and member.status.name.lower() == "alive"]
    if peers:
        return f"ok: {len(peers)} live peer{'s' if len(peers) != 1 else ''}"
    reasons = [f"{count} peer messages refused: {reason}" for reason, count in services.peer_refusals.most_common()]
    reasons += [f"{address} {failure}" for address, failure in list(agent.send_failures.items())[:3]]
    return "alone" + (": " + "; ".join(reasons) if reasons else "")


def node_routes(services: NodeServices) -> list[web.RouteDef]:
    gate, metrics = services.gate, services.metrics

    async def infer(request: web.Request) -> web.Response:
        received_at = time.monotonic()
        with gate.admitted():
            infer_request, array, image = await decode_infer_input(services, request)
            if len(array) != 1:
                raise BadRequest(f"/v1/infer takes one sample per request, got a batch of {len(array)}")
            sample = np.array(array, dtype=np.float32, copy=True)  # ours: the frame's buffer is read-only
            try:
                result = await services.controller.infer(infer_request, sample, received_at, image=image)
            except P2PError as error:
                gate.failed(error)
                raise
            gate.answered(result.latency_ms, result.deadline_met)
            return web.Response(body=msgspec.json.encode(result), content_type=JSON)

    async def feedback(request: web.Request) -> web.Response:
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"feedback must be {JSON}, got {request.content_type!r}")
        body = await gate.read_body(request)
        check_json_depth(body)
        try:
            message = msgspec.json.decode(body, type=FeedbackRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise BadRequest(f"invalid feedback: {error}") from None
        except RecursionError:
            raise NestedTooDeeply("feedback nested too deeply to decode") from None
        check_id(message.request_id, "request_id")
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
            "links": links_report(services),
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
        except RecursionError:
            raise NestedTooDeeply("emulation command nested too deeply to decode") from None
        if command.temperature_c is not None and not -60.0 <= command.temperature_c <= 200.0:
            raise BadRequest(f"temperature_c must be in [-60, 200] °C, got {command.temperature_c}")
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
        if services.peer_verifier is not None:
            metrics.state_entries.labels(table="peer_nonces").set(len(services.peer_verifier))
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    return [web.post("/v1/infer", infer), web.post("/v1/feedback", feedback), web.get("/v1/health", health_route),
            web.get("/v1/peers", peers), web.get("/metrics", metrics_route), web.post("/v1/emulation", emulation)]


__all__ = ["REQUEST_ID", "EmulationCommand", "as_model_input", "backend_report", "decode_infer", "decode_infer_input",
           "error_answer", "error_middleware", "health", "node_routes", "units_report", "unparsable_request_answer"]
