"""The control path, in units of one bare gRPC round trip (RTT: a ``grpc.aio`` unary echo to
``bench/echo_server.py`` on this machine, measured in the same run): what a small transfer costs
a receiver whose sender is already waiting, and what each window of a long transfer of small
windows costs. The bytes are negligible here (16 KiB windows): what is timed is the signalling
(attach, commit, window full, resume, next grant, release), however it travels (``control``:
gRPC, or the server's same-host socket). The sending and the receiving client run in one process,
on one event loop, beside the server's process: two processes on the two cores."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import grpc
import numpy as np

from bench.procs import echo_server, kvferry_server, run_loop
from bench.report import Figure, median
from kvferry.client import AsyncClient
from kvferry.v1 import transfer_pb2 as pb

ROW = 256
ROWS = 64  # 16 KiB: a small image's embedding, and one window of the long transfer


async def _rtt(target: str, calls: int) -> float:
    """Median seconds of one unary echo, one call at a time."""
    request = pb.PollRequest(transfer_id="rtt").SerializeToString()
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary("/echo.Echo/Unary")
        await call(request)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await call(request)
            times.append(time.perf_counter() - t0)
    return median(times)


def _waiting(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("kvferry_senders_waiting "):
            return float(line.split()[-1])
    return 0.0


async def _small(target: str, metrics: Callable[[], str], tid: str, data: np.ndarray,
                 control: str) -> tuple[float, float]:
    """(seconds to the first rows, seconds until receive() is done), from the receiver's first
    call, its sender already waiting."""
    async with AsyncClient(target, control=control) as rx, \
            AsyncClient(target, control=control) as tx:
        await rx.pool_info()
        await tx.pool_info()
        before = _waiting(metrics())
        send = asyncio.create_task(tx.send(tid, data))
        while _waiting(metrics()) <= before:
            await asyncio.sleep(0.001)
        t0 = time.perf_counter()
        first = 0.0
        async for _ in rx.receive(tid, ROWS, views=True):
            first = first or time.perf_counter() - t0
        done = time.perf_counter() - t0
        await send
    return first, done


async def _windows(target: str, tid: str, data: np.ndarray, control: str) -> float:
    """Seconds per window of DATA sent in windows of ROWS rows, client library on both sides."""
    async with AsyncClient(target, control=control) as rx, \
            AsyncClient(target, control=control) as tx:
        await rx.pool_info()
        await tx.pool_info()
        t0 = time.perf_counter()
        send = asyncio.create_task(tx.send(tid, data))
        n = 0
        async for _ in rx.receive(tid, ROWS, views=True):
            n += 1
        await send
        return (time.perf_counter() - t0) / n


async def _poll(target: str, calls: int, control: str) -> float:
    """Median seconds of one Poll through the client library, one call at a time."""
    async with AsyncClient(target, control=control) as c:
        await c.pool_info()
        opened = await c.open(f"poll-{control}", ROWS)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await c.poll(f"poll-{control}")
            times.append(time.perf_counter() - t0)
        await c.abort(f"poll-{control}", "done", incarnation=opened.incarnation)
        await c.release(f"poll-{control}", incarnation=opened.incarnation)
    return median(times)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _idle(target: str, pid: int, metrics: Callable[[], str], senders: int, seconds: float,
                control: str) -> tuple[float, float]:
    """(% of a core the server uses, % the client uses) while SENDERS senders wait attached for
    receivers that never come."""
    async with AsyncClient(target, control=control) as tx:
        await tx.pool_info()
        rows = np.zeros((ROWS, ROW), dtype=np.uint8)
        before = _waiting(metrics())
        sends = [asyncio.create_task(tx.send(f"idle-{control}-{i}", rows)) for i in range(senders)]
        while _waiting(metrics()) < before + senders:  # every one attached, waiting
            await asyncio.sleep(0.01)
        server0, client0, t0 = _cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)  # the measurement window itself
        took = time.monotonic() - t0
        server = 100 * (_cpu_seconds(pid) - server0) / took
        client = 100 * (time.process_time() - client0) / took
        for s in sends:
            s.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
    return server, client


def control_path(rounds: int, windows: int, smalls: int, controls: tuple[str, ...]) -> list[Figure]:
    data = np.random.default_rng(2).integers(0, 256, (ROWS * windows, ROW), dtype=np.uint8)
    image = data[:ROWS]
    figures: list[Figure] = []
    with kvferry_server(num_blocks=16, block_tokens=ROWS // 2, row_bytes=ROW,
                        default_window_tokens=ROWS) as srv, echo_server(ROW, 1024) as echo:
        rtts: list[float] = []
        per: dict[str, dict[str, list[float]]] = {
            c: {"first": [], "done": [], "window": []} for c in controls}
        for r in range(rounds):
            rtts.append(run_loop(_rtt(echo, 200)))
            for c in controls:
                for i in range(smalls):
                    first, done = run_loop(_small(srv.target, srv.metrics_text, f"s-{c}-{r}-{i}",
                                                  image, c))
                    per[c]["first"].append(first)
                    per[c]["done"].append(done)
                per[c]["window"].append(run_loop(_windows(srv.target, f"w-{c}-{r}", data, c)))
            for c in controls:
                per[c].setdefault("poll", []).append(run_loop(_poll(srv.target, 200, c)))
        rtt = median(rtts)
        idle = {c: run_loop(_idle(srv.target, srv.proc.pid, srv.metrics_text, 100,
                                  2.0 if rounds == 1 else 5.0, c)) for c in controls}
    for c in controls:
        first, done, window = (median(per[c][k]) for k in ("first", "done", "window"))
        via = f"control {c}"
        figures += [
            Figure(f"small transfer ({ROWS} x {ROW} B), sender waiting: first rows, {via}", "RTT",
                   first / rtt, None, "<= 1.2 RTT", first / rtt <= 1.2,
                   f"{first * 1e3:.2f} ms; RTT (bare grpc.aio unary echo) {rtt * 1e3:.3f} ms"),
            Figure(f"small transfer, sender waiting: receive() done, {via}", "RTT", done / rtt,
                   None, "<= 1.5 RTT", done / rtt <= 1.5, f"{done * 1e3:.2f} ms"),
            Figure(f"per window, {windows} windows of {ROWS * ROW // 1024} KiB, {via}", "RTT",
                   window / rtt, None, "<= 0.15 RTT", window / rtt <= 0.15,
                   f"{window * 1e3:.3f} ms per window"),
            Figure(f"Poll through the client library, one at a time, {via}", "RTT",
                   median(per[c]["poll"]) / rtt, None, "report", True,
                   f"{median(per[c]['poll']) * 1e3:.3f} ms"),
            Figure(f"idle: the server with 100 senders attached and waiting, {via}", "% of a core",
                   idle[c][0], None, "< 2%", idle[c][0] < 2.0,
                   f"the sending client meanwhile: {idle[c][1]:.2f}% of a core"),
        ]
    return figures
