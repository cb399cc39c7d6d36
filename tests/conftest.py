"""Shared fixtures: free ports, waiting on conditions (never sleeping), and a reaper
that kills any child process a test leaves behind (in the style of hivemind's tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import psutil
import pytest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.02,
               message: str = "condition") -> object:
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


async def async_wait_until(condition: Callable[[], Awaitable[object]], timeout_s: float = 20.0,
                           interval_s: float = 0.02, message: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


@pytest.fixture(autouse=True)
def reap_children():
    """Kill every child process a test leaves running, so no test leaks nodes into the next."""
    yield
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


# ---- real node processes -------------------------------------------------------------------
import json  # noqa: E402
import queue  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402

READY_PREFIX = "P2PINFER_READY "


@dataclass
class NodeProcess:
    process: subprocess.Popen
    url: str
    node_id: str
    port: int
    output: list[str]

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def start_node(*arguments: str, timeout_s: float = 60.0, env: dict | None = None) -> NodeProcess:
    """Start ``p2pinfer node`` and block on its readiness line (no sleeping, no polling)."""
    command = [sys.executable, "-m", "p2pinfer", "node", "--port", "0", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            raise AssertionError("node did not become ready:\n" + "".join(output))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"node exited with {process.wait()} before ready:\n" + "".join(output))
        if line.startswith(READY_PREFIX):
            ready = json.loads(line[len(READY_PREFIX):])
            return NodeProcess(process, ready["url"], ready["node_id"], ready["port"], output)


@pytest.fixture
def node_factory():
    started: list[NodeProcess] = []

    def factory(*arguments: str, **options) -> NodeProcess:
        node = start_node(*arguments, **options)
        started.append(node)
        return node

    yield factory
    for node in started:
        if node.process.poll() is None:
            node.kill()
