"""gRPC server metrics under go-grpc-prometheus's names, so existing dashboards work unchanged.

grpc.aio rejects sync interceptors (py-grpc-prometheus is sync); kvferry counts inside its own
per-method handler wrappers (``pipeline``), built once at start, instead of an aio interceptor that
would rebuild a handler on every call.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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


# Prometheus' default latency buckets, the ones go-grpc-prometheus uses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class MethodMetrics:
    """One method's counts as plain ints, bumped by the event loop's single thread with no lock
    (prometheus_client takes a lock per inc); the scrape thread only reads them."""

    __slots__ = ("buckets", "count", "handled", "labels", "received", "sent", "started", "total")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = self.received = self.sent = 0
        self.handled: dict[grpc.StatusCode, int] = dict.fromkeys(GO_CODES, 0)
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        self.handled[code] += 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds


class GrpcServerMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._methods: list[MethodMetrics] = []
        registry.register(self)

    def bind(self, service: str, method: str, h: grpc.RpcMethodHandler) -> MethodMetrics:
        """Every series of one method, created now (0 included), as go-grpc-prometheus does."""
        mm = MethodMetrics((grpc_type(h), service, method))
        self._methods.append(mm)
        return mm

    def collect(self) -> Iterator[Metric]:
        names = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily("grpc_server_started", "RPCs started on the server.",
                                      labels=names)
        handled = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, "
                                      "regardless of success or failure.",
                                      labels=[*names, "grpc_code"])
        received = CounterMetricFamily("grpc_server_msg_received", "RPC stream messages "
                                       "received on the server.", labels=names)
        sent = CounterMetricFamily("grpc_server_msg_sent", "gRPC stream messages sent on the "
                                   "server.", labels=names)
        seconds = HistogramMetricFamily("grpc_server_handling_seconds", "Response latency "
                                        "(seconds) of gRPC that had been application-level "
                                        "handled by the server.", labels=names)
        for mm in list(self._methods):
            labels = list(mm.labels)
            started.add_metric(labels, mm.started)
            received.add_metric(labels, mm.received)
            sent.add_metric(labels, mm.sent)
            for code, n in list(mm.handled.items()):
                handled.add_metric([*labels, GO_CODES[code]], n)
            cumulative, acc = [], 0
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), list(mm.buckets), strict=False):
                acc += n
                cumulative.append((bound, acc))
            seconds.add_metric(labels, cumulative, mm.total)
        yield from (started, handled, received, sent, seconds)


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ended with, as the handler left it."""
    code = context.code()
    if code is not None:
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
