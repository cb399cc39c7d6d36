"""Which event loop a node process runs on: uvloop where it is installed, else asyncio's own.

Why: a node's event loop is its bottleneck under many clients (all of a request's Python, the
HTTP stack included, runs on it; one core at most). uvloop (libuv, in Cython) runs the loop's
own machinery — ready callbacks, socket reads and writes, task wake-ups — for less CPU than
asyncio's pure-Python selector loop: measured in session 17 under 8 clients on 2 cores (ONNX
Runtime, digits-cnn-w1, ``--max-batch 1``), 1068 -> 909 us of node CPU per request and 1.19x
the requests/s. Nothing in the node depends on which loop runs it; ``--event-loop asyncio``
keeps the standard one (a platform without uvloop gets it anyway).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
ResultT = TypeVar("ResultT")


class EventLoopUnavailable(ValueError):
    """``--event-loop uvloop`` on a machine where uvloop is not installed."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``name`` asks for; None for asyncio's default loop."""
    if name not in EVENT_LOOPS:
        raise EventLoopUnavailable(f"--event-loop {name!r}: use one of {', '.join(EVENT_LOOPS)}")
    if name == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if name == "uvloop":
            raise EventLoopUnavailable("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
        return None
    import uvloop

    return uvloop.new_event_loop


def run_on_loop(main: Coroutine[Any, Any, ResultT], name: str = "auto") -> ResultT:
    """``asyncio.run(main)`` on the loop ``name`` chooses."""
    try:
        factory = loop_factory(name)
    except EventLoopUnavailable:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    if factory is None:
        return asyncio.run(main)
    if not hasattr(asyncio, "Runner"):  # Python 3.10
        loop = factory()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(main)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
