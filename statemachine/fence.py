"""Quarantine: blocks a one-sided writer may still be writing into, after their transfer failed.

A one-sided writer (shared memory, CUDA IPC, a remote engine) cannot be stopped: once a window is
lent to it, a write can land at any time until the writer says it stopped. So the blocks of a
window that was lent, and not fully committed, when its transfer failed are *fenced*: kept out of
the free list, owned by no transfer, until the writer confirms it stopped (a commit that reaches
the grant's end, or a Detach) or the fence timeout passes. Only then can they be handed to
another transfer. A late write therefore lands in blocks nobody reads.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fence:
    epoch: int  # the lent window's epoch (unique across the server's life)
    transfer_id: str
    blocks: list[int]
    end_token: int  # where the lent range ends: a commit reaching it means the writer is done
    deadline: float


class Quarantine:
    """Fences by epoch, and their deadlines."""

    __slots__ = ("_deadlines", "_fences", "blocks")

    def __init__(self) -> None:
        self._fences: dict[int, Fence] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.blocks = 0  # blocks fenced now

    def add(self, fence: Fence) -> bool:
        """Fence; True when its deadline is now the earliest."""
        sooner = not self._deadlines or fence.deadline < self._deadlines[0][0]
        self._fences[fence.epoch] = fence
        heapq.heappush(self._deadlines, (fence.deadline, fence.epoch))
        self.blocks += len(fence.blocks)
        return sooner

    def get(self, epoch: int) -> Fence | None:
        return self._fences.get(epoch)

    def lift(self, epoch: int) -> Fence | None:
        """Take the fence of ``epoch`` away (its deadline entry goes lazily)."""
        fence = self._fences.pop(epoch, None)
        if fence is not None:
            self.blocks -= len(fence.blocks)
        return fence

    def due(self, now: float) -> list[Fence]:
        """Lift and return every fence whose deadline has passed."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, epoch = heapq.heappop(heap)
            fence = self.lift(epoch)
            if fence is not None:
                out.append(fence)
        return out

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][1] not in self._fences:  # lifted early
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __iter__(self) -> Iterator[Fence]:
        return iter(list(self._fences.values()))
