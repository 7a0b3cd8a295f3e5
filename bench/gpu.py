"""GPU figures, each beside its baseline in the same run (on the device machine):

    python -m bench.gpu [--json FILE] [--smoke]

1. Push into a cuda:0 pool vs raw gRPC streaming + pinned host-to-device copy of the same bytes.
2. IPC window read (map the pool, take the window, copy it out) vs a device-to-device copy of the
   same bytes; and the view alone (no copy).
3. kvferry's staged pinned H2D rate (4 MiB messages) vs the card's measured ceiling (one large
   pinned copy), and pageable H2D for reference.
Times: CUDA events around device work, host clocks around gRPC calls; warm-up first; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

from bench.grpc_figures import CHUNK, push_messages, timed_push, timed_sink
from bench.procs import echo_server, kvferry_server
from bench.report import Figure, print_report, ratio_target, run_plan, to_json
from kvferry.v1 import transfer_pb2 as pb


def events_ms(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_ceilings(mib: int, repeat: int) -> list[Figure]:
    n = mib * 2**20
    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    pinned.random_(0, 255)
    pageable = torch.empty(n, dtype=torch.uint8)
    pageable.random_(0, 255)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda:0")
    ceiling = n / events_ms(lambda: dev.copy_(pinned, non_blocking=True), repeat) / 1e6
    pageable_rate = n / events_ms(lambda: dev.copy_(pageable), repeat) / 1e6
    # kvferry's path: 4 MiB messages staged through a reused pinned buffer, then copied.
    msg = (CHUNK // 8192) * 8192
    staging = torch.empty(msg, dtype=torch.uint8, pin_memory=True)
    src = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
    stream = torch.cuda.Stream()

    def staged() -> None:
        for off in range(0, n - msg + 1, msg):
            staging.numpy()[:] = src[off:off + msg]
            with torch.cuda.stream(stream):
                dev[off:off + msg].copy_(staging, non_blocking=True)
            stream.synchronize()

    t0 = time.perf_counter()
    staged()
    staged_rate = (n // msg * msg) / (time.perf_counter() - t0) / 1e9
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        staged()
        ts.append(time.perf_counter() - t0)
    staged_rate = (n // msg * msg) / statistics.median(ts) / 1e9
    return [
        Figure(f"pinned H2D, one {mib} MiB copy (the card's ceiling)", "GB/s", ceiling, None,
               "report", True),
        Figure(f"pageable H2D, one {mib} MiB copy", "GB/s", pageable_rate, None, "report", True),
        Figure("kvferry's staged H2D: 4 MiB messages through a pinned buffer", "GB/s",
               staged_rate, ceiling, "report", True,
               "host memcpy into the pinned buffer, then the copy, one message at a time; "
               "baseline: the ceiling above"),
    ]


def push_into_cuda_pool(rounds: int, window_tokens: int, windows: int, row: int = 8192,
                        block_tokens: int = 256) -> list[Figure]:
    total = window_tokens * windows
    nbytes = total * row
    payload = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    window_bytes = window_tokens * row
    ours, base = [], []
    with kvferry_server(device="cuda:0", num_blocks=2 * window_tokens // block_tokens,
                        block_tokens=block_tokens, row_bytes=row,
                        default_window_tokens=window_tokens) as srv, \
            echo_server(row, window_bytes, cuda=True) as echo:
        async def once_ours(tag: int) -> float:
            tid = f"gpu-push-{tag}"
            return nbytes / await timed_push(srv.target, tid, push_messages(tid, payload, row)) / 1e9

        async def once_base() -> float:
            return nbytes / await timed_sink(echo, "/echo.Echo/SinkCuda", payload, row) / 1e9

        asyncio.run(once_ours(-1))  # warm-up: CUDA context, pinned buffers, connections
        for i in range(rounds):
            ours.append(asyncio.run(once_ours(i)))
            base.append(asyncio.run(once_base()))
    return [ratio_target(f"Push into cuda:0 pool ({nbytes / 2**20:.0f} MiB, {windows} windows)",
                         "GB/s", statistics.median(ours), statistics.median(base), ">=", 0.8,
                         "baseline: gRPC streaming + pinned H2D copy per message")]


IPC_READER = textwrap.dedent("""
    import asyncio, json, statistics, sys
    import torch
    from kvferry.client import AsyncClient

    def events_ms(fn, repeat):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        out = []
        for _ in range(repeat):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); b.synchronize()
            out.append(a.elapsed_time(b))
        return statistics.median(out)

    async def main(target, tid, repeat):
        async with AsyncClient(target) as c:
            pool = await c.map_pool()
            st = await c.poll(tid)
            nbytes = st.window_filled_tokens * pool.row_bytes
            ipc = events_ms(lambda: pool.window_tensor(st).clone(), repeat)
            view = events_ms(lambda: pool.window_tensor(st), repeat)
            src = torch.empty(nbytes, dtype=torch.uint8, device=pool.tensor.device)
            d2d = events_ms(lambda: src.clone(), repeat)
            print(json.dumps({"bytes": nbytes, "ipc_ms": ipc, "view_ms": view, "d2d_ms": d2d,
                              "blocks": list(st.block_indices)}))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


def ipc_read(window_tokens: int, repeat: int, row: int = 8192, block_tokens: int = 256) -> list[Figure]:
    with kvferry_server(device="cuda:0", num_blocks=2 * window_tokens // block_tokens,
                        block_tokens=block_tokens, row_bytes=row,
                        default_window_tokens=window_tokens) as srv:
        data = np.random.default_rng(2).integers(0, 256, (window_tokens, row), dtype=np.uint8)

        async def fill() -> None:
            from kvferry.client import AsyncClient

            async with AsyncClient(srv.target) as c:
                await c.stub.Open(pb.OpenRequest(transfer_id="gpu-ipc"))
                await c.send("gpu-ipc", data)

        asyncio.run(fill())
        r = subprocess.run([sys.executable, "-c", IPC_READER, srv.target, "gpu-ipc", str(repeat)],
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(r.stderr)
        got = json.loads(r.stdout.strip().splitlines()[-1])
    gb = got["bytes"] / 1e9
    return [
        ratio_target(f"IPC window read + copy-out ({got['bytes'] / 2**20:.0f} MiB)", "GB/s",
                     gb / (got["ipc_ms"] / 1e3), gb / (got["d2d_ms"] / 1e3), ">=", 0.8,
                     "baseline: device-to-device copy of the same bytes"),
        Figure("IPC window as a view (no copy)", "ms", got["view_ms"], None, "report", True,
               f"window blocks {got['blocks'][:4]}...: consecutive, so a view"),
    ]


def one_sided_cuda(total_mib: int, window_mib: int, rounds: int, row: int = 8192,
                   block_tokens: int = 256,
                   controls: tuple[str, ...] = ("grpc", "local")) -> list[Figure]:
    """The sender on the pool's own GPU writes through CUDA IPC (the client library's
    transport="cuda-ipc"); the receiver takes each full window as a view and resumes; timed from
    the call to send() to the last window's arrival. Against a device-to-device copy of the same
    bytes, and against gRPC Push into the same pool; per CONTROLS (how the calls travel)."""
    from kvferry.client import AsyncClient

    window = window_mib * 2**20 // row
    n = total_mib * 2**20 // row
    src = torch.randint(0, 256, (n, row), dtype=torch.uint8, device="cuda:0")
    nbytes = src.numel()
    with kvferry_server(device="cuda:0", num_blocks=2 * window // block_tokens,
                        block_tokens=block_tokens, row_bytes=row, default_window_tokens=window) as srv:

        async def once(tid: str, check: bool, control: str) -> float:
            async with AsyncClient(srv.target, control=control) as rx, \
                    AsyncClient(srv.target, control=control) as tx:
                pool = await rx.map_pool("cuda-ipc")
                await tx.map_pool("cuda-ipc")  # mapped once per client, before the clock, as a worker would
                await rx.stub.Open(pb.OpenRequest(transfer_id=tid, window_tokens=window))
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                send = asyncio.create_task(tx.send(tid, src, transport="cuda-ipc"))
                seen = 0
                async for st in rx.stub.Watch(pb.WatchRequest(transfer_id=tid)):
                    if st.state == pb.TRANSFER_STATE_FAILED:
                        raise RuntimeError(st.failure_reason)
                    if not (st.window_tokens and st.window_filled_tokens == st.window_tokens
                            and st.sent_tokens > seen):
                        continue
                    view = pool.window_tensor(st)  # the receiver's window: a view, no copy
                    if check and not torch.equal(view, src[st.window_start_token:st.sent_tokens]):
                        raise RuntimeError(f"window at {st.window_start_token} differs")
                    seen = st.sent_tokens
                    if st.state == pb.TRANSFER_STATE_SUCCESS:
                        break
                    await rx.stub.Resume(pb.ResumeRequest(transfer_id=tid, sent_tokens=st.sent_tokens))
                await send
                elapsed = time.perf_counter() - t0
                await rx.stub.Release(pb.ReleaseRequest(transfer_id=tid))
                return elapsed

        ours: dict[str, list[float]] = {c: [] for c in controls}
        for c in controls:
            asyncio.run(once(f"ipc-check-{c}", True, c))  # bytes verified, and everything warm
        for i in range(rounds):
            for c in controls:
                ours[c].append(asyncio.run(once(f"ipc-{c}-{i}", False, c)))
        dst = torch.empty_like(src)
        d2d_ms = events_ms(lambda: dst.copy_(src), 20)

        async def pushed() -> float:
            payload = src[:window].cpu().numpy().tobytes()
            return window * row / await timed_push(srv.target, "ipc-vs-push",
                                                   push_messages("ipc-vs-push", payload, row))

        push_bps = asyncio.run(pushed())
    d2d_gbps = nbytes / (d2d_ms / 1e3) / 1e9
    figures = []
    for c in controls:
        gbps = nbytes / statistics.median(ours[c]) / 1e9
        figures += [
            ratio_target(f"one-sided CUDA IPC, same GPU, {total_mib} MiB in {window_mib} MiB "
                         f"windows, control {c}, vs a device-to-device copy", "GB/s", gbps,
                         d2d_gbps, ">=", 0.5, "control included: Attach, a Commit, a Watch "
                         "status and a Resume per window; bytes verified in a first, untimed run"),
            ratio_target(f"one-sided CUDA IPC, control {c}, vs gRPC Push into the same pool",
                         "GB/s", gbps, push_bps / 1e9, ">=", 50.0,
                         "Push of one window, rows through Python gRPC"),
        ]
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu")
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    s = args.smoke
    props = torch.cuda.get_device_properties(0)
    card = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    print(f"card: {card}", flush=True)
    figures = run_plan({
        "ceilings": lambda: copy_ceilings(64 if s else 1024, 5 if s else 20),
        "push": lambda: push_into_cuda_pool(1 if s else 5, 1024 if s else 8192, 2 if s else 4),
        "ipc": lambda: ipc_read(1024 if s else 8192, 5 if s else 50),
        "one-sided": lambda: one_sided_cuda(64 if s else 4096, 16 if s else 256, 2 if s else 5),
    })
    print_report(figures)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps({"card": card, "figures": json.loads(to_json(figures))}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
