"""The storage behind the block indices: one uint8 tensor [num_blocks, block_tokens, row_bytes]."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from kvferry.statemachine import Segment


class PoolUnavailable(RuntimeError):
    """The pool cannot be created on the requested device; the message says why."""


class BlockPool:
    def __init__(self, num_blocks: int, block_tokens: int, row_bytes: int, device: str,
                 max_message_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.device = torch.device(device)
        nbytes = num_blocks * block_tokens * row_bytes
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise PoolUnavailable(f"--device {device}: CUDA is not available to this process")
            index = self.device.index or 0
            if index >= torch.cuda.device_count():
                raise PoolUnavailable(f"--device {device}: only {torch.cuda.device_count()} "
                                      f"CUDA device(s) visible")
            free, _ = torch.cuda.mem_get_info(index)
            if nbytes > free:
                raise PoolUnavailable(f"--device {device}: the pool needs {nbytes / 2**30:.2f} GiB "
                                      f"but only {free / 2**30:.2f} GiB is free")
        try:
            self.tensor = torch.empty((num_blocks, block_tokens, row_bytes), dtype=torch.uint8,
                                      device=self.device)
        except (RuntimeError, MemoryError) as e:
            raise PoolUnavailable(f"cannot allocate a {nbytes / 2**30:.2f} GiB pool on {device}: {e}") from e
        if self.device.type == "cpu":
            self._host = self.tensor.numpy()
            self._staging = None
        else:
            # Rows go through one reused pinned buffer: no per-message pinned allocation.
            staging_rows = max(1, max_message_bytes // row_bytes)
            self._staging = torch.empty((staging_rows, row_bytes), dtype=torch.uint8, pin_memory=True)
            self._host = None
            self._stream = torch.cuda.Stream(self.device)

    def write(self, segments: Sequence[Segment], rows: bytes | memoryview, first_row: int) -> None:
        """Copy rows ``first_row ...`` of ``rows`` into ``segments``, in order."""
        count = sum(s.tokens for s in segments)
        src = np.frombuffer(rows, dtype=np.uint8, count=count * self.row_bytes,
                            offset=first_row * self.row_bytes).reshape(count, self.row_bytes)
        if self._host is not None:
            r = 0
            for s in segments:
                self._host[s.block, s.offset:s.offset + s.tokens] = src[r:r + s.tokens]
                r += s.tokens
            return
        staged = self._staging.numpy()
        with torch.cuda.stream(self._stream):
            r = 0
            for s in segments:
                # Stage at most one staging buffer's worth at a time (a message never exceeds it).
                staged[r:r + s.tokens] = src[r:r + s.tokens]
                self.tensor[s.block, s.offset:s.offset + s.tokens].copy_(
                    self._staging[r:r + s.tokens], non_blocking=True)
                r += s.tokens
        self._stream.synchronize()  # delivered only once the copy has landed

    def views(self, segments: Sequence[Segment]) -> tuple[list[memoryview], int]:
        """The rows of ``segments`` as host buffers to send (views into a CPU pool: no copy), and
        how many rows they hold."""
        count = sum(s.tokens for s in segments)
        if self._host is not None:
            return [memoryview(self._host[s.block, s.offset:s.offset + s.tokens]).cast("B")
                    for s in segments], count
        return [memoryview(self.tensor[s.block, s.offset:s.offset + s.tokens].cpu().numpy()).cast("B")
                for s in segments], count
