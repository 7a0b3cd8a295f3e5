"""Server reflection under ``grpc.reflection.v1`` too, beside ``v1alpha``.

grpcio-reflection serves only v1alpha, and clients that speak only v1 (recent grpcurl, grpc-js
tools) get UNIMPLEMENTED. The two versions' messages are the same fields with the same numbers, so
v1alpha's servicer answers v1 calls byte for byte: this registers it under the v1 name.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def add_servicer_to_server(servicer: Any, server: Any) -> None:
    """Like the generated ``add_ServerReflectionServicer_to_server``, for the v1 name."""
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
