"""HTTP/REST on aiohttp: a thin adapter over the route table of ``endpoints``.

aiohttp routes each request to a ``Route``; two middlewares then do what every endpoint
needs: ``_authorize`` asks ``Auth.require`` for the route's declared access (the only token
check on this transport), and ``_errors`` gives each request an id and turns every failure
into ``{"error": ...}`` with the status ``endpoints.failure`` chose.

What aiohttp refuses before any route (an over-long URL or header line, broken framing) is
answered by ``_JsonErrorHandler`` in the same JSON; ``runner`` installs it. Slow clients are
bounded by ``read_timeout_s``: a connection that has not sent a whole request head in that
long is closed, and a body that takes longer gets 408.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from inferforge.errors import ProtocolError
from inferforge.serve.auth import Auth
from inferforge.serve.endpoints import Reply, Route, V2Endpoints, V2Request, error_reply, failure

log = logging.getLogger("inferforge.serve")
REQUEST_ID = "X-Request-Id"
CLIENT_GONE = 499  # nginx's "client closed request": counted, logged at debug, never sent
AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpFrontEnd:
    endpoints: V2Endpoints
    auth: Auth
    max_body_bytes: int  # aiohttp's own limit on what it reads (ServerConfig holds the default)
    read_timeout_s: float  # for a request's head, and again for its body (ServerConfig holds the default)
    _routes: dict[web.AbstractRoute, Route] = field(default_factory=dict)

    def app(self, routes: Sequence[Route] | None = None) -> web.Application:
        """An application serving ``routes`` (default: the whole table), behind the two middlewares."""
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors, self._authorize])
        for route in self.endpoints.routes() if routes is None else routes:
            self._routes[app.router.add_route(route.method, route.pattern, self._adapt(route))] = route
        return app

    def metrics_app(self) -> web.Application:
        """The metrics port: ``/metrics`` alone."""
        return self.app([r for r in self.endpoints.routes() if r.name == "metrics"])

    def runner(self, app: web.Application, shutdown_timeout_s: float) -> web.AppRunner:
        """A runner for ``app`` whose connections answer aiohttp's own refusals in JSON, close after
        ``read_timeout_s`` without a request head (slowloris; idle keep-alive too), and cancel a request's
        handler when its client hangs up (the model's queue and adapter then drop its work)."""
        return _JsonErrorRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s, handler_cancellation=True,
                                keepalive_timeout=self.read_timeout_s)

    def _adapt(self, route: Route) -> AiohttpHandler:
        async def handle(request: web.Request) -> web.StreamResponse:
            reply = await route.handler(V2Request(request.method, request.path, dict(request.match_info),
                                                  request.headers, lambda: self._read_body(request),
                                                  request.content_length))
            return _response(reply)

        return handle

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body within ``read_timeout_s``; ProtocolError 413 (too large), 408 (too slow), 400 (a
        body its Content-Encoding does not decode) or ``CLIENT_GONE`` (the client hung up mid-body)."""
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        except TimeoutError:
            raise ProtocolError(f"the request body did not arrive within {self.read_timeout_s:g} s; send it "
                                "faster or in smaller requests", 408) from None
        except (ConnectionError, web.RequestPayloadError) as exc:
            if request.transport is None or request.transport.is_closing():
                raise ProtocolError("the client closed the connection before sending the whole body",
                                    CLIENT_GONE) from None
            raise ProtocolError(f"the request body cannot be read: {' '.join(str(exc).split())} (check "
                                "Content-Encoding and "
                                "Content-Length or Transfer-Encoding)") from None

    def _too_large(self) -> ProtocolError:
        return ProtocolError(f"request body is larger than the limit of {self.max_body_bytes} bytes; send smaller "
                             "batches or raise --max-body-mb", 413)

    @web.middleware
    async def _authorize(self, request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
        """Every routed request passes ``Auth.require`` for its route's access; unrouted ones fall to 404/405."""
        route = self._routes.get(request.match_info.route)
        if route is not None:
            self.auth.require(route.access, request.headers.get("Authorization"))
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
        """Request id in and out; every failure becomes ``{"error": ...}`` with the right status."""
        request_id = _request_id(request)
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:  # a body read outside ``_read_body``
            response = _response(error_reply(self._too_large()))
        except web.HTTPException as exc:  # 404/405 from routing
            response = _response(error_reply(ProtocolError(
                f"{exc.reason}: {request.method} {request.path} is not an endpoint of the Open Inference Protocol "
                "v2", exc.status)))
        except Exception as exc:
            error = failure(exc)
            extra = {"request_id": request_id, "path": request.path}
            if error is not exc and error.status >= 500:
                log.exception("internal error", extra=extra)
            elif error.status == CLIENT_GONE:
                log.debug("client hung up", extra=extra)
            elif error.status >= 500 or log.isEnabledFor(logging.DEBUG):
                log.warning("request failed", extra={**extra, "status": error.status, "error": str(error)})
            response = _response(error_reply(error))
            if error.status in (408, CLIENT_GONE):  # the rest of the body may never come: do not wait for it
                response.force_close()
        response.headers[REQUEST_ID] = request_id
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"request_id": request_id, "method": request.method, "path": request.path,
                                        "status": response.status})
        return response


def _request_id(request: web.BaseRequest) -> str:
    return request.headers.get(REQUEST_ID) or uuid.uuid4().hex[:16]


def _response(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, content_type=reply.content_type, charset=reply.charset,
                        headers=reply.headers)


class _JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what it refuses before any route in the JSON error body, and
    logging a client's broken body or hang-up at debug level, as ``_errors`` does."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response already started cannot be replaced
            raise ConnectionError("response already sent, cannot send the error")
        if status >= 500:
            self.log_exception("error handling request", exc_info=exc)
            text = "internal server error"
        else:
            self.logger.debug("refused a malformed request: %s", message)
            what = f"{type(exc).__name__}: {message}" if exc is not None else message or HTTPStatus(status).phrase
            text = (f"malformed HTTP request ({what}); the server reads request and header lines of at most 8190 "
                    "bytes, at most 128 headers, standard framing, and bodies that decode as their "
                    "Content-Encoding says")
        response = _response(error_reply(ProtocolError(text, status)))
        response.headers[REQUEST_ID] = _request_id(request)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp logs a body that fails to decode, met again while it drains the connection, as an
        unhandled exception; it is the client's, already answered with 400."""
        if isinstance(kw.get("exc_info"), web.RequestPayloadError | ConnectionError):
            self.logger.debug(*args, **kw)
        else:
            super().log_exception(*args, **kw)


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorRunner(web.AppRunner):
    """An AppRunner whose connections are ``_JsonErrorHandler``s. aiohttp offers no public hook for the
    errors it answers itself, so this rebuilds its server (``test_serve_limits`` pins the behaviour)."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _JsonErrorServer(made.request_handler, request_factory=made.request_factory,
                                handler_cancellation=made.handler_cancellation, loop=made._loop, **made._kwargs)
