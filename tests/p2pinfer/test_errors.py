"""Every typed error survives the wire: encoded by the one error body every route uses,
decoded by the SDK into the same class, with its message and Retry-After."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from aiohttp import web

import p2pinfer
from p2pinfer import AsyncClient
from p2pinfer.errors import ERROR_CLASSES, NoFeasiblePlan, Overloaded, P2PError, UnknownProfile, error_from_code
from p2pinfer.protocol.error_body import error_from_answer, error_response, parse_retry_after
from p2pinfer.testing import free_port


def _all_error_classes() -> list[type[P2PError]]:
    for module in pkgutil.walk_packages(p2pinfer.__path__, "p2pinfer."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    found: list[type[P2PError]] = []
    pending = [P2PError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


CODED = sorted({cls for cls in _all_error_classes() if "code" in cls.__dict__}, key=lambda cls: cls.code)


def test_every_coded_subclass_is_registered_under_its_own_code() -> None:
    assert len(CODED) >= 30
    for cls in CODED:
        assert ERROR_CLASSES[cls.code] is cls, cls
    assert error_from_code("no_feasible_plan", "x").__class__ is NoFeasiblePlan
    assert error_from_code("unknown_profile", "x").__class__ is UnknownProfile


def test_a_second_class_cannot_take_a_code() -> None:
    with pytest.raises(TypeError, match="taken"):
        type("Impostor", (P2PError,), {"code": "no_feasible_plan"})


@pytest.mark.parametrize("cls", CODED, ids=lambda cls: cls.code)
def test_error_body_round_trip(cls: type[P2PError]) -> None:
    error = cls.from_wire(f"{cls.code} happened", retry_after_s=2.5)
    response = error_response(error)
    assert response.status == cls.status
    assert response.headers["Retry-After"] == "3"
    assert response.body is not None
    decoded = error_from_answer(response.status, bytes(response.body), response.headers["Retry-After"])
    assert type(decoded) is cls
    assert decoded.message == f"{cls.code} happened"
    assert decoded.retry_after_s == 2.5  # the body's wait; the header says whole seconds
    header_only = error_from_answer(response.status, b'{"error": "x", "code": "%s"}' % cls.code.encode(),
                                    response.headers["Retry-After"])
    assert header_only.retry_after_s == 3.0


def test_a_sub_second_wait_crosses_the_wire_to_the_millisecond() -> None:
    refusal = Overloaded("25 ms of queued work ahead", retry_after_s=0.025)
    response = error_response(refusal)
    assert response.headers["Retry-After"] == "1"  # HTTP: whole seconds, at least one
    decoded = error_from_answer(response.status, bytes(response.body or b""), response.headers["Retry-After"])
    assert decoded.retry_after_s == pytest.approx(0.025)
    for insane in (b"-5", b"1e300"):  # a body's nonsense wait falls back to the header
        body = b'{"error": "x", "code": "overloaded", "retry_after_ms": ' + insane + b"}"
        assert error_from_answer(429, body, "2").retry_after_s == 2.0


def test_bodies_without_a_code_fall_back_to_the_status() -> None:
    assert type(error_from_answer(429, b"<html>busy</html>")).__name__ == "Overloaded"
    assert type(error_from_answer(418, b"")) is P2PError
    assert parse_retry_after("nan") is None and parse_retry_after("-3") == 0.0


async def test_every_error_reaches_the_sdk_as_its_class() -> None:
    async def fail(request: web.Request) -> web.Response:
        cls = ERROR_CLASSES[request.query["code"]]
        return error_response(cls.from_wire(f"raised {cls.code}"))

    app = web.Application()
    app.router.add_get("/v1/health", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        for cls in CODED:
            async with AsyncClient(f"http://127.0.0.1:{port}") as client:
                client_request = client._request  # noqa: SLF001 - the SDK's one request path
                with pytest.raises(P2PError) as raised:
                    await client_request("GET", f"/v1/health?code={cls.code}")
            assert type(raised.value) is cls, cls
            assert raised.value.message == f"raised {cls.code}"
    finally:
        await runner.cleanup()


def test_an_annotated_error_keeps_its_class_code_retry_after_and_attributes() -> None:
    """What led to an error is appended to its message; nothing a caller branches on changes."""
    refusal = Overloaded("queue full", retry_after_s=0.7)
    annotated = refusal.annotated("second try, after w1@3 on edge was refused")
    assert type(annotated) is Overloaded and annotated.code == "overloaded" and annotated.retry_after_s == 0.7
    assert annotated.message == "queue full (second try, after w1@3 on edge was refused)"
    assert str(annotated) == annotated.message
    plan = NoFeasiblePlan("no host for block 2", block=2).annotated("re-planned here after overloaded at b")
    assert isinstance(plan, NoFeasiblePlan) and plan.block == 2
    assert plan.message.endswith("(re-planned here after overloaded at b)")
