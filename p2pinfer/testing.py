"""What tests and the benchmark harness share to drive real nodes: free ports, waiting on
a condition (never sleeping to synchronise), and starting node processes.

It lives in the package (not in ``tests/`` or ``benchmarks/``) because both sides use it,
and users testing their own deployments can too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value; raise ``AssertionError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


async def async_wait_until(condition: Callable[[], Awaitable[T]], timeout_s: float = 20.0,
                           interval_s: float = 0.02, message: str = "condition") -> T:
    """``wait_until`` for a coroutine condition, without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)
