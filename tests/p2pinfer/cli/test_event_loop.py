"""The node's event loop: uvloop by default where installed, asyncio's own on request."""

from __future__ import annotations

import asyncio

import pytest

from p2pinfer.cli.event_loop import EventLoopUnavailable, loop_factory, run_on_loop


async def running_loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_auto_and_uvloop_run_on_uvloop_and_asyncio_on_its_own_loop() -> None:
    pytest.importorskip("uvloop")
    assert run_on_loop(running_loop_module(), "auto") == "uvloop"
    assert run_on_loop(running_loop_module(), "uvloop") == "uvloop"
    assert run_on_loop(running_loop_module(), "asyncio") == "asyncio"
    assert loop_factory("asyncio") is None


def test_an_unknown_or_missing_loop_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EventLoopUnavailable, match="'trio'"):
        run_on_loop(running_loop_module(), "trio")  # the coroutine is closed, not left unawaited
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "uvloop" else real_find_spec(name, *rest))
    with pytest.raises(EventLoopUnavailable, match="uvloop is not installed"):
        loop_factory("uvloop")
    assert loop_factory("auto") is None  # auto falls back to asyncio's loop
    assert run_on_loop(running_loop_module(), "auto") == "asyncio"
