"""The Open Inference Protocol v2 endpoints, written once for every transport.

Routes (``[/versions/{v}]`` optional everywhere a model is named):
  GET  /v2/health/live, /v2/health/ready, /v2
  GET  /v2/models/{m}, /v2/models/{m}/ready, /v2/models/{m}/config, /v2/models/{m}/stats, /v2/models/stats
  POST /v2/models/{m}/infer                    JSON tensors or the binary tensor data extension
  POST /v2/repository/index, /v2/repository/models/{m}/load, .../unload   (admin token)
  GET  /metrics                                 Prometheus text

Why one table: aiohttp (``http``) and Ray Serve (``ray_http``) each only turn their request
into a ``V2Request`` and a ``Reply`` into their response; which endpoints exist, who may call
them (``Access``, enforced by each transport once, before the handler) and how an error is
answered (``failure`` and ``error_reply``) are decided here. gRPC keeps its own messages but
calls the same operations (``is_ready``, ``model``, ``infer``) and the same ``failure``.

Every error is a non-200 status with body ``{"error": "..."}``; a 503 carries Retry-After, a 401
WWW-Authenticate. ``openapi.json`` beside this module describes the same table for clients and for
the fuzz tests (``tests/test_serve_fuzz_http.py`` checks that the two agree).
Nothing here ever unpickles: bodies are JSON and raw little-endian tensors only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from inferforge.errors import ProtocolError, SpecError, one_line
from inferforge.serve.auth import CHALLENGE, Access
from inferforge.serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    decode_http_request,
    encode_http_response,
    parse_json_body,
    server_metadata_json,
)

if TYPE_CHECKING:
    from inferforge.serve.metrics import ServerMetrics
    from inferforge.serve.model import ServedModel
    from inferforge.serve.repository import ModelRepository

T = TypeVar("T")


@dataclass(frozen=True)
class V2Request:
    """What a handler reads of an HTTP request, whichever server received it.

    ``headers`` must look names up case-insensitively (aiohttp's and Starlette's both do);
    ``read_body`` raises ProtocolError 413 when the transport's own size limit is passed.
    """

    method: str
    path: str
    params: Mapping[str, str]  # from the route's pattern: "model", and "version" when given
    headers: Mapping[str, str]
    read_body: Callable[[], Awaitable[bytes]]
    content_length: int | None = None


@dataclass(frozen=True)
class Reply:
    """A status and a body, which each transport turns into its own response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    charset: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(document).encode())


Handler = Callable[[V2Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One endpoint: ``pattern`` in aiohttp's syntax (``{model}`` matches one path segment)."""

    name: str
    method: str
    pattern: str
    access: Access
    handler: Handler

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path's parameters when this route answers ``method path`` (a trailing / ignored); else None."""
        if method != self.method:
            return None
        found = _compiled(self.pattern).fullmatch(path.rstrip("/") or "/")
        return found.groupdict() if found else None


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(pattern)))


def failure(exc: BaseException) -> ProtocolError:
    """The one error mapping: what a client is told, and with which status, for any exception.

    ProtocolError carries its own status; SpecError (inputs that do not fit the model) is the
    client's mistake, 400; anything else is ours, 500, in one line (the front end logs the traceback).
    """
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, SpecError):
        return ProtocolError(str(exc), 400)
    return ProtocolError(one_line(exc), 500)


def error_reply(error: ProtocolError) -> Reply:
    """``{"error": ...}`` with the error's status; a retry hint becomes Retry-After (whole seconds, at least 1)
    and a 401 says which credentials to send (WWW-Authenticate, as RFC 9110 asks)."""
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    if error.status == 401:
        headers["WWW-Authenticate"] = CHALLENGE
    return Reply(error.status, json.dumps({"error": str(error)}).encode(), headers=headers)


class Models(Protocol):
    """Where the endpoints find models: the server's repository, or a Ray replica's one model."""

    @property
    def ready(self) -> bool: ...

    @property
    def serving(self) -> Mapping[str, ServedModel]: ...

    def get(self, name: str, version: str | None = None) -> ServedModel: ...

    def is_ready(self, name: str, version: str | None = None) -> bool: ...


@dataclass
class V2Endpoints:
    """The protocol's operations over ``models``; ``routes()`` is the table every HTTP transport serves.

    ``repository`` adds the repository API and ``metrics`` the Prometheus endpoint and request
    counts (a Ray replica has neither: Ray exports its own). ``answered_by`` is added to every
    inference response's parameters and to statistics (Ray: which replica answered).
    """

    models: Models
    metrics: ServerMetrics | None = None
    repository: ModelRepository | None = None
    max_body_bytes: int | None = None  # the server's --max-body-mb; None: the transport's own limit only
    answered_by: Mapping[str, str] = field(default_factory=dict)
    draining: bool = False  # set at shutdown: readiness turns false so balancers stop sending

    def routes(self) -> list[Route]:
        token, public = Access.TOKEN, Access.PUBLIC
        routes = [
            Route("live", "GET", "/v2/health/live", public, self.live),
            Route("ready", "GET", "/v2/health/ready", public, self.ready),
            Route("server_metadata", "GET", "/v2", token, self.server_metadata),
            Route("all_stats", "GET", "/v2/models/stats", token, self.stats),
        ]
        for prefix, versioned in (("/v2/models/{model}", ""), ("/v2/models/{model}/versions/{version}", "_version")):
            routes += [Route("model_metadata" + versioned, "GET", prefix, token, self.model_metadata),
                       Route("model_ready" + versioned, "GET", prefix + "/ready", token, self.model_ready),
                       Route("model_config" + versioned, "GET", prefix + "/config", token, self.model_config),
                       Route("model_stats" + versioned, "GET", prefix + "/stats", token, self.stats),
                       Route("infer" + versioned, "POST", prefix + "/infer", token, self.http_infer)]
        if self.repository is not None:
            admin = Access.ADMIN  # the index is read-only and open to inference clients, as Triton's is
            routes += [Route("repository_index", "POST", "/v2/repository/index", token, self.repository_index),
                       Route("repository_load", "POST", "/v2/repository/models/{model}/load", admin,
                             self.repository_load),
                       Route("repository_unload", "POST", "/v2/repository/models/{model}/unload", admin,
                             self.repository_unload)]
        if self.metrics is not None:
            routes.append(Route("metrics", "GET", "/metrics", public, self.prometheus))
        return routes

    # ---- operations every transport shares ------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.models.ready and not self.draining

    def is_model_ready(self, name: str, version: str | None = None) -> bool:
        return self.models.is_ready(name, version) and not self.draining

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The serving model; ProtocolError 404 (unknown) or 503 (not ready yet)."""
        return self.models.get(name, version or None)

    async def infer(self, name: str, version: str | None, protocol: str,
                    decode: Callable[[], Awaitable[InferRequest]],
                    encode: Callable[[InferRequest, InferResponse], T]) -> T:
        """Find the model (404 before 400), decode, run, encode; counted in the request metrics.

        ``decode`` and ``encode`` are the transport's; their errors count as this request's
        failure. The request's deadline (its ``timeout`` parameter, else the model's request
        timeout) covers everything after decoding, the input adapter's work included: at the
        deadline the answer is 504 and the work is abandoned. Raises what they or the model
        raised (map it with ``failure``).
        """
        started = time.perf_counter()
        label = self.metrics.label(name, self.models.serving) if self.metrics is not None else name
        try:
            model = self.model(name, version)
            request = await decode()
            timeout_s = request.timeout_s() or model.request_timeout_s
            _admit(model, request)
            try:
                async with asyncio.timeout(timeout_s):
                    response = await model.infer(request)
            except TimeoutError:
                raise ProtocolError(f"request timed out after {timeout_s:g} s (its 'timeout' parameter, in "
                                    "microseconds, or the server's request timeout)", 504) from None
            response.parameters.update(self.answered_by)
            encoded = encode(request, response)
        except Exception as exc:
            self._count(label, protocol, started, failure(exc).status)
            raise
        self._count(label, protocol, started, 200)
        return encoded

    def _count(self, label: str, protocol: str, started: float, status: int) -> None:
        if self.metrics is not None:
            self.metrics.record_request(label, protocol, time.perf_counter() - started, status)

    # ---- HTTP handlers: V2Request in, Reply out -------------------------------------------------------------

    async def live(self, request: V2Request) -> Reply:
        return Reply.json({"live": True})

    async def ready(self, request: V2Request) -> Reply:
        ok = self.is_ready()
        return Reply.json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(self, request: V2Request) -> Reply:
        return Reply.json(server_metadata_json())

    async def model_metadata(self, request: V2Request) -> Reply:
        return Reply.json(self.model(request.params["model"], request.params.get("version")).metadata_json())

    async def model_ready(self, request: V2Request) -> Reply:
        name = request.params["model"]
        ok = self.is_model_ready(name, request.params.get("version"))
        return Reply.json({"name": name, "ready": ok}, 200 if ok else 503)

    async def model_config(self, request: V2Request) -> Reply:
        return Reply.json(self.model(request.params["model"], request.params.get("version")).config_json())

    async def stats(self, request: V2Request) -> Reply:
        if "model" in request.params:
            models = [self.model(request.params["model"], request.params.get("version"))]
        else:
            models = list(self.models.serving.values())
        return Reply.json({"model_stats": [m.stats.to_json(m.name, m.version) for m in models], **self.answered_by})

    async def http_infer(self, request: V2Request) -> Reply:
        async def decode() -> InferRequest:
            length = request.content_length
            if self.max_body_bytes is not None and length is not None and length > self.max_body_bytes:
                raise ProtocolError(f"request body of {length} bytes is larger than the limit of "
                                    f"{self.max_body_bytes} bytes", 413)
            document, tail = parse_json_body(await request.read_body(), request.headers.get(HEADER_LENGTH))
            return decode_http_request(document, tail)

        payload, header_length = await self.infer(request.params["model"], request.params.get("version"), "http",
                                                  decode, encode_http_response)
        if header_length is None:
            return Reply(body=payload)
        return Reply(body=payload, content_type="application/octet-stream",
                     headers={HEADER_LENGTH: str(header_length)})

    async def prometheus(self, request: V2Request) -> Reply:
        if self.metrics is None:  # routed only when there are metrics; a caller who asks anyway learns so
            raise ProtocolError("this server keeps no Prometheus metrics", 404)
        return Reply(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def repository_index(self, request: V2Request) -> Reply:
        return Reply.json(self._repository().index_json())

    async def repository_load(self, request: V2Request) -> Reply:
        # shielded: a caller who hangs up must not cancel a load half done (its instances would leak)
        await asyncio.shield(self._repository().load(request.params["model"]))
        return Reply.json({})

    async def repository_unload(self, request: V2Request) -> Reply:
        await asyncio.shield(self._repository().unload(request.params["model"]))
        return Reply.json({})

    def _repository(self) -> ModelRepository:
        if self.repository is None:
            raise ProtocolError("this server has no repository API", 404)
        return self.repository


def _admit(model: ServedModel, request: InferRequest) -> None:
    """A model with an input adapter counts the rows being converted with its queue: decoding and tokenizing
    come before the batcher's own queue, and 40 huge images must meet the same ``max_queue_size``.
    Raises ProtocolError 503 with a retry hint when they would pass it."""
    if model.adapter is None or model.batcher is None:
        return  # the batcher refuses a full queue itself
    first = next(iter(request.inputs.values()), None)
    rows = int(first.shape[0]) if first is not None and first.ndim else 1
    waiting = model.batcher.queued_rows + model.adapter.rows_in_progress
    limit = model.batching.max_queue_size
    if waiting + rows > limit:
        raise ProtocolError(f"queue is full ({waiting} samples waiting or being converted, limit {limit}); "
                            "retry shortly", 503, retry_after_s=0.1)
