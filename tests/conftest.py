"""Shared fixtures: free ports, waiting on conditions (never sleeping), and a reaper
that kills any child process a test leaves behind (in the style of hivemind's tests)."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil
import pytest

from p2pinfer.cli.cluster import NodeProcess
from p2pinfer.cli.cluster import start_node as start_node_process
from p2pinfer.testing import async_wait_until, free_port, wait_until

__all__ = ["async_wait_until", "free_port", "start_node", "wait_until"]

# Nodes the tests start without naming a CPU backend run eager PyTorch (a node's `auto` default
# is ONNX Runtime): each start then skips building ~50 ONNX Runtime sessions, which kept the
# default suite under 8 minutes. The ONNX Runtime path has its own tests (tests/zoo/
# test_onnxruntime_backend.py, a real node in test_warmup.py, and the thermal and
# bandwidth-trace scenarios in tests/benchmarks, which name it).
os.environ.setdefault("P2PINFER_CPU_BACKEND", "cpu-eager")


@pytest.fixture(autouse=True)
def reap_children():
    """Kill every child process a test leaves running, so no test leaks nodes into the next."""
    yield
    children = psutil.Process(os.getpid()).children(recursive=True)
    for child in children:  # a chance to drain and exit cleanly first
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=3.0)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)


@pytest.fixture(autouse=True)
def keep_gradients_as_they_were():
    """Restore torch's process-wide gradient mode after each test: code under test that turns it
    off (the overhead benchmark's in-process floor does, for speed) must not make a later test's
    training fail ("does not require grad")."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


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
