"""Ray Serve's requests through the one route table of ``endpoints``: the Ray transport's adapter.

Ray Serve's proxy hands each application a Starlette request; ``StarletteAdapter`` routes it
through the same ``Route``s the aiohttp server registers, checks the token first with
``Auth.require`` (as the aiohttp middleware and the gRPC interceptor do), and answers every
failure through ``endpoints.failure``. The two views say where a Ray application finds models:
a replica has its one model; the ``/v2`` application has none (each model is its own application).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from inferforge.errors import ProtocolError
from inferforge.serve.auth import Access, Auth
from inferforge.serve.endpoints import V2Endpoints, V2Request, error_reply, failure

if TYPE_CHECKING:
    from inferforge.serve.model import ServedModel

# Which endpoints of the one route table each application answers (Ray's proxy routes by prefix).
REPLICA_ROUTES = frozenset({"model_metadata", "model_ready", "model_config", "model_stats", "infer",
                            "model_metadata_version", "model_ready_version", "model_config_version",
                            "model_stats_version", "infer_version"})
SERVER_ROUTES = frozenset({"live", "ready", "server_metadata"})

class OneModel:
    """A replica's view for the endpoints: its one model, under any version (Ray serves the newest only)."""

    ready = True

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.serving = {model.name: model}

    def get(self, name: str, version: str | None = None) -> ServedModel:
        if name != self.model.name:
            raise ProtocolError(f"unknown model {name!r}; this replica serves {self.model.name}", 404)
        return self.model

    def is_ready(self, name: str, version: str | None = None) -> bool:
        return name == self.model.name


class NoModels:
    """The ``/v2`` application's view: models live in their own applications, so any it is asked for is unknown."""

    ready = True  # deployed after every model application is running
    serving: dict[str, ServedModel] = {}

    def __init__(self, models: list[str]) -> None:
        self.models = models

    def get(self, name: str, version: str | None = None) -> ServedModel:
        raise ProtocolError(f"model {name!r}: no such model or endpoint; this server serves "
                            f"{', '.join(self.models)}", 404)

    def is_ready(self, name: str, version: str | None = None) -> bool:
        return False


class StarletteAdapter:
    """Ray Serve hands a Starlette request: route it through the endpoints' table, with the token checked
    first (``Auth.require``, as the aiohttp middleware does) and every failure mapped by ``failure``."""

    def __init__(self, endpoints: V2Endpoints, auth: Auth, prefix: str, names: frozenset[str],
                 not_found: str) -> None:
        self.auth = auth
        self.prefix = prefix
        self.routes = [r for r in endpoints.routes() if r.name in names]
        self.not_found = not_found

    async def __call__(self, request: Any) -> Any:
        path = request.url.path
        if not path.startswith(self.prefix):  # however the proxy passed the path: below the route prefix or whole
            path = self.prefix + path
        try:
            for route in self.routes:
                params = route.match(request.method, path)
                if params is not None:
                    self.auth.require(route.access, request.headers.get("authorization"))
                    reply = await route.handler(V2Request(request.method, path, params, request.headers,
                                                          request.body, _length(request.headers)))
                    break
            else:  # the list of served models is for token holders only
                self.auth.require(Access.TOKEN, request.headers.get("authorization"))
                raise ProtocolError(f"{request.method} {request.url.path}: {self.not_found}", 404)
        except Exception as exc:
            reply = error_reply(failure(exc))
        from starlette.responses import Response

        return Response(reply.body, status_code=reply.status, media_type=reply.content_type,
                        headers=dict(reply.headers))


def _length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    return int(value) if value and value.isdigit() else None
