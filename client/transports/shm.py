"""Transport ``shm``: a CPU pool in a shared-memory file on this host (``kvferry.client.shm``),
mapped by senders to write granted rows and by receivers to copy a full window straight out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kvferry.client.transports import host_rows, same_host
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.client.aio import AsyncClient
    from kvferry.client.shm import ShmPool


class ShmTransport:
    name = "shm"
    one_sided = True
    maps_pool = True
    reads_windows = True

    def why_not(self, info: pb.PoolInfo) -> str | None:
        return same_host(self.name, info)

    async def connect(self, client: AsyncClient, info: pb.PoolInfo) -> ShmPool:
        from kvferry.client.shm import ShmPool

        return ShmPool.of(info)

    def source_rows(self, rows: Any, row_bytes: int) -> np.ndarray:
        return host_rows(rows, row_bytes)


SHM = ShmTransport()
