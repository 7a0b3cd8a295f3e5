"""The storage behind the block indices: one uint8 tensor [num_blocks, block_tokens, row_bytes].

CPU pool: rows are copied straight into the tensor's numpy view, and Read sends views of it.

CUDA pool: rows go through a few reused pinned host buffers (no per-message pinned allocation)
and non-blocking copies on one dedicated stream. A write is awaited until its copy has landed
(an event, polled without blocking the event loop), and only then counted delivered; meanwhile
the loop receives other messages. Read copies back through the same pinned buffers. One stream
orders every copy: a Read issued before a Resume reads the old rows even if the next window's
write into the same (reused) blocks is issued right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import AsyncIterator, Callable, Sequence

import numpy as np
import torch

from kvferry.statemachine import Segment

STAGING_BUFFERS = 4


class Landing:
    """Whether a write's rows are in the pool (set by ``BlockPool.write``)."""

    __slots__ = ("landed",)

    def __init__(self) -> None:
        self.landed = False


class PoolUnavailable(RuntimeError):
    """The pool cannot be created on the requested device; the message says why."""


class BlockPool:
    def __init__(self, num_blocks: int, block_tokens: int, row_bytes: int, device: str,
                 max_message_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        self.device = torch.device(device)
        nbytes = num_blocks * block_tokens * row_bytes
        if self.device.type == "cuda":
            _check_cuda(self.device, nbytes)
        try:
            self.tensor = torch.empty((num_blocks, block_tokens, row_bytes), dtype=torch.uint8,
                                      device=self.device)
        except (RuntimeError, MemoryError) as e:
            raise PoolUnavailable(f"cannot allocate a {nbytes / 2**30:.2f} GiB pool on {device}: {e}") from e
        self._host = self.tensor.numpy() if self.device.type == "cpu" else None
        if self._host is None:
            rows = max(1, max_message_bytes // row_bytes, block_tokens)
            self._staging: asyncio.Queue[torch.Tensor] | None = None
            self._staging_rows = rows
            self._stream = torch.cuda.Stream(self.device)

    # -- rows in ---------------------------------------------------------------------------

    async def write(self, segments: Sequence[Segment], rows: bytes | memoryview, first_row: int,
                    landing: Landing) -> None:
        """Copy rows ``first_row ...`` of ``rows`` into ``segments``, in order; returns once
        they are in the pool. ``landing.landed`` tells, even if this is cancelled, whether they
        are."""
        count = sum(s.tokens for s in segments)
        src = np.frombuffer(rows, dtype=np.uint8, count=count * self.row_bytes,
                            offset=first_row * self.row_bytes).reshape(count, self.row_bytes)
        if self._host is not None:
            r = 0
            for s in segments:
                self._host[s.block, s.offset:s.offset + s.tokens] = src[r:r + s.tokens]
                r += s.tokens
            landing.landed = True
            return
        if count > self._staging_rows:  # a message never exceeds --max-message-bytes
            raise ValueError(f"{count} rows do not fit a staging buffer of {self._staging_rows}")
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

    # -- rows out --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def views(self, segments: Sequence[Segment], check: Callable[[], None]
                    ) -> AsyncIterator[tuple[list[memoryview], int]]:
        """The rows of ``segments`` as host buffers, valid inside the ``async with``: views into
        a CPU pool (no copy), or a pinned buffer the rows were copied back into. ``check`` runs
        right before the rows are taken (it raises if they are no longer the caller's)."""
        count = sum(s.tokens for s in segments)
        if self._host is not None:
            check()
            yield [memoryview(self._host[s.block, s.offset:s.offset + s.tokens]).cast("B")
                   for s in segments], count
            return
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
            yield [memoryview(staging.numpy()[:count]).cast("B")], count

    # -- CUDA plumbing ---------------------------------------------------------------------

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

    def export(self) -> dict[str, object]:
        """The CUDA IPC description of the pool tensor (see ExportPoolResponse)."""
        if self._host is not None:
            raise PoolUnavailable("the pool is on the CPU: CUDA IPC needs a server started with "
                                  "--device cuda:N; read windows with Read instead")
        from torch.multiprocessing.reductions import reduce_tensor

        _, args = reduce_tensor(self.tensor)
        (_, _, _, _, _, _, device, handle, size, offset, _, ref_handle, ref_offset, event_handle,
         event_sync) = args
        props = torch.cuda.get_device_properties(device)
        return {
            "host_id": host_id(), "gpu_uuid": str(props.uuid), "device": str(self.device),
            "ipc_handle": handle, "storage_size_bytes": size, "storage_offset_bytes": offset,
            "ref_counter_handle": ref_handle, "ref_counter_offset": ref_offset,
            "event_handle": event_handle or b"", "event_sync_required": bool(event_sync),
            "num_blocks": self.num_blocks, "block_tokens": self.block_tokens,
            "row_bytes": self.row_bytes,
        }


def host_id() -> str:
    """This host's kernel boot id: equal for processes that can share CUDA IPC handles."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return os.uname().nodename


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
