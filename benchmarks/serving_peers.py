"""Other Python serving frameworks answering what the serving floor answers, for ``benchmarks.overhead``.

    python -m benchmarks.serving_peers litserve|ray-serve --variant digits-cnn-w1 [--backend onnxruntime]

Each peer runs the same variant the same way as the floor (``zoo.model_slice.load_slice``, one
intra-op thread, the final exit) and answers label + probabilities as JSON, in the framework's
own idiom: LitServe (a ``LitAPI`` behind its API server and inference worker processes) takes a
JSON body ``{"frame": base64}`` (its routes parse JSON; the envelope costs a few µs), Ray Serve
(a deployment behind its HTTP proxy) takes the binary frame as the floor does. Both decode the
frame with ``p2pinfer.protocol.wire.decode_frame``: the framework is the only difference.

Neither is a dependency of p2pinfer: ``pip install -e '.[bench-peers]'`` (or ``make
bench-peers``) adds them; ``python -m benchmarks.overhead --peers litserve,ray-serve`` then runs
them in the same interleaved rounds as the floor and the nodes. Like the floor, a peer prints
the node's readiness line once it answers, and stops (children included) on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.serving_floor import FloorAnswerer
from p2pinfer.cli.cluster import announce_ready
from p2pinfer.testing import free_port

ROUTE = "/v1/infer"


def litserve_body(frame: bytes) -> bytes:
    """What the LitServe peer takes: the frame in a JSON envelope."""
    return json.dumps({"frame": base64.b64encode(frame).decode("ascii")}).encode()


def _announce_when_healthy(url: str, port: int, health_path: str, timeout_s: float = 120.0) -> None:
    """Print the readiness line once ``health_path`` answers 200 (LitServe has no hook of its own)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + health_path, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    announce_ready("peer", url, port)
                    return
        except OSError:
            pass
        time.sleep(0.2)
    print(f"peer did not answer {health_path} within {timeout_s:.0f} s", file=sys.stderr, flush=True)


def serve_litserve(variant_name: str, backend: str, host: str, port: int) -> None:
    import litserve  # optional: the bench-peers extra

    from benchmarks.litserve_peer import FloorLitAPI  # a module of its own: LitServe's worker unpickles it by name

    server = litserve.LitServer(FloorLitAPI(variant_name, backend, api_path=ROUTE), accelerator="cpu",
                                workers_per_device=1, timeout=30)
    url = f"http://{host}:{port}"
    threading.Thread(target=_announce_when_healthy, args=(url, port, "/health"), daemon=True).start()
    server.run(host=host, port=port, num_api_servers=1, generate_client_file=False, log_level="warning")


def serve_ray(variant_name: str, backend: str, host: str, port: int) -> None:
    import ray  # optional: the bench-peers extra
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    class Floor:
        def __init__(self) -> None:
            torch.set_num_threads(1)  # as the floor: one intra-op thread
            self.answerer = FloorAnswerer(variant_name, backend)

        async def __call__(self, request: Request) -> JSONResponse:
            return JSONResponse(self.answerer.answer(await request.body()))

    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    serve.start(http_options={"host": host, "port": port})
    serve.run(Floor.bind(), route_prefix=ROUTE)  # type: ignore[attr-defined]  # bind: added by the decorator
    url = f"http://{host}:{port}"
    announce_ready("peer", url, port)
    try:
        threading.Event().wait()
    finally:
        serve.shutdown()
        ray.shutdown()


@dataclass(frozen=True)
class Peer:
    """One framework: the module that says it is installed, how it takes a request (the frame
    as is, or in an envelope its routes parse), and how it serves."""

    module: str
    content_type: str
    envelope: Callable[[bytes], bytes] | None
    serve: Callable[[str, str, str, int], None]


PEERS = {"litserve": Peer("litserve", "application/json", litserve_body, serve_litserve),
         "ray-serve": Peer("ray.serve", "application/octet-stream", None, serve_ray)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--variant", default="digits-cnn-w1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend", default="cpu-eager", choices=("cpu-eager", "onnxruntime"))
    arguments = parser.parse_args(argv)
    # SIGTERM as Ctrl+C: both frameworks stop their worker processes on KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    port = arguments.port or free_port(arguments.host)
    PEERS[arguments.peer].serve(arguments.variant, arguments.backend, arguments.host, port)


if __name__ == "__main__":
    main()
