"""Where a pool's rows live, behind one small protocol: the service copies rows in and out through
``BlockStorage`` and never asks which kind it holds.

Kinds: ``CpuStorage`` (host memory in a shared-memory file, ``cpu_storage.py``) and
``CudaStorage`` (one GPU, ``cuda_storage.py``); ``pools.open_storage`` picks one for ``--device``.
Every kind holds one uint8 array [num_blocks, block_tokens, row_bytes], and offers the server
halves of the same-host transports that can reach it (``kvferry.server.transports``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from kvferry.statemachine import Segment
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.server.transports import ServerTransport


class Landing:
    """Whether a write's rows are in the pool (set by ``BlockStorage.write``)."""

    __slots__ = ("landed",)

    def __init__(self) -> None:
        self.landed = False


class PoolUnavailable(RuntimeError):
    """The pool cannot be created, or cannot do what was asked; the message says why."""


class BlockStorage(Protocol):
    row_bytes: int

    def offers(self) -> tuple[ServerTransport, ...]:
        """The same-host transports that reach this kind of pool (a CPU pool's "shm")."""

    async def write(self, segments: Sequence[Segment], rows: bytes | memoryview, first_row: int,
                    landing: Landing) -> None:
        """Copy rows ``first_row ...`` of ``rows`` into ``segments``, in order; return once they
        are in the pool. ``landing.landed`` tells, even if this is cancelled, whether they are."""

    def views(self, segments: Sequence[Segment], check: Callable[[], None]
              ) -> AbstractAsyncContextManager[tuple[list[memoryview], int]]:
        """The rows of ``segments`` as host buffers valid inside the ``async with``, and their
        count. ``check`` runs right before the rows are taken (it raises if they are no longer
        the caller's)."""

    def export(self) -> pb.ExportPoolResponse:
        """What a same-host client needs to map the pool through CUDA IPC, or
        ``PoolUnavailable`` saying why this kind cannot be mapped so."""

    def region(self) -> tuple[int, int]:
        """The pool's memory, (address, bytes), for a transfer engine to register."""

    def mark_window(self, blocks: list[int], epoch: int) -> None:
        """Record for mapped readers that ``blocks`` belong to the window of ``epoch`` (0: none)."""

    def close(self) -> None:
        """Give the pool's memory back (a shared-memory file is removed)."""
