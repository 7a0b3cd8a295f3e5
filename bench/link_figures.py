"""Figures over a slow link: a userspace proxy (kvferry.testing.fault_proxy) holds every chunk
10 ms each way in front of a real server, as two hosts apart would. Each figure is in round trips
(RTT: a GetPoolInfo through the same proxy, p50, measured in the same run), so it says how many
trips the protocol costs, whatever the link."""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np

from bench.procs import kvferry_server
from bench.report import Figure
from kvferry.client import AsyncClient
from kvferry.testing.fault_proxy import FaultProxy

ROW = 256


# Over the link, as a client on another host would be (on this host, "auto" would take the
# server's same-host socket, around the proxy).
CONTROL = "grpc"


async def _rtt(target: str, n: int) -> float:
    async with AsyncClient(target, control=CONTROL) as c:
        await c.pool_info()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await c.pool_info(refresh=True)
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


async def _transfer(target: str, tid: str, data: np.ndarray, window: int) -> tuple[float, float]:
    """(seconds until the receiver has its first rows, seconds until receive() is done), from the
    receiver's first call; the sender is already waiting (it started first)."""
    async with AsyncClient(target, control=CONTROL) as rx, \
            AsyncClient(target, control=CONTROL) as tx:
        await rx.pool_info()
        await tx.pool_info()
        send = asyncio.create_task(tx.send(tid, data, transport="grpc"))
        await asyncio.sleep(0)  # the sender goes first
        t0 = time.perf_counter()
        first = 0.0
        async for _ in rx.receive(tid, window, transport="grpc"):
            first = first or time.perf_counter() - t0
        done = time.perf_counter() - t0
        await send
    return first, done


def slow_link(delay_s: float, windows: int, rounds: int) -> list[Figure]:
    window = 16
    with kvferry_server(num_blocks=8, block_tokens=16, row_bytes=ROW,
                        default_window_tokens=window) as srv, FaultProxy(srv.grpc_port) as link:
        link.delay(delay_s)
        rtt = asyncio.run(_rtt(link.target, 20))
        many = np.zeros((window * windows, ROW), dtype=np.uint8)
        small = np.zeros((window, ROW), dtype=np.uint8)
        per_window, first_rows = [], []
        for i in range(rounds):
            _, done = asyncio.run(_transfer(link.target, f"link-many-{i}", many, window))
            per_window.append(done / windows)
            first, _ = asyncio.run(_transfer(link.target, f"link-small-{i}", small, window))
            first_rows.append(first)
    ms = f"{delay_s * 1e3:g} ms each way"
    return [
        Figure(f"RTT over the link ({ms}): GetPoolInfo p50", "ms", rtt * 1e3, None, "report", True,
               "the unit of the figures below"),
        Figure(f"per window, {windows} windows of {window} rows over the link", "RTT",
               statistics.median(per_window) / rtt, None, "<= 1.5 RTT (issue 22)",
               statistics.median(per_window) / rtt <= 1.5,
               "gRPC Push and Read; Watch -> Read -> Resume -> the sender's next rows"),
        Figure("small transfer over the link, sender waiting: first rows", "RTT",
               statistics.median(first_rows) / rtt, None, "<= 2 RTT (issue 22)",
               statistics.median(first_rows) / rtt <= 2.0, "Open, Watch, Read"),
    ]
