"""The serving floor: the least a Python HTTP server can do to answer one inference.

    python -m benchmarks.serving_floor --variant digits-cnn-w1 [--port 0] [--backend cpu-eager|onnxruntime]

One aiohttp route that reads the same binary frame a p2pinfer node reads, runs the same
variant to its final exit inline on the event loop, and answers label + probabilities as
JSON. Nothing else: no queue, no deadline, no selection, no learning. ``--backend onnxruntime``
runs the same ONNX Runtime sessions a node started with ``--cpu-backend onnxruntime`` runs. ``benchmarks.overhead``
runs it beside a node to say how far p2pinfer's request path is above this floor.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import msgspec
import torch
from aiohttp import web

from p2pinfer.cli.cluster import announce_ready
from p2pinfer.cli.event_loop import EVENT_LOOPS, run_on_loop
from p2pinfer.protocol import wire
from zoo.backend import Backend
from zoo.manifest import read_manifest
from zoo.model_slice import load_slice


class FloorAnswerer:
    """The floor's work for one frame, shared with ``benchmarks.serving_peers``: decode, run
    the variant to its final exit, softmax."""

    def __init__(self, variant_name: str, backend: str = "cpu-eager") -> None:
        torch.set_grad_enabled(False)
        variant = read_manifest().variant(variant_name)
        self.model = load_slice(variant, backend=Backend.onnxruntime() if backend == "onnxruntime" else Backend.cpu())
        self.final = variant.exit_blocks[-1]

    def answer(self, frame: bytes) -> dict[str, Any]:
        _, tensors = wire.decode_frame(frame, wire.InferFrameHeader)
        logits = self.model.exit_logits(self.final, self.model.run(torch.from_numpy(tensors[wire.INPUT_TENSOR].copy())))
        probabilities = torch.softmax(logits, -1)[0]
        return {"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()}


def floor_app(variant_name: str, backend: str = "cpu-eager") -> web.Application:
    answerer = FloorAnswerer(variant_name, backend)

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=msgspec.json.encode(answerer.answer(body)), content_type="application/json")

    app = web.Application()
    app.add_routes([web.post("/v1/infer", infer)])
    return app


async def serve(variant_name: str, host: str, port: int, backend: str = "cpu-eager") -> None:
    torch.set_num_threads(1)
    runner = web.AppRunner(floor_app(variant_name, backend), access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    await web.SockSite(runner, sock).start()
    bound = sock.getsockname()[1]
    announce_ready("floor", f"http://{host}:{bound}", bound)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="digits-cnn-w1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend", default="cpu-eager", choices=("cpu-eager", "onnxruntime"))
    parser.add_argument("--event-loop", default="asyncio", choices=EVENT_LOOPS,
                        help="the floor's loop: asyncio's own (the default: a minimal server), or uvloop as the "
                             "node's default (benchmarks.overhead --floor-event-loop)")
    arguments = parser.parse_args(argv)
    run_on_loop(serve(arguments.variant, arguments.host, arguments.port, arguments.backend), arguments.event_loop)


if __name__ == "__main__":
    main()
