"""Block-index allocator: which pool blocks are free, and who may take them.

LIFO on purpose: blocks freed together come back together, in the same order, on the next
allocation of the same size. That makes "the next window has the same block indices as the last"
the common case, so any guard that compares indices fails in every test, not once a week in
production.
"""

from __future__ import annotations


class AllocatorError(Exception):
    """A block freed twice or never allocated: a bug in the caller, never a client's fault."""


class BlockAllocator:
    __slots__ = ("num_blocks", "_free", "_used")

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        # The top of the stack is the end of the list; block 0 is handed out first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._used = bytearray(num_blocks)

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return self.num_blocks - len(self._free)

    def alloc(self, count: int) -> list[int] | None:
        """``count`` blocks, or None (nothing taken) when fewer are free."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count > len(self._free):
            return None
        if count == 0:
            return []
        taken = self._free[-count:]
        del self._free[-count:]
        taken.reverse()
        used = self._used
        for b in taken:
            used[b] = 1
        return taken

    def free(self, blocks: list[int]) -> None:
        used = self._used
        for b in blocks:
            if not 0 <= b < self.num_blocks or not used[b]:
                raise AllocatorError(f"block {b} is not allocated")
        for b in blocks:
            used[b] = 0
        # Reversed, so that alloc(len(blocks)) returns exactly ``blocks`` again.
        self._free.extend(reversed(blocks))

    def is_used(self, block: int) -> bool:
        return bool(self._used[block])
