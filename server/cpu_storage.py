"""A pool in host memory, in a shared-memory file (``shm_file``): Push copies rows in with numpy,
Read sends views of it, and same-host senders and receivers map it themselves (transport "shm")."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np

from kvferry.client.shm import ShmUnavailable
from kvferry.server import shm_file
from kvferry.server.storage import Landing, PoolUnavailable
from kvferry.server.transports import ServerTransport, ShmOffer
from kvferry.statemachine import Segment
from kvferry.v1 import transfer_pb2 as pb

log = logging.getLogger("kvferry")


class CpuStorage:
    def __init__(self, num_blocks: int, block_tokens: int, row_bytes: int, shm_dir: str) -> None:
        self.row_bytes = row_bytes
        for name in shm_file.sweep(shm_dir):
            log.warning("removed %s/%s, left by a kvferry server that was killed", shm_dir, name)
        try:
            self._pool = shm_file.create(shm_dir, num_blocks, block_tokens, row_bytes)
        except ShmUnavailable as e:
            raise PoolUnavailable(str(e)) from e
        self.rows = self._pool.rows
        self.shm_path = self._pool.path

    async def write(self, segments: Sequence[Segment], rows: bytes | memoryview, first_row: int,
                    landing: Landing) -> None:
        count = sum(s.tokens for s in segments)
        src = np.frombuffer(rows, dtype=np.uint8, count=count * self.row_bytes,
                            offset=first_row * self.row_bytes).reshape(count, self.row_bytes)
        r = 0
        for s in segments:
            self.rows[s.block, s.offset:s.offset + s.tokens] = src[r:r + s.tokens]
            r += s.tokens
        landing.landed = True

    @contextlib.asynccontextmanager
    async def views(self, segments: Sequence[Segment], check: Callable[[], None]
                    ) -> AsyncIterator[tuple[list[memoryview], int]]:
        check()
        yield ([self.rows[s.block, s.offset:s.offset + s.tokens].data.cast("B") for s in segments],
               sum(s.tokens for s in segments))

    def offers(self) -> tuple[ServerTransport, ...]:
        return (ShmOffer(self.shm_path),)

    def export(self) -> pb.ExportPoolResponse:
        raise PoolUnavailable("the pool is on the CPU: CUDA IPC needs a server started with "
                              "--device cuda:N; map the CPU pool through shared memory "
                              "(client.map_pool(), transport 'shm') or use Read")

    def region(self) -> tuple[int, int]:
        return self.rows.ctypes.data, self.rows.nbytes

    def mark_window(self, blocks: list[int], epoch: int) -> None:
        self._pool.epochs[blocks] = epoch

    def close(self) -> None:
        """Remove the pool file (mappings that senders still hold stay valid until they go)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.shm_path)
