"""The CUDA pool on a real GPU (marker ``cuda``; skipped without one). On the device machine:
``bash bench/gpu/run.sh`` (docs/gpu.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from kvferry.client import AsyncClient
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, start_server

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROW = 4096  # 2048 bf16: a small hidden size


@pytest.fixture(scope="module")
def gpu_server() -> Iterator[ServerProcess]:
    srv = start_server(device="cuda:0", num_blocks=64, block_tokens=64, row_bytes=ROW,
                       default_window_tokens=512)
    yield srv
    assert srv.stop() == 0


def payload(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROW), dtype=np.uint8)


def test_pool_is_on_the_gpu(gpu_server: ServerProcess) -> None:
    assert gpu_server.pool_info().device == "cuda:0"


def test_multi_window_transfer_with_duplicate_resumes(gpu_server: ServerProcess) -> None:
    data = payload(3000, seed=1)

    async def main() -> tuple[bytes, int]:
        async with AsyncClient(gpu_server.target) as rx, AsyncClient(gpu_server.target) as tx, \
                AsyncClient(gpu_server.target) as rank2:
            send = asyncio.create_task(tx.send("gpu-seed", data))
            out, dups = [], 0
            async for w in rx.receive("gpu-seed", 512):
                out.append(w.data)
                st = await rank2.poll("gpu-seed")
                if st.last_resume_sent_tokens >= 0:  # another rank repeats the last resume
                    r = await rank2.stub.Resume(pb.ResumeRequest(
                        transfer_id="gpu-seed", sent_tokens=st.last_resume_sent_tokens))
                    dups += r.duplicate
            await send
            return b"".join(out), dups

    got, dups = asyncio.run(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data.tobytes()).digest()
    assert dups >= 4
    gpu_server.assert_pool_free()


READER = textwrap.dedent("""
    import asyncio, hashlib, json, sys
    import torch
    from kvferry.client import AsyncClient

    async def main(target, tid):
        async with AsyncClient(target) as c:
            pool = await c.map_pool()
            st = await c.poll(tid)
            rows = pool.window_tensor(st)
            views = pool.window(st)
            print(json.dumps({
                "sha": hashlib.sha256(rows.cpu().numpy().tobytes()).hexdigest(),
                "tokens": rows.shape[0], "device": str(rows.device),
                "shares_pool_memory": rows.data_ptr() == views[0].data_ptr(),
            }))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_ipc_read_from_another_process_equals_what_was_pushed(gpu_server: ServerProcess) -> None:
    data = payload(512, seed=2)

    async def push() -> None:
        async with AsyncClient(gpu_server.target) as c:
            await c.stub.Open(pb.OpenRequest(transfer_id="ipc", window_tokens=512))
            await c.send("ipc", data)

    asyncio.run(push())
    r = subprocess.run([sys.executable, "-c", READER, gpu_server.target, "ipc"],
                       capture_output=True, text=True, timeout=120)
    ch, stub = gpu_server.stub()
    with ch:
        stub.Release(pb.ReleaseRequest(transfer_id="ipc"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["sha"] == hashlib.sha256(data.tobytes()).hexdigest()
    assert got["tokens"] == 512 and got["device"].startswith("cuda")
    assert got["shares_pool_memory"]  # consecutive blocks: a view into the pool, not a copy


def test_a_view_is_invalid_after_resume(gpu_server: ServerProcess) -> None:
    """Documented rule, shown: after Resume the sender writes the next window into the same
    blocks, so a view taken before it shows the new rows."""
    first, second = payload(512, seed=3), payload(512, seed=4)
    both = np.concatenate([first, second])

    async def main() -> tuple[bytes, bytes]:
        async with AsyncClient(gpu_server.target) as rx, AsyncClient(gpu_server.target) as tx:
            pool = await rx.map_pool()
            await rx.stub.Open(pb.OpenRequest(transfer_id="stale-view", window_tokens=512))
            send = asyncio.create_task(tx.send("stale-view", both))
            while (st := await rx.poll("stale-view")).window_filled_tokens < 512:
                await asyncio.sleep(0.01)
            view = pool.window_tensor(st)
            before = view.cpu().numpy().tobytes()
            await rx.stub.Resume(pb.ResumeRequest(transfer_id="stale-view", sent_tokens=512))
            await send
            after = view.cpu().numpy().tobytes()
            await rx.release("stale-view")
            return before, after

    before, after = asyncio.run(main())
    assert before == first.tobytes()
    assert after == second.tobytes()  # same blocks, next window: the old view is stale


@pytest.mark.parametrize("where", ["cuda", "cpu"])
def test_a_cuda_ipc_sender_writes_windows_straight_into_the_pool(gpu_server: ServerProcess,
                                                                  where: str) -> None:
    """One-sided over CUDA IPC: the sender maps the pool and copies its tensor (on the GPU, or
    host memory) into each granted window; no row crosses gRPC. ``auto`` picks cuda-ipc here."""
    data = payload(3000, seed=5)
    src = torch.from_numpy(data).to(where)
    pushes = gpu_server.metric("grpc_server_msg_received_total",
                               'grpc_method="Push",grpc_service="kvferry.v1.TransferService",'
                               'grpc_type="client_stream"')
    tid = f"ipc-send-{where}"

    async def main() -> tuple[bytes, pb.TransferStatus]:
        async with AsyncClient(gpu_server.target) as rx, AsyncClient(gpu_server.target) as tx:
            send = asyncio.create_task(tx.send(tid, src))
            out = [w.data async for w in rx.receive(tid, 512)]
            return b"".join(out), await send

    got, status = asyncio.run(main())
    assert got == data.tobytes()
    assert status.state == pb.TRANSFER_STATE_SUCCESS
    assert gpu_server.metric("grpc_server_msg_received_total",
                             'grpc_method="Push",grpc_service="kvferry.v1.TransferService",'
                             'grpc_type="client_stream"') == pushes
    assert gpu_server.wait_metric("grpc_server_handled_total",
                                  'grpc_code="OK",grpc_method="Attach",'
                                  'grpc_service="kvferry.v1.TransferService",grpc_type="server_stream"',
                                  1) >= 1
    gpu_server.assert_pool_free()
