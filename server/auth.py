"""Bearer tokens: every RPC but health checks must carry the service token (--auth-token-file);
operator views (List, Stats) need the admin token instead, when one is set (--admin-token-file).
The admin token also passes wherever the service token does."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import grpc

from kvferry.statemachine import Reason

EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})
OPERATOR_METHODS = frozenset({"List", "Stats"})

MESSAGE = ("missing or wrong bearer token: send metadata 'authorization: Bearer <token>' with the "
           "token the server was started with (--auth-token-file)")
ADMIN_MESSAGE = ("{method} is an operator call: send metadata 'authorization: Bearer <token>' with "
                 "the admin token the server was started with (--admin-token-file)")


class BearerTokens:
    def __init__(self, token: str | None, admin: str | None = None) -> None:
        self._service = None if token is None else f"Bearer {token}".encode()
        self._admin = None if admin is None else f"Bearer {admin}".encode()

    def refusal(self, method: str,
                metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[grpc.StatusCode, str, str] | None:
        """Why a call of ``method`` with ``metadata`` may not proceed (code, message, reason),
        or None."""
        given = _authorization(metadata)
        admin = self._admin is not None and given is not None and hmac.compare_digest(given, self._admin)
        if method in OPERATOR_METHODS and self._admin is not None:
            if admin:
                return None
            code = grpc.StatusCode.UNAUTHENTICATED if given is None else grpc.StatusCode.PERMISSION_DENIED
            return code, ADMIN_MESSAGE.format(method=method), Reason.ADMIN_TOKEN
        if self._service is None or admin:
            return None
        if given is not None and hmac.compare_digest(given, self._service):  # constant-time
            return None
        return grpc.StatusCode.UNAUTHENTICATED, MESSAGE, Reason.BEARER_TOKEN


def _authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else value
    return None
