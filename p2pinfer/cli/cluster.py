"""Local clusters: real ``p2pinfer node`` processes on loopback, for ``p2pinfer cluster``,
the demo, the benchmarks and the tests.

A started process is ready when it prints its readiness line; we block on that line (no
sleeping, no polling), and a node that dies first is reported with its output.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from p2pinfer.errors import NodeStartError

READY_PREFIX = "P2PINFER_READY "


def announce_ready(node_id: str, url: str, port: int) -> None:
    """Print the readiness line ``start_node`` waits for (a node, the serving floor, a peer framework)."""
    print(READY_PREFIX + json.dumps({"node_id": node_id, "url": url, "port": port}), flush=True)


@dataclass
class NodeProcess:
    process: subprocess.Popen
    url: str
    node_id: str
    port: int
    arguments: list[str]
    output: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the node drains, then exits 0) and wait."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a word, as a crashed device would."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)


def start_node(arguments: Sequence[str], timeout_s: float = 90.0, env: dict[str, str] | None = None,
               echo: bool = False, launcher: Sequence[str] = ("-m", "p2pinfer", "node"),
               cwd: str | None = None) -> NodeProcess:
    """Start ``p2pinfer node ARGUMENTS`` and return once it is ready (port 0 unless given).

    ``launcher``: what follows the interpreter, e.g. ``-m cProfile -o FILE -m p2pinfer node``
    to profile a node, or another server that prints the same readiness line."""
    command = [sys.executable, *launcher, *arguments]
    if "--port" not in arguments:
        command += ["--port", "0"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment, start_new_session=False, cwd=cwd)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if len(output) < 2000:
                output.append(line)
            if echo:
                sys.stderr.write(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="node-output", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            raise NodeStartError("node did not become ready in time:\n" + "".join(output[-40:]))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            code = process.wait()
            raise NodeStartError(f"node exited with {code} before it was ready:\n" + "".join(output[-40:]))
        if line.startswith(READY_PREFIX):
            ready = json.loads(line[len(READY_PREFIX):])
            return NodeProcess(process, ready["url"], ready["node_id"], ready["port"], list(arguments), output)


class LocalCluster:
    """N node processes on loopback; a context manager that never leaks a process."""

    def __init__(self) -> None:
        self.nodes: list[NodeProcess] = []

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, arguments: Sequence[str], **options) -> NodeProcess:
        node = start_node(arguments, **options)
        self.nodes.append(node)
        return node

    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.alive()]

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.terminate(timeout_s=15)
