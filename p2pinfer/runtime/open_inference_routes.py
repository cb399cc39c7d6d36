"""The Open Inference Protocol (KServe v2 / Triton HTTP) on a node, so existing inference
clients work unchanged. The codec lives in ``p2pinfer.protocol.open_inference``; here each
batch row becomes one native request through the same gate and controller as ``/v1/infer``
(so the executor can batch them again, and drain and metrics see them), and the answer is
the protocol's ``outputs``. A ``BYTES`` input carries encoded images (JPEG/PNG), one per row:
each is decoded and preprocessed here as the family's manifest says, and kept so that a plan
may forward it as it came (a bad one is 400 ``bad_image``)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time

import msgspec
import numpy as np
from aiohttp import web

from p2pinfer.errors import BadShape, P2PError, UnsupportedMediaType
from p2pinfer.protocol import image_input, wire
from p2pinfer.protocol import open_inference as protocol
from p2pinfer.protocol.request_limits import check_json_depth, check_request
from p2pinfer.runtime.routes import REQUEST_ID, as_model_input
from p2pinfer.runtime.services import NodeServices
from zoo.family import class_count

DEFAULT_DEADLINE_MS = 1000.0
SERVER_VERSION = importlib.metadata.version("p2pinfer")
MAX_BATCH = 64
CONTENT_TYPES = (protocol.JSON_CONTENT_TYPE, protocol.BINARY_CONTENT_TYPE)


def open_inference_routes(services: NodeServices) -> list[web.RouteDef]:
    gate, host, controller = services.gate, services.host, services.controller

    async def server(request: web.Request) -> web.Response:
        return web.json_response(protocol.server_metadata(SERVER_VERSION))

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        ready_now = not gate.draining
        return web.json_response({"ready": ready_now}, status=200 if ready_now else 503)

    async def model(request: web.Request) -> web.Response:
        variant = host.require_family(request.match_info["family"])
        return web.json_response(protocol.model_metadata(variant.family, variant.input_shape, class_count(variant)))

    async def model_ready(request: web.Request) -> web.Response:
        host.require_family(request.match_info["family"])
        return web.json_response({"name": request.match_info["family"], "ready": not gate.draining},
                                 status=503 if gate.draining else 200)

    async def infer(request: web.Request) -> web.Response:
        received_at = time.monotonic()
        with gate.admitted():
            family = request.match_info["family"]
            variant = host.require_family(family)
            if request.content_type not in CONTENT_TYPES:
                raise UnsupportedMediaType(f"content type {request.content_type!r} is not supported; send "
                                           f"{' or '.join(CONTENT_TYPES)}")
            body = await gate.read_body(request)
            header_length = request.headers.get(protocol.HEADER_LENGTH_HEADER)
            json_part = body
            if header_length is not None and header_length.isdigit():
                json_part = body[:int(header_length)]
            check_json_depth(json_part)
            parsed = protocol.parse_infer_request(body, header_length)
            native = parsed.infer_request(family, DEFAULT_DEADLINE_MS)
            check_request(native)
            if native.request_id is not None:
                request[REQUEST_ID] = native.request_id
            gate.check_deadline(native.deadline_ms)
            encoded = parsed.input_images()
            images: list[tuple[str, bytes] | None]
            if encoded is not None:
                if not 0 < len(encoded) <= MAX_BATCH:
                    raise BadShape(f"{len(encoded)} images in one request; send 1 to {MAX_BATCH}")
                started = time.perf_counter()
                typed = [(image_input.sniff(data), data) for data in encoded]
                decoded = await asyncio.gather(*[asyncio.to_thread(
                    image_input.image_tensor, data, variant.preprocessing, variant.input_shape, media_type=media,
                    model=family) for media, data in typed])
                services.selection.observe_image_decode((time.perf_counter() - started) * 1000 / len(typed))
                images = list(typed)
                array = np.stack([np.asarray(tensor, dtype=np.float32).reshape(variant.input_shape)
                                  for tensor in decoded])
            else:
                array = wire.validate_input(parsed.input_array(), tuple(variant.input_shape),
                                            ("float32", "float16", "float64"), model=family, max_batch=MAX_BATCH)
                images = [None] * len(array)
            rows = np.array(as_model_input(array), dtype=np.float32, copy=True)
            try:
                if len(rows) == 1:  # the usual request: awaited here, not wrapped in a task as gather would
                    results = [await controller.infer(native, rows, received_at, image=images[0])]
                else:  # each row its own request (its own id, when the client gave one)
                    requests = [msgspec.structs.replace(native, request_id=f"{native.request_id}-{index}"
                                                        if native.request_id else None) for index in range(len(rows))]
                    results = await asyncio.gather(*[controller.infer(requests[index], rows[index:index + 1],
                                                                      received_at, image=images[index])
                                                     for index in range(len(rows))])
            except P2PError as error:
                gate.failed(error)
                raise
            probabilities = np.array([result.probabilities for result in results], dtype=np.float32)
            outputs = protocol.classification_outputs(probabilities)
            body, headers = protocol.build_infer_response(
                family, outputs, request_id=parsed.id, requested=parsed.outputs,
                binary_outputs=parsed.binary_outputs,
                parameters=protocol.answer_parameters(results))
            gate.answered(max(result.latency_ms for result in results),
                          all(result.deadline_met for result in results), count=len(results))
            content_type = headers.pop("Content-Type")
            return web.Response(body=body, headers=headers, content_type=content_type)

    return [web.get("/v2", server), web.get("/v2/health/live", live), web.get("/v2/health/ready", ready),
            web.get("/v2/models/{family}", model), web.get("/v2/models/{family}/ready", model_ready),
            web.post("/v2/models/{family}/infer", infer)]
