"""Rewrapping gRPC method handlers, for the aio interceptors (metrics, auth, faults)."""

from __future__ import annotations

from typing import Any, Callable

import grpc


def behavior_of(h: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return h.unary_unary or h.unary_stream or h.stream_unary or h.stream_stream


def same_shape(h: grpc.RpcMethodHandler, behavior: Callable[..., Any], *,
               raw_requests: bool = False) -> grpc.RpcMethodHandler:
    """A handler like ``h`` (streaming kinds, (de)serializers) running ``behavior`` instead: a
    coroutine function when ``h`` answers once, an async generator function when it streams.
    ``raw_requests``: hand ``behavior`` the request bytes, undecoded."""
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(h.request_streaming, h.response_streaming)]
    return factory(behavior, request_deserializer=None if raw_requests else h.request_deserializer,
                   response_serializer=h.response_serializer)


class DecodeErrorsAreInvalidArgument(grpc.aio.ServerInterceptor):
    """Undecodable requests (garbage bytes, bad UTF-8 in a string) get INVALID_ARGUMENT with the
    reason, instead of grpc's bare UNKNOWN: the handler receives bytes and decodes them here."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        h = await continuation(details)
        if h is None or h.request_deserializer is None:
            return h
        decode, behavior, method = h.request_deserializer, behavior_of(h), details.method

        async def refuse(context: grpc.aio.ServicerContext, e: Exception) -> None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{method}: the request is not a valid message: {e}")

        async def decoded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for raw in requests:
                try:
                    message = decode(raw)
                except Exception as e:  # protobuf's DecodeError, or anything a parser raises
                    await refuse(context, e)
                yield message

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if h.request_streaming:
                return await behavior(decoded(request, context), context)
            try:
                message = decode(request)
            except Exception as e:
                await refuse(context, e)
            return await behavior(message, context)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if h.request_streaming:
                message = decoded(request, context)
            else:
                try:
                    message = decode(request)
                except Exception as e:
                    await refuse(context, e)
            async for item in behavior(message, context):
                yield item

        return same_shape(h, streaming if h.response_streaming else unary, raw_requests=True)
