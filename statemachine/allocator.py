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
    """A stack of free block indices, and a record of every live allocation.

    ``free`` takes back exactly what one ``alloc`` handed out (``shrink`` gives back a tail of it):
    anything else (a block freed twice, one never allocated, a list that mixes two allocations)
    is refused and changes nothing, since it would hand one tenant's blocks to another. Checking
    a whole allocation is one dict lookup and one tuple comparison, in C, whatever its size; a
    per-block ownership set cost two set operations per window and held the allocator at 0.92x of
    SGLang's unchecked deque (``docs/performance.md``).
    """

    __slots__ = ("_free", "_live", "num_blocks", "used_count")

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        # The top of the stack is the end of the list; block 0 is handed out first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        # First block of each live allocation -> the whole allocation, as handed out.
        self._live: dict[int, tuple[int, ...]] = {}
        self.used_count = 0

    @property
    def free_count(self) -> int:
        return len(self._free)

    def alloc(self, count: int) -> list[int] | None:
        """``count`` blocks, or None (nothing taken) when fewer are free."""
        free = self._free
        if count > len(free) or count <= 0:
            if count < 0:
                raise ValueError(f"count must be >= 0, got {count}")
            return None if count else []
        taken = free[:-count - 1:-1]  # the top ``count``, top first: one slice, no reverse
        del free[-count:]
        self._live[taken[0]] = tuple(taken)
        self.used_count += count
        return taken

    def free(self, blocks: list[int]) -> None:
        """Give back one whole allocation. Pushed in reverse, so that ``alloc(len(blocks))``
        returns exactly ``blocks`` again."""
        if not blocks:
            return
        whole = tuple(blocks)
        if self._live.get(blocks[0]) != whole:
            raise AllocatorError(self._why_not_allocated(blocks))
        del self._live[blocks[0]]
        self.used_count -= len(whole)
        self._free.extend(reversed(whole))

    def shrink(self, blocks: list[int], keep: int) -> list[int]:
        """Give back all but the first ``keep`` blocks of the allocation ``blocks``; returns
        the kept ones (a new allocation of their own)."""
        if keep >= len(blocks):
            return blocks
        self.free(blocks)
        # The stack's top is now blocks[0], blocks[1], ...: take back the head.
        kept = self.alloc(keep) if keep else []
        assert kept is not None and kept == blocks[:keep]
        return kept

    def is_used(self, block: int) -> bool:
        """Whether ``block`` is allocated (a scan: for tests and diagnostics)."""
        return any(block in whole for whole in self._live.values())

    def _why_not_allocated(self, blocks: list[int]) -> str:
        if len(set(blocks)) != len(blocks):
            return f"blocks {blocks} name a block twice"
        unowned = sorted(b for b in blocks if not self.is_used(b))
        if unowned:
            return f"blocks {unowned} are not allocated"
        return (f"blocks {blocks} are not one allocation: give back exactly the blocks one "
                f"alloc handed out")
