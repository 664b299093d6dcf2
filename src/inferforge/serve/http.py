"""HTTP/REST on aiohttp: a thin adapter over the route table of ``endpoints``.

aiohttp routes each request to a ``Route``; two middlewares then do what every endpoint
needs: ``_authorize`` asks ``Auth.require`` for the route's declared access (the only token
check on this transport), and ``_errors`` gives each request an id and turns every failure
into ``{"error": ...}`` with the status ``endpoints.failure`` chose.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from inferforge.errors import ProtocolError
from inferforge.serve.auth import Auth
from inferforge.serve.endpoints import Reply, Route, V2Endpoints, V2Request, error_reply, failure

log = logging.getLogger("inferforge.serve")
REQUEST_ID = "X-Request-Id"
AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpFrontEnd:
    endpoints: V2Endpoints
    auth: Auth
    max_body_bytes: int  # aiohttp's own limit on what it reads (ServerConfig holds the default)
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

    def _adapt(self, route: Route) -> AiohttpHandler:
        async def handle(request: web.Request) -> web.StreamResponse:
            async def read_body() -> bytes:
                try:
                    return await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise self._too_large() from None

            reply = await route.handler(V2Request(request.method, request.path, dict(request.match_info),
                                                  request.headers, read_body, request.content_length))
            return _response(reply)

        return handle

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
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex[:16]
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:  # a body read outside ``read_body``
            response = _response(error_reply(self._too_large()))
        except web.HTTPException as exc:  # 404/405 from routing
            response = _response(error_reply(ProtocolError(
                f"{exc.reason}: {request.method} {request.path} is not an endpoint of the Open Inference Protocol "
                "v2", exc.status)))
        except Exception as exc:
            error = failure(exc)
            if error is not exc and error.status >= 500:
                log.exception("internal error", extra={"request_id": request_id, "path": request.path})
            elif error.status >= 500 or log.isEnabledFor(logging.DEBUG):
                log.warning("request failed", extra={"request_id": request_id, "path": request.path,
                                                     "status": error.status, "error": str(error)})
            response = _response(error_reply(error))
        response.headers[REQUEST_ID] = request_id
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"request_id": request_id, "method": request.method, "path": request.path,
                                        "status": response.status})
        return response


def _response(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, content_type=reply.content_type, charset=reply.charset,
                        headers=reply.headers)
