"""A CPU pool in shared memory, as same-host senders (to write granted rows) and receivers (to read a
full window without a copy through gRPC) map it. The server creates it (``kvferry.server.
shm_file``).

The pool is one file in a memory-backed directory (``/dev/shm`` by default): the rows, uint8
[num_blocks, block_tokens, row_bytes], then one uint64 per block, the epoch of the window that
holds it (0: none). The server sets a block's epoch before anyone else can be given the block,
so a reader that copied a window and then finds its blocks still at the window's epoch read
nothing but that window's rows, with no round trip to ask. """

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from kvferry.client.contract import TransportUnavailable
from kvferry.client.grants import grant_runs, window_runs
from kvferry.client.host import host_id
from kvferry.v1 import transfer_pb2 as pb


class ShmUnavailable(TransportUnavailable):
    """The shared-memory pool cannot be used from here; the message says why."""


class ShmPool:
    """The pool file mapped into this process, as a numpy array [num_blocks, block_tokens, row_bytes]."""

    def __init__(self, path: str, num_blocks: int, block_tokens: int, row_bytes: int,
                 fd: int | None = None) -> None:
        self.path = path
        self.block_tokens = block_tokens
        self.row_bytes = row_bytes
        rows_size = num_blocks * block_tokens * row_bytes
        size = file_size(num_blocks, block_tokens, row_bytes)
        own = fd is None
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as e:
                raise ShmUnavailable(f"cannot open the shared-memory pool {path}: {e.strerror} "
                                     f"(same host, same user and a shared {Path(path).parent}?)") from e
        try:
            if os.fstat(fd).st_size < size:
                raise ShmUnavailable(f"{path} is {os.fstat(fd).st_size} bytes, not the pool's {size}")
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            if own:
                os.close(fd)
        self.rows: np.ndarray = np.frombuffer(self._mmap, dtype=np.uint8, count=rows_size).reshape(
            num_blocks, block_tokens, row_bytes)
        self.epochs: np.ndarray = np.frombuffer(self._mmap, dtype=np.uint64, count=num_blocks,
                                                offset=rows_size)

    @classmethod
    def of(cls, info: pb.PoolInfo) -> ShmPool:
        """Map the pool ``info`` describes, or ShmUnavailable saying why not."""
        if "shm" not in info.transports or not info.shm_path:
            raise ShmUnavailable(f"the server's pool is on {info.device} and not in shared "
                                 f"memory (it offers {list(info.transports)})")
        if info.host_id != host_id():
            raise ShmUnavailable(f"the server runs on another host (boot id {info.host_id}, this "
                                 f"one is {host_id()}): shared memory works on one host only")
        return cls(info.shm_path, info.num_blocks, info.block_tokens, info.row_bytes)

    @property
    def flat(self) -> np.ndarray:
        """The pool as [num_blocks * block_tokens, row_bytes]."""
        return self.rows.reshape(-1, self.row_bytes)

    def write(self, grant: pb.Grant, rows: np.ndarray, first_token: int, end: int) -> None:
        """Copy the granted tokens below ``end`` from ``rows`` (uint8 [n, row_bytes], holding
        tokens ``first_token ...``) into the pool; they have landed when this returns."""
        flat = self.flat
        for run in grant_runs(grant, end):
            src = run.token - first_token
            flat[run.row:run.row + run.tokens] = rows[src:src + run.tokens]

    def finish(self, rows: np.ndarray) -> None:
        """Nothing to undo after a send: the mapping stays for the next."""

    def window(self, status: pb.TransferStatus) -> list[np.ndarray]:
        """Views of the current window's filled rows, in token order (one per run of adjacent
        blocks). Valid until the Resume that frees the window: copy what you keep."""
        flat = self.flat
        return [flat[r.row:r.row + r.tokens] for r in window_runs(status, self.block_tokens)]

    def still_window(self, status: pb.TransferStatus) -> bool:
        """Whether every block of the window ``status`` describes still belongs to that window
        (check after copying it: then the copy holds that window's rows only)."""
        epochs = self.epochs
        return all(int(epochs[b]) == status.window_epoch for b in status.block_indices)

    def close(self) -> None:
        self.rows = np.empty((0, 0, 0), dtype=np.uint8)
        self.epochs = np.empty(0, dtype=np.uint64)
        try:
            self._mmap.close()
        except BufferError:  # a view someone still holds keeps the mapping; it goes with them
            pass


def file_size(num_blocks: int, block_tokens: int, row_bytes: int) -> int:
    return num_blocks * block_tokens * row_bytes + 8 * num_blocks
