"""Figures of the sans-IO core, in process: scale to 100k live transfers, and the allocator."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections import deque

from bench.report import Figure, median, ratio_target
from kvferry.statemachine import BlockAllocator, Coordinator, Limits, Outcome


def _coordinator(n: int) -> Coordinator:
    return Coordinator(Limits(num_blocks=n + 8, block_tokens=8, default_window_tokens=8,
                              bootstrap_timeout=1e9, stall_timeout=1e9, retention=1e9,
                              lease_timeout=1e9, max_transfers=n + 8))


def core_scale(sizes: tuple[int, ...]) -> list[Figure]:
    """Per transfer: Open + Abort + Release time, one trigger's time, and memory while live."""
    per_open_release: dict[int, float] = {}
    per_trigger: dict[int, float] = {}
    per_memory: dict[int, float] = {}
    for n in sizes:
        ids = [f"req-{i:08d}" for i in range(n)]
        gc.collect()
        c = _coordinator(n)  # memory first, on its own: tracemalloc slows every allocation
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for tid in ids:
            c.open(tid, 8, 0.0)
        per_memory[n] = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
        del c
        gc.collect()
        c = _coordinator(n)
        t0 = time.perf_counter()
        for tid in ids:
            c.open(tid, 8, 0.0)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        for tid in ids:
            c.attach(tid, 16, b"", 0.0)  # one lifecycle trigger each (BOOTSTRAPPING -> TRANSFERRING)
        per_trigger[n] = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for tid in ids:
            c.fail(c.transfers[tid], Outcome.ABORTED, "bench", 0.0)
            c.release(tid)
        t_close = time.perf_counter() - t0
        per_open_release[n] = (t_open + t_close) / n
        assert c.allocator.free_count == c.allocator.num_blocks
    lo, hi = sizes[0], sizes[-1]
    detail = lambda d, f: "; ".join(f"{k:,}: {f(v)}" for k, v in d.items())  # noqa: E731
    return [
        Figure(f"core Open+Abort+Release per transfer ({hi:,} live)", "us",
               per_open_release[hi] * 1e6, None, "<= 20 us", per_open_release[hi] * 1e6 <= 20,
               detail(per_open_release, lambda v: f"{v * 1e6:.1f} us")),
        Figure(f"core lifecycle trigger (attach) ({hi:,} live)", "us", per_trigger[hi] * 1e6, None,
               "report", True, detail(per_trigger, lambda v: f"{v * 1e6:.1f} us")),
        Figure(f"core memory per live transfer ({hi:,} live)", "KiB", per_memory[hi] / 1024, None,
               "<= 3 KiB", per_memory[hi] / 1024 <= 3, detail(per_memory, lambda v: f"{v:.0f} B")),
        Figure(f"core cost growth {lo:,} -> {hi:,} live (per-transfer time ratio)", "x",
               per_open_release[hi] / per_open_release[lo], None, "<= 1.5x (O(1))",
               per_open_release[hi] / per_open_release[lo] <= 1.5),
    ]


class DequeAllocator:
    """The reference: a free deque, popleft to allocate, append to free (as SGLang's does)."""

    def __init__(self, n: int) -> None:
        self.free_slots = deque(range(n))

    def alloc(self, k: int) -> list[int] | None:
        if k > len(self.free_slots):
            return None
        return [self.free_slots.popleft() for _ in range(k)]

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            self.free_slots.append(b)


def allocator(rounds: int, ops: int, k: int = 32, pool: int = 4096) -> list[Figure]:
    """alloc+free of k-block windows per second, with half the pool held by other windows."""
    def run(a: BlockAllocator | DequeAllocator) -> float:
        held = [a.alloc(k) for _ in range(pool // k // 2)]
        t0 = time.perf_counter()
        for i in range(ops):
            blocks = a.alloc(k)
            a.free(blocks)  # type: ignore[arg-type]
            if i % 7 == 0:  # churn the held set too
                a.free(held[i % len(held)])  # type: ignore[arg-type]
                held[i % len(held)] = a.alloc(k)
        return ops / (time.perf_counter() - t0)

    ours, base = [], []
    for _ in range(rounds):
        ours.append(run(BlockAllocator(pool)))
        base.append(run(DequeAllocator(pool)))
    return [ratio_target(f"allocator alloc+free of {k}-block windows", "ops/s",
                         median(ours), median(base), ">=", 1.0,
                         "ours also checks ownership (no double free) and returns freed blocks first")]
