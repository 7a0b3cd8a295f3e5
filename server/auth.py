"""Bearer-token authentication: every RPC but health checks must carry the token."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})

MESSAGE = ("missing or wrong bearer token: send metadata 'authorization: Bearer <token>' with the "
           "token the server was started with (--auth-token-file)")


class BearerToken:
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def allows(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)  # constant-time
        return False
