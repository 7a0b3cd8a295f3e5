"""gRPC server metrics under go-grpc-prometheus's names, so existing dashboards work unchanged.

grpc.aio rejects sync interceptors (py-grpc-prometheus is sync), so this is an aio interceptor that
rewraps each method handler: unary and streaming, requests and responses counted per message.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import grpc
from google.protobuf.descriptor import MethodDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram

from kvferry.server.handlers import behavior_of, same_shape

# grpc.StatusCode spelled as Go's codes.Code.String() spells it.
GO_CODES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown", grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded", grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal", grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class _MethodMetrics:
    """Children bound once per method: no label lookups per call."""

    __slots__ = ("started", "handled", "received", "sent", "seconds")

    def __init__(self, m: "GrpcServerMetrics", labels: tuple[str, str, str]) -> None:
        self.started = m.started.labels(*labels)
        self.handled = {code: m.handled.labels(*labels, name) for code, name in GO_CODES.items()}
        self.received = m.received.labels(*labels)
        self.sent = m.sent.labels(*labels)
        self.seconds = m.seconds.labels(*labels)


class GrpcServerMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "RPCs started on the server.", labels,
                               registry=registry)
        self.handled = Counter("grpc_server_handled", "RPCs completed on the server, regardless "
                               "of success or failure.", labels + ["grpc_code"], registry=registry)
        self.received = Counter("grpc_server_msg_received", "RPC stream messages received on "
                                "the server.", labels, registry=registry)
        self.sent = Counter("grpc_server_msg_sent", "gRPC stream messages sent on the server.",
                            labels, registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Response latency (seconds) of "
                                 "gRPC that had been application-level handled by the server.",
                                 labels, registry=registry)
        self._methods: dict[str, _MethodMetrics] = {}

    def preregister(self, service: str, methods: Iterable[MethodDescriptor]) -> None:
        """Create every (method, code) series at start, 0 included, as go-grpc-prometheus does."""
        for m in methods:
            kind = {(False, False): "unary", (True, False): "client_stream",
                    (False, True): "server_stream", (True, True): "bidi_stream"}[
                (m.client_streaming, m.server_streaming)]
            self._bind(f"/{service}/{m.name}", kind)

    def _bind(self, full_method: str, kind: str) -> _MethodMetrics:
        mm = self._methods.get(full_method)
        if mm is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            mm = self._methods[full_method] = _MethodMetrics(self, (kind, service, method))
        return mm

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        return _wrap(handler, self._bind(details.method, grpc_type(handler)))


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if code is not None:
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _wrap(h: grpc.RpcMethodHandler, mm: _MethodMetrics) -> grpc.RpcMethodHandler:
    behavior = behavior_of(h)

    async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for r in requests:
            mm.received.inc()
            yield r

    def begin(request: Any) -> tuple[Any, float]:
        mm.started.inc()
        if h.request_streaming:
            return counted(request), time.perf_counter()
        mm.received.inc()
        return request, time.perf_counter()

    def finish(context: grpc.aio.ServicerContext, start: float, error: BaseException | None) -> None:
        mm.handled[_code(context, error)].inc()
        mm.seconds.observe(time.perf_counter() - start)

    async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request, start = begin(request)
        error = None
        try:
            response = await behavior(request, context)
            mm.sent.inc()
            return response
        except BaseException as e:
            error = e
            raise
        finally:
            finish(context, start, error)

    async def streaming_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        request, start = begin(request)
        error = None
        try:
            if inspect.isasyncgenfunction(behavior):
                async for response in behavior(request, context):
                    mm.sent.inc()
                    yield response
            else:  # a handler that writes with context.write(): its messages go uncounted
                await behavior(request, context)
        except BaseException as e:
            error = e
            raise
        finally:
            finish(context, start, error)

    return same_shape(h, streaming_response if h.response_streaming else unary_response)
