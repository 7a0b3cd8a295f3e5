"""Transport ``mooncake``: the server registered its pool with a Mooncake Transfer Engine; the
sender's own engine (``kvferry.client.mooncake``) writes granted rows into it over tcp or rdma,
from another host as well as this one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from kvferry.client.transports import host_rows, offered
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.client.aio import AsyncClient
    from kvferry.client.mooncake import MooncakeWriter


class MooncakeTransport:
    name = "mooncake"
    one_sided = True
    maps_pool = False
    reads_windows = False

    def why_not(self, info: pb.PoolInfo) -> str | None:
        return offered(self.name, info)

    async def connect(self, client: AsyncClient, info: pb.PoolInfo) -> MooncakeWriter:
        from kvferry.client.mooncake import MooncakeWriter

        return await asyncio.to_thread(MooncakeWriter, info)  # the engine's start blocks

    def source_rows(self, rows: Any, row_bytes: int) -> np.ndarray:
        return host_rows(rows, row_bytes)


MOONCAKE = MooncakeTransport()
