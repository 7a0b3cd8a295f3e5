"""Transport ``grpc``: rows travel in Push messages and windows are read with Read. Works from
anywhere the server can be reached; the client library does both itself (``kvferry.client.
sending``, ``kvferry.client.receiving``), so this transport's link is None."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.client.aio import AsyncClient


class GrpcTransport:
    name = "grpc"
    one_sided = False
    maps_pool = False
    reads_windows = True  # with Read: no link (None), the receiver calls Read itself

    def why_not(self, info: pb.PoolInfo) -> str | None:
        return None

    async def connect(self, client: AsyncClient, info: pb.PoolInfo) -> None:
        return None

    def source_rows(self, rows: Any, row_bytes: int) -> Any:
        return rows


GRPC = GrpcTransport()
