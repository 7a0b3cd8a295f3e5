"""A pool on one GPU.

Rows go through a few reused pinned host buffers (no per-message pinned allocation) and
non-blocking copies on one dedicated stream. A write is awaited until its copy has landed (an
event, polled without blocking the event loop), and only then counted delivered; meanwhile the
loop receives other messages. Read copies back through the same pinned buffers. One stream orders
every copy: a Read issued before a Resume reads the old rows even if the next window's write into
the same (reused) blocks is issued right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import torch

from kvferry.client.cuda_ipc import IPC_FIELDS, check_torch_layout
from kvferry.client.host import host_id
from kvferry.server.storage import Landing, PoolUnavailable
from kvferry.server.transports import CudaIpcOffer, ServerTransport
from kvferry.statemachine import Segment
from kvferry.v1 import transfer_pb2 as pb

STAGING_BUFFERS = 4


class CudaStorage:
    def __init__(self, num_blocks: int, block_tokens: int, row_bytes: int, device: str,
                 max_message_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.device = torch.device(device)
        nbytes = num_blocks * block_tokens * row_bytes
        _check_cuda(self.device, nbytes)
        try:
            self.tensor = torch.empty((num_blocks, block_tokens, row_bytes), dtype=torch.uint8,
                                      device=self.device)
        except (RuntimeError, MemoryError) as e:
            raise PoolUnavailable(f"cannot allocate a {nbytes / 2**30:.2f} GiB pool on {device}: "
                                  f"{e}") from e
        self._staging: asyncio.Queue[torch.Tensor] | None = None
        self._staging_rows = max(1, max_message_bytes // row_bytes, block_tokens)
        self._stream = torch.cuda.Stream(self.device)

    async def write(self, segments: Sequence[Segment], rows: bytes | memoryview, first_row: int,
                    landing: Landing) -> None:
        count = sum(s.tokens for s in segments)
        if count > self._staging_rows:  # a message never exceeds --max-message-bytes
            raise ValueError(f"{count} rows do not fit a staging buffer of {self._staging_rows}")
        src = np.frombuffer(rows, dtype=np.uint8, count=count * self.row_bytes,
                            offset=first_row * self.row_bytes).reshape(count, self.row_bytes)
        async with self._staged() as staging:
            staging.numpy()[:count] = src
            with torch.cuda.stream(self._stream):
                r = 0
                for s in segments:
                    self.tensor[s.block, s.offset:s.offset + s.tokens].copy_(
                        staging[r:r + s.tokens], non_blocking=True)
                    r += s.tokens
            try:
                await self._landed()  # delivered only once the copy has landed
            except asyncio.CancelledError:
                self._stream.synchronize()  # issued copies land regardless: wait, then say so
                landing.landed = True
                raise
            landing.landed = True

    @contextlib.asynccontextmanager
    async def views(self, segments: Sequence[Segment], check: Callable[[], None]
                    ) -> AsyncIterator[tuple[list[memoryview], int]]:
        count = sum(s.tokens for s in segments)
        if count > self._staging_rows:
            raise ValueError(f"{count} rows do not fit a staging buffer of {self._staging_rows}")
        async with self._staged() as staging:
            check()
            with torch.cuda.stream(self._stream):
                r = 0
                for s in segments:
                    staging[r:r + s.tokens].copy_(self.tensor[s.block, s.offset:s.offset + s.tokens],
                                                  non_blocking=True)
                    r += s.tokens
            await self._landed()
            yield [staging.numpy()[:count].data.cast("B")], count

    def offers(self) -> tuple[ServerTransport, ...]:
        return (CudaIpcOffer(),)

    def export(self) -> pb.ExportPoolResponse:
        return share_cuda_tensor(self.tensor)

    def region(self) -> tuple[int, int]:
        return self.tensor.data_ptr(), self.tensor.numel()

    def mark_window(self, blocks: list[int], epoch: int) -> None:
        """IPC readers ask the server (Poll) instead: nothing to record."""

    def close(self) -> None:
        """The tensor goes with the process; mappings other processes hold stay valid until then."""

    @contextlib.asynccontextmanager
    async def _staged(self) -> AsyncIterator[torch.Tensor]:
        if self._staging is None:  # made lazily: the queue belongs to the running loop
            self._staging = asyncio.Queue()
            for _ in range(STAGING_BUFFERS):
                self._staging.put_nowait(torch.empty((self._staging_rows, self.row_bytes),
                                                     dtype=torch.uint8, pin_memory=True))
        buf = await self._staging.get()
        try:
            yield buf
        finally:
            self._staging.put_nowait(buf)

    async def _landed(self) -> None:
        """Until every copy issued so far on the pool's stream has completed."""
        event = torch.cuda.Event()
        event.record(self._stream)
        spins = 0
        while not event.query():
            spins += 1
            await asyncio.sleep(0 if spins < 50 else 0.0002)


def share_cuda_tensor(tensor: torch.Tensor) -> pb.ExportPoolResponse:
    """The fields of ExportPoolResponse for a pool tensor [num_blocks, block_tokens, row_bytes]."""
    from torch.multiprocessing.reductions import reduce_tensor

    check_torch_layout()
    _, args = reduce_tensor(tensor)
    f = dict(zip(IPC_FIELDS, args, strict=False))
    num_blocks, block_tokens, row_bytes = tensor.shape
    return pb.ExportPoolResponse(
        host_id=host_id(), gpu_uuid=str(torch.cuda.get_device_properties(f["storage_device"]).uuid),
        device=str(tensor.device), ipc_handle=f["storage_handle"],
        storage_size_bytes=f["storage_size_bytes"], storage_offset_bytes=f["storage_offset_bytes"],
        ref_counter_handle=f["ref_counter_handle"], ref_counter_offset=f["ref_counter_offset"],
        event_handle=f["event_handle"] or b"", event_sync_required=bool(f["event_sync_required"]),
        num_blocks=num_blocks, block_tokens=block_tokens, row_bytes=row_bytes)



def _check_cuda(device: torch.device, nbytes: int) -> None:
    if not torch.cuda.is_available():
        raise PoolUnavailable(f"--device {device}: CUDA is not available to this process")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise PoolUnavailable(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              f"device(s) visible")
    free, _ = torch.cuda.mem_get_info(index)
    if nbytes > free:
        raise PoolUnavailable(f"--device {device}: the pool needs {nbytes / 2**30:.2f} GiB but "
                              f"only {free / 2**30:.2f} GiB is free on it")
