"""Rewrapping gRPC method handlers, for the aio interceptors (metrics, auth, faults)."""

from __future__ import annotations

from typing import Any, Callable

import grpc


def behavior_of(h: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return h.unary_unary or h.unary_stream or h.stream_unary or h.stream_stream


def same_shape(h: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler like ``h`` (streaming kinds, (de)serializers) running ``behavior`` instead: a
    coroutine function when ``h`` answers once, an async generator function when it streams."""
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(h.request_streaming, h.response_streaming)]
    return factory(behavior, request_deserializer=h.request_deserializer,
                   response_serializer=h.response_serializer)
