"""What every RPC goes through around its handler: metrics, auth, injected faults, decoding, and
the translation of core refusals (``TransferError``) into the gRPC status of the same name.

grpc.aio interceptors build a new handler on every call; kvferry instead wraps each method's
handler once, at start, in one layer that does all four. Undecodable requests (garbage bytes, bad
UTF-8) get INVALID_ARGUMENT with the reason, not grpc's bare UNKNOWN.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from kvferry.server.auth import EXEMPT_SERVICES, BearerTokens
from kvferry.server.faults import FaultPlan
from kvferry.server.grpc_metrics import GrpcServerMetrics, final_code
from kvferry.server.status_details import abort
from kvferry.statemachine import Reason, TransferError

_CODES = {c.name: c for c in grpc.StatusCode}


class CapturingServer:
    """Passed to generated ``add_*Servicer_to_server`` functions to collect their handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = handlers


@dataclass
class Pipeline:
    metrics: GrpcServerMetrics
    auth: BearerTokens | None = None
    faults: FaultPlan | None = None
    # Every wrapped handler by its full method name ("/pkg.Service/Method"): the same-host
    # listener (``local_calls``) runs the very same ones.
    handlers: dict[str, grpc.RpcMethodHandler] = field(default_factory=dict)

    def install(self, server: grpc.aio.Server, add_servicer: Callable[[Any, Any], None],
                servicer: Any, decoders: dict[str, Callable[[bytes], Any]] | None = None,
                raw_responses: frozenset[str] = frozenset()) -> None:
        """Register ``servicer`` on ``server`` with every method wrapped. ``decoders`` replace
        the generated request parsers of some methods; ``raw_responses`` methods return bytes."""
        captured = CapturingServer()
        add_servicer(servicer, captured)
        for service, handlers in captured.services.items():
            wrapped = {name: self._wrap(service, name, h, (decoders or {}).get(name),
                                        name in raw_responses)
                       for name, h in handlers.items()}
            self.handlers.update({f"/{service}/{name}": h for name, h in wrapped.items()})
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
            server.add_registered_method_handlers(service, wrapped)

    def _wrap(self, service: str, method: str, h: grpc.RpcMethodHandler,
              decoder: Callable[[bytes], Any] | None, raw_response: bool) -> grpc.RpcMethodHandler:
        mm = self.metrics.bind(service, method, h)
        behavior = h.unary_unary or h.unary_stream or h.stream_unary or h.stream_stream
        decode = decoder or h.request_deserializer
        auth = self.auth if service not in EXEMPT_SERVICES else None
        faults = self.faults if self.faults and self.faults.covers(method) else None
        full = f"/{service}/{method}"
        writes = h.response_streaming and not inspect.isasyncgenfunction(behavior)
        checked = auth is not None or faults is not None

        async def admit(context: grpc.aio.ServicerContext) -> None:
            refusal = None if auth is None else auth.refusal(method, context.invocation_metadata())
            if refusal is not None:
                await abort(context, *refusal)
            if faults is not None:
                await faults.apply(method, context)

        async def refuse_bytes(context: grpc.aio.ServicerContext, e: Exception) -> None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"{full}: the request is not a valid message: {e}", Reason.BAD_REQUEST)

        async def parse(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return decode(raw)
            except Exception as e:  # protobuf's DecodeError, or anything a parser raises
                await refuse_bytes(context, e)

        async def parsed_stream(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for raw in raws:
                mm.received += 1
                yield await parse(raw, context)

        async def request_of(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            if h.request_streaming:
                return parsed_stream(raw, context)
            mm.received += 1
            return await parse(raw, context)

        async def refuse(context: grpc.aio.ServicerContext, e: TransferError, request: Any) -> None:
            # The refusal names its transfer; else the call's own (a stream of requests has
            # none here: its handler names it).
            tid = e.transfer_id or getattr(request, "transfer_id", "")
            await abort(context, _CODES[e.code], e.message, e.reason, tid, e.failure_reason)

        def finish(context: grpc.aio.ServicerContext, start: float, error: BaseException | None) -> None:
            mm.finished(final_code(context, error), time.perf_counter() - start)

        async def unary_response(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            mm.started += 1
            start, error = time.perf_counter(), None
            try:
                if checked:
                    await admit(context)
                if h.request_streaming:
                    request = parsed_stream(raw, context)
                else:
                    mm.received += 1
                    try:
                        request = decode(raw)
                    except Exception as e:
                        await refuse_bytes(context, e)
                try:
                    response = await behavior(request, context)
                except TransferError as e:
                    await refuse(context, e, request)
                mm.sent += 1
                return response
            except BaseException as e:
                error = e
                raise
            finally:
                finish(context, start, error)

        async def streaming_response(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            mm.started += 1
            start, error = time.perf_counter(), None
            try:
                if checked:
                    await admit(context)
                request = await request_of(raw, context)
                try:
                    if writes:  # a handler answering with context.write(): messages go uncounted
                        await behavior(request, context)
                        return
                    async for response in behavior(request, context):
                        mm.sent += 1
                        yield response
                except TransferError as e:
                    await refuse(context, e, request)
            except BaseException as e:
                error = e
                raise
            finally:
                finish(context, start, error)

        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(h.request_streaming, h.response_streaming)]
        return factory(streaming_response if h.response_streaming else unary_response,
                       request_deserializer=None,  # bytes in: ``parse`` decodes, with a clear error
                       response_serializer=None if raw_response else h.response_serializer)
