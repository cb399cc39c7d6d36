"""Other Python serving frameworks answering what the serving floor answers, for ``benchmarks.overhead``.

    python -m benchmarks.serving_peers litserve|ray-serve --variant digits-cnn-w1 [--backend onnxruntime]

Each peer runs the same variant the same way as the floor (``zoo.model_slice.load_slice``, one
intra-op thread, the final exit) and answers label + probabilities as JSON, in the framework's
own idiom: LitServe (a ``LitAPI`` behind its API server and inference worker processes) takes a
JSON body ``{"frame": base64}`` (its routes parse JSON; the envelope costs a few µs), Ray Serve
(a deployment behind its HTTP proxy) takes the binary frame as the floor does, PyTriton (NVIDIA's
Python front end to Triton Inference Server: Triton's C++ HTTP server, its Python backend stub
and this process, which runs the model) takes the frame as one ``BYTES`` element of a KServe v2
request in Triton's binary tensor extension, on ``/v2/models/floor/infer``, and answers v2 JSON
outputs. All decode the frame with ``p2pinfer.protocol.wire.decode_frame``: the framework is
the only difference.

None is a dependency of p2pinfer: ``pip install -e '.[bench-peers]'`` (or ``make
bench-peers``) adds them; ``python -m benchmarks.overhead --peers litserve,ray-serve,pytriton``
then runs them in the same interleaved rounds as the floor and the nodes. Like the floor, a peer
prints the node's readiness line once it answers, and stops (children included) on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import struct
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.serving_floor import FloorAnswerer
from p2pinfer.cli.cluster import announce_ready
from p2pinfer.protocol import open_inference
from p2pinfer.testing import free_port

ROUTE = "/v1/infer"


def litserve_body(frame: bytes) -> bytes:
    """What the LitServe peer takes: the frame in a JSON envelope."""
    return json.dumps({"frame": base64.b64encode(frame).decode("ascii")}).encode()


TRITON_MODEL = "floor"
TRITON_ROUTE = f"/v2/models/{TRITON_MODEL}/infer"


def v2_binary_request(description: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 request in Triton's binary tensor extension: the JSON ``description``, then the
    inputs' ``binary`` bytes; the ``Inference-Header-Content-Length`` header says where the JSON ends."""
    header = json.dumps(description).encode()
    return header + binary, {"Content-Type": open_inference.BINARY_CONTENT_TYPE,
                             open_inference.HEADER_LENGTH_HEADER: str(len(header))}


def triton_request(frame: bytes) -> tuple[bytes, dict[str, str]]:
    """The frame as one ``BYTES`` element (its 4-byte little-endian length, then its bytes)."""
    element = struct.pack("<I", len(frame)) + frame
    return v2_binary_request({"inputs": [{"name": "frame", "shape": [1], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": len(element)}}]}, element)


def floor_label(answer: Any) -> int:
    """The label in the floor's answer (``{"label": ..., "probabilities": [...]}``)."""
    return int(answer["label"])


def v2_label(answer: Any) -> int:
    """The label in a KServe v2 JSON answer (PyTriton's, a node's ``/v2`` route): the output named ``label``."""
    return int(next(output for output in answer["outputs"] if output["name"] == "label")["data"][0])


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


def _with_interpreters_libpython() -> None:
    """PyTriton's Python backend stub links ``libpython3.X.so`` and finds the system's first; the
    stub then runs this interpreter's standard library on another patch release's runtime (a
    pyenv 3.11.7 library on Debian's 3.11.2 fails in ``multiprocessing``: ``'_thread.RLock'
    object has no attribute '_recursion_count'``). This interpreter's own shared library, where
    it was built with one, goes first on the stub's library path (Triton's children inherit it)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return
    library_dir = str(sysconfig.get_config_var("LIBDIR"))
    paths = [path for path in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if path]
    if library_dir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([library_dir, *paths])


def serve_pytriton(variant_name: str, backend: str, host: str, port: int) -> None:
    import numpy as np
    from pytriton.model_config import ModelConfig, Tensor  # optional: the bench-peers extra
    from pytriton.triton import Triton, TritonConfig

    torch.set_num_threads(1)  # as the floor: one intra-op thread, the model in this process
    answerer = FloorAnswerer(variant_name, backend)

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        answers: list[dict[str, np.ndarray]] = []
        for request in requests:  # no dynamic batching: one frame per request, as the floor runs it
            answer = answerer.answer(bytes(request["frame"][0]))
            answers.append({"label": np.array([answer["label"]], dtype=np.int64),
                            "probabilities": np.array(answer["probabilities"], dtype=np.float32)})
        return answers

    _with_interpreters_libpython()
    config = TritonConfig(http_address=host, http_port=port, allow_grpc=False, allow_metrics=False,
                          log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name=TRITON_MODEL, infer_func=infer,
                    inputs=[Tensor(name="frame", dtype=np.bytes_, shape=(1,))],
                    outputs=[Tensor(name="label", dtype=np.int64, shape=(1,)),
                             Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
                    config=ModelConfig(batching=False))
        triton.run()  # returns once the model is loaded and the server ready
        announce_ready("peer", f"http://{host}:{port}", port)
        threading.Event().wait()


@dataclass(frozen=True)
class Peer:
    """One framework: the module that says it is installed, how it takes a request (the frame
    as is or in an envelope its routes parse, sent as ``content_type``; or a whole request built
    from the frame, body and headers, by ``request``), on which route, where its answer says the
    label, and how it serves."""

    module: str
    content_type: str
    envelope: Callable[[bytes], bytes] | None
    serve: Callable[[str, str, str, int], None]
    path: str = ROUTE
    request: Callable[[bytes], tuple[bytes, dict[str, str]]] | None = None
    label: Callable[[Any], int] = floor_label


PEERS = {"litserve": Peer("litserve", "application/json", litserve_body, serve_litserve),
         "ray-serve": Peer("ray.serve", "application/octet-stream", None, serve_ray),
         "pytriton": Peer("pytriton", open_inference.BINARY_CONTENT_TYPE, None, serve_pytriton, path=TRITON_ROUTE,
                          request=triton_request, label=v2_label)}


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
