"""Shared fixtures: free ports, waiting on conditions (never sleeping), and a reaper
that kills any child process a test leaves behind (in the style of hivemind's tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import psutil
import pytest

from p2pinfer.cli.cluster import NodeProcess
from p2pinfer.cli.cluster import start_node as start_node_process


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
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)


# ---- real node processes -------------------------------------------------------------------


def start_node(*arguments: str, timeout_s: float = 90.0, env: dict | None = None) -> NodeProcess:
    """Start ``p2pinfer node`` on a free port and block on its readiness line."""
    return start_node_process(list(arguments), timeout_s=timeout_s, env=env)


@pytest.fixture
def node_factory():
    started: list[NodeProcess] = []

    def factory(*arguments: str, **options) -> NodeProcess:
        node = start_node(*arguments, **options)
        started.append(node)
        return node

    yield factory
    for node in started:
        if node.alive():
            node.kill()
