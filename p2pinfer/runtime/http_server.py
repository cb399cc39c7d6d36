"""The node's HTTP server: aiohttp's, except for the requests aiohttp cannot parse.

Why: aiohttp answers a request whose head it cannot read (a header line over its 8 KB limit,
a bad method, a malformed header) itself, before any middleware runs: in plain text, in no
metric, with a ``LineTooLong`` traceback in the log. ``NodeRunner`` serves the app through a
request handler whose ``handle_error`` gives those requests the node's typed error body
(``protocol.error_body``, through the ``refuse`` callback, which also counts and logs them in
one line) instead. aiohttp has no public option for its request handler's class: the runner
builds its server as ``AppRunner`` does, then serves it through ``NodeServer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_request import BaseRequest

from p2pinfer.errors import BadRequest, HeaderTooLarge, P2PError

Refuse = Callable[[P2PError, str | None], web.StreamResponse]
"""Answer one unparsable request: (the typed error, the client's address) -> the response."""


def unparsable_request_error(error: BadHttpMessage) -> P2PError:
    """The typed error for what aiohttp's parser refused: a line over the limit is
    ``HeaderTooLarge`` (431), anything else a ``BadRequest`` naming the problem."""
    if isinstance(error, LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else "the"
        return HeaderTooLarge(f"a request header line is longer than the node's limit of {limit} bytes")
    return BadRequest(f"malformed HTTP request: {error.message}")


class NodeRequestHandler(web.RequestHandler):
    """aiohttp's protocol handler, answering unparsable requests with ``refuse``."""

    __slots__ = ("_refuse",)

    def __init__(self, manager: web.Server, *, refuse: Refuse, **options: Any) -> None:
        super().__init__(manager, **options)
        self._refuse = refuse

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, BadHttpMessage):  # errors past the middleware: aiohttp's own answer
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp does: the connection is broken
            raise ConnectionError("a response is already under way; cannot send the error answer")
        response = self._refuse(unparsable_request_error(exc), request.remote)
        response.force_close()
        return response


class NodeServer(web.Server):
    """aiohttp's server, whose connections are ``NodeRequestHandler``s."""

    def __init__(self, served: web.Server, refuse: Refuse) -> None:
        # the options aiohttp built for its handlers (access log, debug, the app's handler
        # arguments): read from the server it made, so they are exactly what it would use
        options: dict[str, Any] = dict(served._kwargs)
        loop = asyncio.get_running_loop()
        super().__init__(served.request_handler, request_factory=served.request_factory,
                         handler_cancellation=served.handler_cancellation, loop=loop, **options)
        self._refuse = refuse
        self._options = options
        self._serving_loop = loop

    def __call__(self) -> web.RequestHandler:
        return NodeRequestHandler(self, loop=self._serving_loop, refuse=self._refuse, **self._options)


class NodeRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers unparsable requests with ``refuse``."""

    def __init__(self, app: web.Application, *, refuse: Refuse, **options: Any) -> None:
        super().__init__(app, **options)
        self._refuse = refuse

    async def _make_server(self) -> web.Server:
        return NodeServer(await super()._make_server(), self._refuse)  # the app started and frozen as usual


__all__ = ["NodeRequestHandler", "NodeRunner", "NodeServer", "Refuse", "unparsable_request_error"]
