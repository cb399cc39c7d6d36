"""The Open Inference Protocol (KServe v2 / Triton HTTP) on a node, so existing inference
clients work unchanged. The codec lives in ``p2pinfer.open_inference``; here each batch
row becomes one native request through the same controller (so the executor can batch
them again), and the answer is the protocol's ``outputs``."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import torch
from aiohttp import web

from p2pinfer import __version__
from p2pinfer.protocol import open_inference as protocol

if TYPE_CHECKING:
    from p2pinfer.runtime.node import Node

DEFAULT_DEADLINE_MS = 1000.0
MAX_BATCH = 64
NUM_CLASSES = 10  # every family of the default zoo classifies digits


def add_open_inference_routes(app: web.Application, node: Node) -> None:
    async def server(request: web.Request) -> web.Response:
        return web.json_response(protocol.server_metadata(__version__))

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        ready_now = node.controller is not None and not node.draining
        return web.json_response({"ready": ready_now}, status=200 if ready_now else 503)

    async def model(request: web.Request) -> web.Response:
        assert node.host is not None
        variant = node.host.require_family(request.match_info["family"])
        return web.json_response(protocol.model_metadata(variant.family, variant.input_shape, NUM_CLASSES))

    async def model_ready(request: web.Request) -> web.Response:
        assert node.host is not None
        node.host.require_family(request.match_info["family"])
        return web.json_response({"name": request.match_info["family"], "ready": not node.draining},
                                 status=503 if node.draining else 200)

    async def infer(request: web.Request) -> web.Response:
        received_at = time.monotonic()
        node._enter()  # noqa: SLF001 - drain accounting is the node's
        try:
            assert node.host is not None and node.controller is not None
            family = request.match_info["family"]
            variant = node.host.require_family(family)
            body = await node.read_body(request)
            parsed = protocol.parse_infer_request(body, request.headers.get(protocol.HEADER_LENGTH_HEADER))
            native = parsed.infer_request(family, DEFAULT_DEADLINE_MS)
            node.check_deadline(native.deadline_ms)
            from p2pinfer.protocol import wire

            array = wire.validate_input(parsed.input_array(), tuple(variant.input_shape),
                                        ("float32", "float16", "float64"), model=family, max_batch=MAX_BATCH)
            rows = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
            requests = [native] if len(rows) == 1 else [
                msgspec.structs.replace(native, request_id=f"{native.request_id}-{index}" if native.request_id
                                        else None) for index in range(len(rows))]
            results = await asyncio.gather(*[node.controller.infer(requests[index], rows[index:index + 1],
                                                                   received_at) for index in range(len(rows))])
            probabilities = np.array([result.probabilities for result in results], dtype=np.float32)
            outputs = protocol.classification_outputs(probabilities)
            body, headers = protocol.build_infer_response(
                family, outputs, request_id=parsed.id, requested=parsed.outputs,
                binary_outputs=parsed.binary_outputs,
                parameters={"variant": results[0].variant, "exit": results[0].exit,
                            "deadline_met": all(result.deadline_met for result in results),
                            "request_ids": [result.request_id for result in results]})
            node.metrics.requests.labels(outcome="ok").inc(len(results))
            content_type = headers.pop("Content-Type")
            return web.Response(body=body, headers=headers, content_type=content_type)
        finally:
            node._leave()  # noqa: SLF001

    app.router.add_get("/v2", server)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{family}", model)
    app.router.add_get("/v2/models/{family}/ready", model_ready)
    app.router.add_post("/v2/models/{family}/infer", infer)
