"""Bearer tokens: one for inference and metadata, a separate one for the repository API.

Health endpoints stay open (orchestrators probe them without credentials). The
repository API (load/unload/index) is off unless an admin token is set: management
endpoints open by default are how TorchServe was taken over (CVE-2023-43654).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from inferforge.errors import ProtocolError


@dataclass(frozen=True)
class Auth:
    token: str | None = None  # inference and metadata; None = open
    admin_token: str | None = None  # repository API; None = the API is disabled

    def check(self, authorization: str | None) -> None:
        """Raise 401 unless ``authorization`` is ``Bearer <token>`` (or no token is configured)."""
        if self.token is not None and not _matches(authorization, self.token):
            raise ProtocolError("missing or wrong bearer token: send 'Authorization: Bearer <token>'", 401)

    def check_admin(self, authorization: str | None) -> None:
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
