"""A pool in host memory: rows are copied straight into a numpy view, and Read sends views of it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np

from kvferry.server.storage import Landing, PoolUnavailable
from kvferry.statemachine import Segment
from kvferry.v1 import transfer_pb2 as pb


class CpuStorage:
    def __init__(self, num_blocks: int, block_tokens: int, row_bytes: int) -> None:
        self.row_bytes = row_bytes
        nbytes = num_blocks * block_tokens * row_bytes
        try:
            self.rows = np.empty((num_blocks, block_tokens, row_bytes), dtype=np.uint8)
        except (MemoryError, ValueError) as e:
            raise PoolUnavailable(f"cannot allocate a {nbytes / 2**30:.2f} GiB pool in host "
                                  f"memory: {e}") from e

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
        yield ([_bytes_view(self.rows[s.block, s.offset:s.offset + s.tokens]) for s in segments],
               sum(s.tokens for s in segments))

    def export(self) -> pb.ExportPoolResponse:
        raise PoolUnavailable("the pool is on the CPU: CUDA IPC needs a server started with "
                              "--device cuda:N; read windows with Read instead")


def _bytes_view(a: np.ndarray) -> memoryview:
    return a.data.cast("B")
