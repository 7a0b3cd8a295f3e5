import pytest

from kvferry.statemachine import AllocatorError, BlockAllocator


def test_first_allocation_counts_up_from_zero() -> None:
    a = BlockAllocator(8)
    assert a.alloc(3) == [0, 1, 2]
    assert a.free_count == 5 and a.used_count == 3


def test_freed_blocks_come_straight_back_in_the_same_order() -> None:
    a = BlockAllocator(16)
    first = a.alloc(8)
    a.free(first)
    assert a.alloc(8) == first  # the reuse that broke the index-keyed guard


def test_lifo_after_interleaving() -> None:
    a = BlockAllocator(6)
    x, y = a.alloc(2), a.alloc(2)
    a.free(x)
    a.free(y)
    assert a.alloc(2) == y
    assert a.alloc(2) == x


def test_alloc_more_than_free_takes_nothing() -> None:
    a = BlockAllocator(4)
    a.alloc(3)
    assert a.alloc(2) is None
    assert a.free_count == 1
    assert a.alloc(0) == []


def test_double_free_and_foreign_blocks_are_refused_without_change() -> None:
    a = BlockAllocator(4)
    blocks = a.alloc(2)
    a.free(blocks)
    with pytest.raises(AllocatorError):
        a.free(blocks)
    with pytest.raises(AllocatorError):
        a.free([7])
    b = a.alloc(1)
    with pytest.raises(AllocatorError):
        a.free([b[0], 3])  # 3 is free: nothing of the call may take effect
    assert a.is_used(b[0])
    assert a.free_count == 3


def test_a_list_that_is_not_one_allocation_is_refused_without_change() -> None:
    a = BlockAllocator(8)
    x, y = a.alloc(2), a.alloc(2)
    for bad in ([x[0], y[0]], x[:1], [*x, *y], [x[1], x[0]]):
        with pytest.raises(AllocatorError, match="not one allocation"):
            a.free(bad)
    assert a.free_count == 4 and a.used_count == 4
    a.free(x)
    a.free(y)
    assert a.free_count == 8 and a.used_count == 0


def test_shrink_gives_back_the_tail_and_keeps_the_head() -> None:
    a = BlockAllocator(8)
    blocks = a.alloc(5)
    kept = a.shrink(blocks, 2)
    assert kept == blocks[:2] and a.free_count == 6 and a.used_count == 2
    assert not a.is_used(blocks[4]) and a.is_used(blocks[1])
    with pytest.raises(AllocatorError):
        a.free(blocks)  # the old, longer allocation is gone
    a.free(kept)
    assert a.free_count == 8


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        BlockAllocator(0)
    with pytest.raises(ValueError):
        BlockAllocator(2).alloc(-1)


def test_a_block_named_twice_is_refused_without_change() -> None:
    a = BlockAllocator(4)
    blocks = a.alloc(2)
    with pytest.raises(AllocatorError, match="twice"):
        a.free([blocks[0], blocks[0]])
    assert a.is_used(blocks[0]) and a.is_used(blocks[1]) and a.free_count == 2
    a.free(blocks)
    assert a.free_count == 4
