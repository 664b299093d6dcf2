"""Bearer tokens: one for inference and metadata, a separate one for the repository API.

Health endpoints stay open (orchestrators probe them without credentials). The
repository API's load and unload are off unless an admin token is set: management
endpoints open by default are how TorchServe was taken over (CVE-2023-43654). Its index is
read-only and takes the inference token, as Triton's does, so clients discover models on a
default server.

Each endpoint declares its ``Access`` once (the route table in ``endpoints``, the RPC table in
``grpc``), and each transport calls ``Auth.require`` once per request, before any handler runs:
an aiohttp middleware, the Ray adapter, a gRPC interceptor. No handler checks a token itself.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from inferforge.errors import ProtocolError

CHALLENGE = 'Bearer realm="inferforge"'  # WWW-Authenticate on an HTTP 401: the scheme ``_matches`` reads

class Access(StrEnum):
    """Who may call an endpoint."""

    PUBLIC = "public"  # liveness, readiness, Prometheus scrapes: probes carry no credentials
    TOKEN = "token"  # inference and metadata: the bearer token, when one is set
    ADMIN = "admin"  # loading and unloading models: the admin token, and off without one


@dataclass(frozen=True)
class Auth:
    token: str | None = None  # inference and metadata; None = open
    admin_token: str | None = None  # repository API; None = the API is disabled

    def require(self, access: Access, authorization: str | None) -> None:
        """Raise ProtocolError (401, or 403 for a disabled repository API) unless ``authorization`` grants
        ``access``; the one call every transport makes before a handler runs."""
        if access is Access.TOKEN:
            self._check_token(authorization)
        elif access is Access.ADMIN:
            self._check_admin(authorization)

    def _check_token(self, authorization: str | None) -> None:
        """Raise 401 unless ``authorization`` is ``Bearer <token>`` (or no token is configured)."""
        if self.token is not None and not _matches(authorization, self.token):
            raise ProtocolError("missing or wrong bearer token: send 'Authorization: Bearer <token>'", 401)

    def _check_admin(self, authorization: str | None) -> None:
        if self.admin_token is None:
            raise ProtocolError("the repository API is disabled: start the server with --admin-token to enable it",
                                403)
        if not _matches(authorization, self.admin_token):
            raise ProtocolError("missing or wrong admin bearer token for the repository API", 401)


def _matches(authorization: str | None, token: str) -> bool:
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
