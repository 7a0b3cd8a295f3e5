"""The one-sided data plane on this machine's CPU: a transfer through a shared-memory pool against
two plain numpy copies of the same bytes (what it must cost at least) and against the same transfer
through gRPC (Push + Read), and the window turnaround the client library gives a sender."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import numpy as np

from bench.procs import kvferry_server, run_loop
from bench.report import Figure, median, ratio_target
from kvferry.client import AsyncClient
from kvferry.client.shm import ShmPool
from kvferry.client.transports import TRANSPORTS
from kvferry.client.transports.shm import ShmTransport
from kvferry.v1 import transfer_pb2 as pb

ROW = 8192


async def _transfer(target: str, tid: str, data: np.ndarray, window: int, transport: str,
                    read_with: str = "shm", sender_control: str = "auto",
                    receiver_control: str = "auto") -> float:
    """Seconds from the first call until the receiver has copied the last window into its own
    buffer (preallocated, as an encoder cache is). The sender uses ``transport``; the receiver,
    on the server's host, reads windows with ``read_with``: from a view of the shared-memory pool,
    or with Read when the whole transfer is to go through gRPC. ``sender_control``,
    ``receiver_control``: how each side's calls travel (``auto``: the server's same-host socket)."""
    dst = np.zeros_like(data)
    dst[:] = 1  # touched before the clock starts, as the baseline's is
    async with AsyncClient(target, control=receiver_control) as rx, \
            AsyncClient(target, control=sender_control) as tx:
        await rx.pool_info()
        await tx.pool_info()
        t0 = time.perf_counter()
        send = asyncio.create_task(tx.send(tid, data, transport=transport))
        async for w in rx.receive(tid, window, transport=read_with, views=True):
            dst[w.start_token:w.start_token + w.num_tokens] = w.rows()
        await send
        elapsed = time.perf_counter() - t0
    assert np.array_equal(dst, data)
    return elapsed


def _two_copies(data: np.ndarray, window: int) -> float:
    """The floor: per window, the sender's copy into a pool-sized buffer and the receiver's copy
    out into its own buffer."""
    pool = np.empty((window, data.shape[1]), dtype=np.uint8)
    dst = np.empty_like(data)
    pool[:] = 0
    dst[:] = 0  # both buffers touched first, as the transfer's are by its warm-up
    t0 = time.perf_counter()
    for start in range(0, len(data), window):
        n = min(window, len(data) - start)
        pool[:n] = data[start:start + n]
        dst[start:start + n] = pool[:n]
    return time.perf_counter() - t0


def shm_transfer(rounds: int, total_mib: int, window_mib: int) -> list[Figure]:
    window = window_mib * 2**20 // ROW
    data = np.random.default_rng(0).integers(0, 256, (total_mib * 2**20 // ROW, ROW), dtype=np.uint8)
    blocks = window // 256
    ours, copies, grpc_ = [], [], []
    with kvferry_server(num_blocks=blocks, block_tokens=256, row_bytes=ROW,
                        default_window_tokens=window, max_message_bytes=16 * 2**20) as srv:
        asyncio.run(_transfer(srv.target, "warm", data[:window], window, "shm"))
        for i in range(rounds):
            copies.append(_two_copies(data, window))
            ours.append(asyncio.run(_transfer(srv.target, f"shm-{i}", data, window, "shm")))
            grpc_.append(asyncio.run(_transfer(srv.target, f"grpc-{i}", data, window, "grpc",
                                               "grpc", "grpc", "grpc")))
    gbps = lambda s: data.nbytes / s / 1e9  # noqa: E731
    return [
        ratio_target(f"shm transfer {total_mib} MiB in {window_mib} MiB windows vs two numpy copies",
                     "GB/s", gbps(median(ours)), gbps(median(copies)), ">=", 0.5,
                     "control RPCs included: Attach, a Commit and a Resume per window, Watch"),
        ratio_target(f"shm transfer {total_mib} MiB in {window_mib} MiB windows vs gRPC Push + Read",
                     "GB/s", gbps(median(ours)), gbps(median(grpc_)), ">=", 3.0,
                     "the same transfer, rows through Python gRPC instead"),
    ]


class _TimedShm(ShmTransport):
    """Transport "shm" as the library has it, its writer noting when each grant's write starts
    and ends."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    async def connect(self, client: AsyncClient, info: pb.PoolInfo) -> Any:  # a _Timed
        return _Timed(await super().connect(client, info), self.marks)


class _Timed:
    """The mapped pool, noting when each grant's write starts and ends (the library calls it)."""

    def __init__(self, pool: ShmPool, marks: list[tuple[float, float]]) -> None:
        self.pool = pool
        self.marks = marks

    def write(self, grant: pb.Grant, rows: Any, first_token: int, end: int) -> None:
        t0 = time.perf_counter()
        self.pool.write(grant, rows, first_token, end)
        self.marks.append((t0, time.perf_counter()))

    def finish(self, rows: Any) -> None:
        self.pool.finish(rows)


def window_turnaround(windows: int) -> list[Figure]:
    """From the end of the write that fills window k to the start of the write into window k+1:
    the sender's Commit, the receiver seeing the window full (Watch), copying it out, resuming,
    and the next grant reaching the sender."""
    window = 64
    data = np.random.default_rng(1).integers(0, 256, (window * windows, ROW), dtype=np.uint8)
    with kvferry_server(num_blocks=8, block_tokens=64, row_bytes=ROW, default_window_tokens=window) as srv:

        async def main() -> list[float]:
            timed = _TimedShm()  # the library writes through it
            async with AsyncClient(srv.target) as rx, \
                    AsyncClient(srv.target, transports=TRANSPORTS.replaced(timed)) as tx:
                send = asyncio.create_task(tx.send("turn", data, transport="shm"))
                async for _ in rx.receive("turn", window, transport="shm", views=True):
                    pass
                await send
                return [b[0] - a[1] for a, b in zip(timed.marks, timed.marks[1:], strict=False)]

        gaps = run_loop(main())
        server_p50 = _histogram_p50(srv.metrics_text(), "kvferry_window_wait_seconds") * 1e3
    p50 = statistics.median(gaps) * 1e3
    p99 = sorted(gaps)[int(0.99 * (len(gaps) - 1))] * 1e3
    return [
        Figure("window turnaround at the server: full -> resumed, next grant sent, p50", "ms",
               server_p50, None, "<= 1 ms", server_p50 <= 1.0,
               "kvferry_window_wait_seconds interpolated as histogram_quantile does; the grant "
               "goes out in the same event-loop turn as the resume"),
        Figure("window turnaround at the sender: write done -> next write starts, p50", "ms", p50,
               None, "report", True, f"p99 {p99:.2f} ms over {len(gaps)} windows of 512 KiB; adds "
               "the filling Commit's trip to the server and the grant's trip back"),
    ]


def _histogram_p50(metrics: str, name: str) -> float:
    buckets = []
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    total = buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= total / 2:
            return lo_bound + (bound - lo_bound) * (total / 2 - lo_count) / max(count - lo_count, 1e-9)
        lo_bound, lo_count = bound, count
    return float("nan")


def mooncake_transfer(rounds: int, total_mib: int, window_mib: int) -> list[Figure]:
    """Transport "mooncake" over tcp on loopback: the same transfer as ``shm_transfer``, against
    the engine's own raw writes of the same bytes into the same registered pool (no kvferry
    control at all), and against gRPC Push + Read."""
    from kvferry.client.mooncake import MooncakeWriter

    window = window_mib * 2**20 // ROW
    data = np.random.default_rng(0).integers(0, 256, (total_mib * 2**20 // ROW, ROW), dtype=np.uint8)
    ours, raw, grpc_ = [], [], []
    with kvferry_server(num_blocks=window // 256, block_tokens=256, row_bytes=ROW,
                        default_window_tokens=window, max_message_bytes=16 * 2**20,
                        mooncake="tcp", mooncake_host="127.0.0.1") as srv:
        info = srv.pool_info()
        engine = MooncakeWriter(info)
        src, dst = data.ctypes.data, info.mooncake_base_address
        engine.engine.register_memory(src, data.nbytes)

        def raw_writes() -> float:
            t0 = time.perf_counter()
            for start in range(0, len(data), window):
                n = min(window, len(data) - start) * ROW
                if engine.engine.batch_transfer_sync_write(engine.session, [src + start * ROW], [dst],
                                                           [n]) != 0:
                    raise RuntimeError("raw engine write failed")
            return time.perf_counter() - t0

        raw_writes()  # warm: handshake, connections
        # The sender's calls over gRPC, as a sender on another host makes them (here on one host,
        # "auto" would take the server's same-host socket).
        run_loop(_transfer(srv.target, "mc-warm", data[:window], window, "mooncake",
                           sender_control="grpc"))
        for i in range(rounds):
            raw.append(raw_writes())
            ours.append(run_loop(_transfer(srv.target, f"mc-{i}", data, window, "mooncake",
                                           sender_control="grpc")))
            grpc_.append(run_loop(_transfer(srv.target, f"mc-grpc-{i}", data, window, "grpc",
                                            "grpc", "grpc", "grpc")))
    gbps = lambda s: data.nbytes / s / 1e9  # noqa: E731
    return [
        ratio_target(f"mooncake (tcp, loopback) {total_mib} MiB in {window_mib} MiB windows vs the "
                     f"engine's raw writes", "GB/s", gbps(median(ours)), gbps(median(raw)), ">=", 0.8,
                     "raw: one batch write per window into the same registered pool, no control; "
                     "ours adds Attach, a Commit, a Watch status and a Resume per window, and the "
                     "receiver's copy out"),
        ratio_target(f"mooncake (tcp, loopback) {total_mib} MiB vs gRPC Push + Read", "GB/s",
                     gbps(median(ours)), gbps(median(grpc_)), ">=", 1.0, "report"),
    ]
