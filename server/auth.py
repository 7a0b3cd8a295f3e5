"""Bearer-token authentication for every RPC but health checks."""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

import grpc

from kvferry.server.handlers import same_shape

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(EXEMPT_PREFIXES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or self._allowed(details):
            return handler
        return _refusing(handler)


_MESSAGE = ("missing or wrong bearer token: send metadata 'authorization: Bearer <token>' with the "
            "token the server was started with (--auth-token-file)")


def _refusing(h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape that refuses without reading the request."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
        yield  # pragma: no cover - makes this an async generator

    return same_shape(h, streaming if h.response_streaming else unary)
