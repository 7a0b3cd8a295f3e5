"""Figures measured over gRPC on loopback: control plane, resume path, data plane, cost growth.

The client sends pre-serialized bytes and does not decode replies, for kvferry and the baseline
alike, so the ratios compare the servers."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np

from bench.procs import echo_server, kvferry_server
from bench.report import Figure, median, p, ratio_target
from kvferry.client.contract import MESSAGE_BUDGET
from kvferry.v1 import transfer_pb2 as pb

SVC = "/kvferry.v1.TransferService/"
OPTS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024)]
CHUNK = MESSAGE_BUDGET


async def closed_loop(call: Callable[[], Awaitable[object]], seconds: float,
                      inflight: int) -> tuple[float, list[float]]:
    """``inflight`` workers calling back to back for ``seconds``: (calls/s, latencies)."""
    lat: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while (t0 := time.perf_counter()) < end:
            await call()
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(inflight)])
    return len(lat) / (time.perf_counter() - t0), lat


def push_messages(tid: str, payload: bytes, row: int, total: int | None = None) -> list[bytes]:
    """Serialized PushRequests carrying ``payload`` in 4 MiB messages of whole rows."""
    step = (CHUNK // row) * row
    total = len(payload) // row if total is None else total
    return [pb.PushRequest(transfer_id=tid, total_tokens=total, start_token=o // row,
                           rows=payload[o:o + step]).SerializeToString()
            for o in range(0, len(payload), step)]


async def timed_push(target: str, tid: str, msgs: list[bytes]) -> float:
    """Open ``tid``, push ``msgs`` while a receiver resumes every full window at once (no Read),
    release it; the seconds the Push took."""
    async with grpc.aio.insecure_channel(target, options=OPTS) as ch:
        await ch.unary_unary(SVC + "Open")(pb.OpenRequest(transfer_id=tid).SerializeToString())
        watch = ch.unary_stream(SVC + "Watch", response_deserializer=pb.TransferStatus.FromString)
        resume = ch.unary_unary(SVC + "Resume")

        async def receiver() -> None:
            async for st in watch(pb.WatchRequest(transfer_id=tid).SerializeToString()):
                if st.state == pb.TRANSFER_STATE_SUCCESS:
                    return
                if (st.window_filled_tokens == st.window_tokens
                        and st.state == pb.TRANSFER_STATE_TRANSFERRING):
                    await resume(pb.ResumeRequest(transfer_id=tid,
                                                  sent_tokens=st.sent_tokens).SerializeToString())

        rx = asyncio.ensure_future(receiver())
        t0 = time.perf_counter()
        await ch.stream_unary(SVC + "Push")(iter(msgs))
        elapsed = time.perf_counter() - t0
        await rx
        await ch.unary_unary(SVC + "Release")(pb.ReleaseRequest(transfer_id=tid).SerializeToString())
    return elapsed


async def timed_sink(target: str, method: str, payload: bytes, row: int) -> float:
    """Stream ``payload`` in the same 4 MiB whole-row messages to a baseline sink; the seconds
    it took (after a one-row warm-up call)."""
    step = (CHUNK // row) * row
    chunks = [payload[o:o + step] for o in range(0, len(payload), step)]
    async with grpc.aio.insecure_channel(target, options=OPTS) as ch:
        sink = ch.stream_unary(method)
        await sink(iter([bytes(row)]))
        t0 = time.perf_counter()
        await sink(iter(chunks))
        return time.perf_counter() - t0


def control_plane(rounds: int, seconds: float, inflight: int = 64) -> list[Figure]:
    poll = pb.PollRequest(transfer_id="bench-poll").SerializeToString()
    ours: list[tuple[float, list[float]]] = []
    base: list[tuple[float, list[float]]] = []
    bare: list[tuple[float, list[float]]] = []
    with kvferry_server(num_blocks=64, block_tokens=8, row_bytes=64) as srv, \
            echo_server(64, 1024) as echo:
        async def run(target: str, method: str, request: bytes) -> tuple[float, list[float]]:
            async with grpc.aio.insecure_channel(target) as ch:
                call = ch.unary_unary(method)
                await call(request)  # warm the connection
                return await closed_loop(lambda: call(request), seconds, inflight)

        async def setup() -> None:
            async with grpc.aio.insecure_channel(srv.target) as ch:
                await ch.unary_unary(SVC + "Open")(pb.OpenRequest(transfer_id="bench-poll").SerializeToString())

        asyncio.run(setup())
        for _ in range(rounds):
            ours.append(asyncio.run(run(srv.target, SVC + "Poll", poll)))
            base.append(asyncio.run(run(echo, "/echo.Echo/Unary", poll)))
            bare.append(asyncio.run(run(echo, "/echo.Echo/RawUnary", poll)))
    rps = median([r for r, _ in ours]), median([r for r, _ in base])
    raw = median([r for r, _ in bare])
    p50 = median([p(lat, 0.5) for _, lat in ours]), median([p(lat, 0.5) for _, lat in base])
    p99 = median([p(lat, 0.99) for _, lat in ours]), median([p(lat, 0.99) for _, lat in base])
    return [
        ratio_target("poll throughput, 64 in flight", "rpc/s", *rps, ">=", 0.85,
                     f"baseline: protobuf echo servicer; vs raw-bytes gRPC (no codec, "
                     f"{raw:,.0f} rpc/s): {rps[0] / raw:.3f}x"),
        Figure("poll latency p50", "ms", p50[0] * 1e3, p50[1] * 1e3, "report", True),
        Figure("poll latency p99", "ms", p99[0] * 1e3, p99[1] * 1e3, "report", True),
    ]


def resume_path(rounds: int, windows: int, ranks: int = 3) -> list[Figure]:
    """Every window: 3 ranks resume at once (1 applied, 2 duplicates); p99 of those calls. The
    sender pushes the next window only after the resumes are answered, so the timed calls measure
    the resume path itself, not the server's concurrent row copying."""
    window, row = 8, 64
    ours: list[float] = []
    base: list[float] = []
    with kvferry_server(num_blocks=64, block_tokens=8, row_bytes=row) as srv, \
            echo_server(row, 1024) as echo:
        async def three(call: Callable[[], Awaitable[object]], lat: list[float]) -> None:
            async def timed() -> None:
                t0 = time.perf_counter()
                await call()
                lat.append(time.perf_counter() - t0)

            await asyncio.gather(*[timed() for _ in range(ranks)])

        async def run_ours(tag: int) -> list[float]:
            tid = f"bench-resume-{tag}"
            lat: list[float] = []
            total = window * windows
            async with grpc.aio.insecure_channel(srv.target) as ch:
                await ch.unary_unary(SVC + "Open")(
                    pb.OpenRequest(transfer_id=tid, window_tokens=window).SerializeToString())
                resume = ch.unary_unary(SVC + "Resume")
                push = ch.stream_unary(SVC + "Push")
                for start in range(0, total - window, window):
                    await push(iter([pb.PushRequest(transfer_id=tid, total_tokens=total, start_token=start,
                                                    rows=bytes(window * row)).SerializeToString()]))
                    req = pb.ResumeRequest(transfer_id=tid, sent_tokens=start + window).SerializeToString()
                    await three(functools.partial(resume, req), lat)
                await ch.unary_unary(SVC + "Abort")(pb.AbortRequest(transfer_id=tid).SerializeToString())
                await ch.unary_unary(SVC + "Release")(pb.ReleaseRequest(transfer_id=tid).SerializeToString())
            return lat

        async def run_base() -> list[float]:
            lat: list[float] = []
            req = pb.ResumeRequest(transfer_id="bench-resume-0", sent_tokens=8).SerializeToString()
            async with grpc.aio.insecure_channel(echo) as ch:
                call = ch.unary_unary("/echo.Echo/Unary")
                sink = ch.stream_unary("/echo.Echo/Sink")
                rows = bytes(window * row)
                for _ in range(windows - 1):
                    await sink(iter([rows]))  # the same request pattern: a short stream, then 3
                    await three(lambda: call(req), lat)
            return lat

        for i in range(rounds):
            ours.append(p(asyncio.run(run_ours(i)), 0.99))
            base.append(p(asyncio.run(run_base()), 0.99))
    return [ratio_target("resume p99 (3 ranks: 1 applied + 2 duplicates)", "ms",
                         median(ours) * 1e3, median(base) * 1e3, "<=", 1.3)]


def data_plane(rounds: int, window_tokens: int, windows: int, row: int = 8192,
               block_tokens: int = 256) -> list[Figure]:
    """Push GB/s into the CPU pool (receiver resumes at once) vs streaming the same bytes into a
    preallocated buffer; then Read GB/s of one full window vs streaming it back out."""
    total = window_tokens * windows
    nbytes = total * row
    payload = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    window_bytes = window_tokens * row
    push_ours, push_base, read_ours, read_base = [], [], [], []
    nblocks = 2 * window_tokens // block_tokens
    with kvferry_server(num_blocks=nblocks, block_tokens=block_tokens, row_bytes=row,
                        default_window_tokens=window_tokens) as srv, \
            echo_server(row, window_bytes) as echo:
        async def push_ours_once(tag: int) -> float:
            tid = f"bench-push-{tag}"
            return nbytes / await timed_push(srv.target, tid, push_messages(tid, payload, row)) / 1e9

        async def push_base_once() -> float:
            return nbytes / await timed_sink(echo, "/echo.Echo/Sink", payload, row) / 1e9

        async def read_ours_once() -> float:
            tid = "bench-read"
            async with grpc.aio.insecure_channel(srv.target, options=OPTS) as ch:
                read = ch.unary_stream(SVC + "Read")
                t0 = time.perf_counter()
                got = 0
                async for m in read(pb.ReadRequest(transfer_id=tid).SerializeToString()):
                    got += len(m)
                return got / (time.perf_counter() - t0) / 1e9

        async def read_base_once() -> float:
            async with grpc.aio.insecure_channel(echo, options=OPTS) as ch:
                source = ch.unary_stream("/echo.Echo/Source")
                t0 = time.perf_counter()
                got = 0
                async for m in source(window_bytes.to_bytes(8, "little")):
                    got += len(m)
                return got / (time.perf_counter() - t0) / 1e9

        async def setup_read() -> None:  # one finished transfer whose last window is full
            async with grpc.aio.insecure_channel(srv.target, options=OPTS) as ch:
                tid = "bench-read"
                await ch.unary_unary(SVC + "Open")(pb.OpenRequest(transfer_id=tid).SerializeToString())
                await ch.stream_unary(SVC + "Push")(iter(push_messages(tid, payload[:window_bytes], row)))

        for i in range(rounds):
            push_ours.append(asyncio.run(push_ours_once(i)))
            push_base.append(asyncio.run(push_base_once()))
        asyncio.run(setup_read())
        for _ in range(rounds):
            read_ours.append(asyncio.run(read_ours_once()))
            read_base.append(asyncio.run(read_base_once()))
    mib = nbytes / 2**20
    return [
        ratio_target(f"Push into CPU pool ({mib:.0f} MiB, {windows} windows)", "GB/s",
                     median(push_ours), median(push_base), ">=", 0.85),
        ratio_target(f"Read a window ({window_bytes / 2**20:.0f} MiB)", "GB/s",
                     median(read_ours), median(read_base), ">=", 0.85),
    ]


def cost_growth(window_tokens: int, window_counts: tuple[int, ...], live_counts: tuple[int, ...],
                row: int = 8192, block_tokens: int = 64) -> list[Figure]:
    """Push time per window for 1, 10, 100 windows (flat = linear), and server RSS per live
    transfer at 10, 100, 1000 held."""
    out: list[Figure] = []
    per_window: dict[int, float] = {}
    nblocks = 2 * window_tokens // block_tokens + max(live_counts)
    with kvferry_server(num_blocks=nblocks, block_tokens=block_tokens, row_bytes=row,
                        default_window_tokens=window_tokens, max_transfers=max(live_counts) + 10) as srv:
        async def one(n: int) -> float:
            tid = f"bench-grow-{n}"
            msgs = push_messages(tid, bytes(n * window_tokens * row), row)
            return await timed_push(srv.target, tid, msgs) / n

        for n in window_counts:
            per_window[n] = median([asyncio.run(one(n)) for _ in range(3)])
        first, last = window_counts[0], window_counts[-1]
        growth = per_window[last] / per_window[first]
        out.append(Figure(f"Push time per window, {last} vs {first} windows", "ms/window",
                          per_window[last] * 1e3, per_window[first] * 1e3, "<= 1.5x (linear)",
                          growth <= 1.5, "; ".join(f"{n}: {v * 1e3:.2f} ms/window" for n, v in per_window.items())))

        async def hold(n: int, start: int) -> None:
            async with grpc.aio.insecure_channel(srv.target) as ch:
                call = ch.unary_unary(SVC + "Open")
                await asyncio.gather(*[
                    call(pb.OpenRequest(transfer_id=f"live-{i}", window_tokens=1).SerializeToString())
                    for i in range(start, n)])

        rss: dict[int, int] = {}
        base_rss = srv.rss_bytes()
        held = 0
        for n in live_counts:
            asyncio.run(hold(n, held))
            held = n
            rss[n] = srv.rss_bytes()
        lo, hi = live_counts[0], live_counts[-1]
        per = (rss[hi] - rss[lo]) / (hi - lo)
        out.append(Figure(f"server RSS per live transfer ({lo} to {hi} held)", "KiB",
                          per / 1024, None, "report", True,
                          f"RSS idle {base_rss / 2**20:.0f} MiB; " +
                          "; ".join(f"{n}: {v / 2**20:.1f} MiB" for n, v in rss.items())))
    return out
