"""HTTP/REST front end: the Open Inference Protocol v2 plus the Triton extensions its tools read.

Routes (``[/versions/{v}]`` optional everywhere a model is named):
  GET  /v2/health/live, /v2/health/ready, /v2
  GET  /v2/models/{m}, /v2/models/{m}/ready, /v2/models/{m}/config, /v2/models/{m}/stats, /v2/models/stats
  POST /v2/models/{m}/infer                    JSON tensors or the binary tensor data extension
  POST /v2/repository/index, /v2/repository/models/{m}/load, .../unload   (admin token)
  GET  /metrics                                 Prometheus text

Every error is a non-200 status with body ``{"error": "..."}``; a 503 carries Retry-After.
Nothing here ever unpickles: bodies are JSON and raw little-endian tensors only.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from inferforge.errors import ProtocolError, one_line
from inferforge.serve.auth import Auth
from inferforge.serve.metrics import ServerMetrics
from inferforge.serve.protocol import (
    HEADER_LENGTH,
    decode_http_request,
    encode_http_response,
    parse_json_body,
    retry_after_headers,
    server_metadata_json,
)
from inferforge.serve.repository import ModelRepository

log = logging.getLogger("inferforge.serve")
REQUEST_ID = "X-Request-Id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpFrontEnd:
    repository: ModelRepository
    auth: Auth
    metrics: ServerMetrics
    max_body_bytes: int = 64 << 20
    draining: bool = False  # set at shutdown: readiness turns false so balancers stop sending

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors])
        get, post = web.get, web.post
        routes = [
            get("/v2/health/live", self.live), get("/v2/health/ready", self.ready), get("/v2", self.server_metadata),
            get("/v2/models/stats", self.stats), post("/v2/repository/index", self.repository_index),
            post("/v2/repository/models/{model}/load", self.repository_load),
            post("/v2/repository/models/{model}/unload", self.repository_unload),
            get("/metrics", self.prometheus),
        ]
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [get(prefix, self.model_metadata), get(prefix + "/ready", self.model_ready),
                       get(prefix + "/config", self.model_config), get(prefix + "/stats", self.stats),
                       post(prefix + "/infer", self.infer)]
        app.add_routes(routes)
        return app

    # ---- middleware -----------------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request id in and out; every failure becomes ``{"error": ...}`` with the right status."""
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex[:16]
        try:
            response = await handler(request)
        except ProtocolError as exc:
            response = _error(exc.status, str(exc), exc.retry_after_s)
            if exc.status >= 500 or log.isEnabledFor(logging.DEBUG):
                log.warning("request failed", extra={"request_id": request_id, "path": request.path,
                                                     "status": exc.status, "error": str(exc)})
        except web.HTTPRequestEntityTooLarge:
            response = _error(413, f"request body is larger than the limit of {self.max_body_bytes} bytes; "
                              "send smaller batches or raise --max-body-mb")
        except web.HTTPException as exc:  # 404/405 from routing
            response = _error(exc.status, f"{exc.reason}: {request.method} {request.path} is not an endpoint "
                              "of the Open Inference Protocol v2")
        except Exception as exc:
            log.exception("internal error", extra={"request_id": request_id, "path": request.path})
            response = _error(500, f"internal error: {one_line(exc)}")
        response.headers[REQUEST_ID] = request_id
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"request_id": request_id, "method": request.method, "path": request.path,
                                        "status": response.status})
        return response

    # ---- health and metadata --------------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ok = self.repository.ready and not self.draining
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        self.auth.check(request.headers.get("Authorization"))
        return web.json_response(server_metadata_json())

    async def model_metadata(self, request: web.Request) -> web.Response:
        self.auth.check(request.headers.get("Authorization"))
        return web.json_response(self._model(request).metadata_json())

    async def model_ready(self, request: web.Request) -> web.Response:
        self.auth.check(request.headers.get("Authorization"))
        info = request.match_info
        ok = self.repository.is_ready(info["model"], info.get("version")) and not self.draining
        return web.json_response({"name": info["model"], "ready": ok}, status=200 if ok else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        self.auth.check(request.headers.get("Authorization"))
        return web.json_response(self._model(request).config_json())

    async def stats(self, request: web.Request) -> web.Response:
        self.auth.check(request.headers.get("Authorization"))
        if "model" in request.match_info:
            models = [self._model(request)]
        else:
            models = list(self.repository.serving.values())
        return web.json_response({"model_stats": [m.stats.to_json(m.name, m.version) for m in models]})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    def _model(self, request: web.Request) -> Any:
        return self.repository.get(request.match_info["model"], request.match_info.get("version"))

    # ---- inference ------------------------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        label = self.metrics.label(request.match_info["model"], self.repository.serving)
        try:
            self.auth.check(request.headers.get("Authorization"))
            model = self._model(request)
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                raise ProtocolError(f"request body of {request.content_length} bytes is larger than the limit of "
                                    f"{self.max_body_bytes} bytes", 413)
            body = await request.read()
            document, tail = parse_json_body(body, request.headers.get(HEADER_LENGTH))
            infer_request = decode_http_request(document, tail)
            response = await model.infer(infer_request)
            payload, header_length = encode_http_response(infer_request, response)
        except ProtocolError as exc:
            self.metrics.record_request(label, "http", time.perf_counter() - started, exc.status)
            raise
        except web.HTTPRequestEntityTooLarge:
            self.metrics.record_request(label, "http", time.perf_counter() - started, 413)
            raise
        self.metrics.record_request(label, "http", time.perf_counter() - started)
        if header_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(header_length)})

    # ---- repository API -------------------------------------------------------------------------------------

    async def repository_index(self, request: web.Request) -> web.Response:
        self.auth.check_admin(request.headers.get("Authorization"))
        return web.json_response(self.repository.index_json())

    async def repository_load(self, request: web.Request) -> web.Response:
        self.auth.check_admin(request.headers.get("Authorization"))
        await self.repository.load(request.match_info["model"])
        return web.json_response({})

    async def repository_unload(self, request: web.Request) -> web.Response:
        self.auth.check_admin(request.headers.get("Authorization"))
        await self.repository.unload(request.match_info["model"])
        return web.json_response({})


def _error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    return web.Response(text=json.dumps({"error": message}), status=status, content_type="application/json",
                        headers=retry_after_headers(retry_after_s))
