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
        # Set operations run in C: ownership checks cost little more than the slicing itself.
        self._used: set[int] = set()

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)

    def alloc(self, count: int) -> list[int] | None:
        """``count`` blocks, or None (nothing taken) when fewer are free."""
        free = self._free
        if count > len(free) or count <= 0:
            if count < 0:
                raise ValueError(f"count must be >= 0, got {count}")
            return None if count else []
        taken = free[-count:]
        del free[-count:]
        taken.reverse()
        self._used.update(taken)
        return taken

    def free(self, blocks: list[int]) -> None:
        used = self._used
        before = len(used)
        used.difference_update(blocks)
        if before - len(used) != len(blocks):  # a block not allocated, or named twice
            self._undo_bad_free(blocks)
        # Reversed, so that alloc(len(blocks)) returns exactly ``blocks`` again.
        self._free += blocks[::-1]

    def _undo_bad_free(self, blocks: list[int]) -> None:
        """Put back what the failed free removed (the allocated ones), then refuse it all."""
        free = set(self._free)
        named = set(blocks)
        self._used.update(b for b in named if 0 <= b < self.num_blocks and b not in free)
        bad = sorted(b for b in named if not 0 <= b < self.num_blocks or b in free)
        if bad:
            raise AllocatorError(f"blocks {bad} are not allocated")
        raise AllocatorError(f"blocks {blocks} name a block twice")

    def is_used(self, block: int) -> bool:
        return block in self._used
