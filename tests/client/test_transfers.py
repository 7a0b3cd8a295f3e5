"""Whole transfers through a real server with the Python client: orderings, re-sends, inputs."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import numpy as np
import pytest
import torch

from kvferry.client import AsyncClient, Client, TransferFailed
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, async_wait_until, start_server

PUSH_LABELS = ('grpc_method="Push",grpc_service="kvferry.v1.TransferService",'
               'grpc_type="client_stream"')
ATTACH_LABELS = ('grpc_method="Attach",grpc_service="kvferry.v1.TransferService",'
                 'grpc_type="server_stream"')


def payload(n: int, row_bytes: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, row_bytes), dtype=np.uint8)


async def receive_all(client: AsyncClient, tid: str, window: int = 64, **kw) -> tuple[bytes, list]:
    windows = []
    async for w in client.receive(tid, window, **kw):
        windows.append(w)
    return b"".join(w.data for w in windows), windows


@pytest.mark.parametrize("transport", ["grpc", "shm"])
@pytest.mark.parametrize("sender_first", [True, False])
def test_either_side_may_arrive_first(seed: ServerProcess, sender_first: bool, transport: str) -> None:
    data = payload(300, seed.flags["row_bytes"])
    labels = ATTACH_LABELS if transport == "shm" else PUSH_LABELS

    async def main() -> tuple[bytes, pb.TransferStatus, list]:
        async with AsyncClient(seed.target) as rx, AsyncClient(seed.target) as tx:
            calls = seed.metric("grpc_server_started_total", labels)
            if sender_first:
                send = asyncio.create_task(tx.send("order", data, metadata=b"m", transport=transport))

                async def sender_arrived() -> bool:
                    return seed.metric("grpc_server_started_total", labels) > calls

                await async_wait_until(sender_arrived, f"the sender's call ({transport}) reaching the server")
                assert not send.done()  # the sender waits for the Open
                got, windows = await receive_all(rx, "order")
            else:
                recv = asyncio.create_task(receive_all(rx, "order"))
                await async_wait_until(lambda: rx.poll("order"), "the receiver's Open")
                send = asyncio.create_task(tx.send("order", data, metadata=b"m", transport=transport))
                got, windows = await recv
            return got, await send, windows

    got, status, windows = asyncio.run(main())
    assert got == data.tobytes()
    assert status.state == pb.TRANSFER_STATE_SUCCESS and status.sent_tokens == 300
    assert [w.start_token for w in windows] == [0, 64, 128, 192, 256]
    assert windows[-1].last and windows[0].metadata == b"m" and windows[0].total_tokens == 300


def test_a_sender_that_resends_rows_already_delivered(seed: ServerProcess) -> None:
    data = payload(200, seed.flags["row_bytes"], seed=2)

    async def main() -> bytes:
        async with AsyncClient(seed.target) as rx, AsyncClient(seed.target) as tx:
            recv = asyncio.create_task(receive_all(rx, "resend"))
            first = await tx.send("resend", data[:100], total_tokens=200)
            assert first.sent_tokens == 100 and first.state != pb.TRANSFER_STATE_SUCCESS
            # Reconnect and re-send from token 40: rows 40..99 are skipped, not written twice.
            final = await tx.send("resend", data[40:], total_tokens=200, start_token=40)
            assert final.state == pb.TRANSFER_STATE_SUCCESS and final.sent_tokens == 200
            got, _ = await recv
            return got

    assert asyncio.run(main()) == data.tobytes()


def test_sync_client_with_torch_bf16_rows(seed: ServerProcess) -> None:
    hidden = seed.flags["row_bytes"] // 2  # bf16
    emb = torch.randn(150, hidden).to(torch.bfloat16)
    result: dict[str, object] = {}

    with Client(seed.target) as rx, Client(seed.target) as tx:
        def sender() -> None:
            result["status"] = tx.send("torch", emb)

        th = threading.Thread(target=sender)
        th.start()
        windows = list(rx.receive("torch", 64))
        th.join(30)
    got = torch.frombuffer(bytearray(b"".join(w.data for w in windows)), dtype=torch.bfloat16)
    assert torch.equal(got.reshape(150, hidden), emb)
    assert result["status"].state == pb.TRANSFER_STATE_SUCCESS
    assert len(windows) == 3


def test_rows_of_the_wrong_width_are_refused_by_the_client(seed: ServerProcess) -> None:
    with Client(seed.target) as tx:
        with pytest.raises(ValueError, match="row_bytes is 64"):
            tx.send("bad-width", np.zeros((4, 10), dtype=np.float32))
        with pytest.raises(ValueError, match="whole number"):
            tx.send("bad-width", b"x" * 65)


def test_receiver_abort_reaches_the_blocked_sender(seed: ServerProcess) -> None:
    data = payload(200, seed.flags["row_bytes"], seed=3)

    async def main() -> None:
        async with AsyncClient(seed.target) as rx, AsyncClient(seed.target) as tx:
            send = asyncio.create_task(tx.send("abort-me", data))  # waits for the Open
            gen = rx.receive("abort-me", 64)
            first = await gen.__anext__()  # the receiver takes one window and resumes nothing ...
            assert first.num_tokens == 64
            st = await rx.poll("abort-me")
            assert st.sent_tokens == 64 and st.window_filled_tokens == st.window_tokens
            assert not send.done()  # ... so the sender is blocked on the full window
            await gen.aclose()  # the consumer goes away: the client aborts, then releases
            with pytest.raises(TransferFailed, match="receiver stopped"):
                await asyncio.wait_for(send, 10)

    asyncio.run(main())


def test_watch_streams_every_state_and_ends_after_the_terminal_one(seed: ServerProcess) -> None:
    data = payload(16, seed.flags["row_bytes"], seed=4)

    async def main() -> list[int]:
        async with AsyncClient(seed.target) as c:
            await c.stub.Open(pb.OpenRequest(transfer_id="watch", window_tokens=64))
            states: list[int] = []

            async def watch() -> None:
                async for st in c.stub.Watch(pb.WatchRequest(transfer_id="watch")):
                    states.append(st.state)

            w = asyncio.create_task(watch())

            async def watching() -> bool:
                return bool(states)

            await async_wait_until(watching, "the Watch's first status")
            await c.send("watch", data)
            await asyncio.wait_for(w, 10)  # the stream ends by itself
            await c.release("watch")
            return states

    states = asyncio.run(main())
    assert states[0] == pb.TRANSFER_STATE_BOOTSTRAPPING
    assert states[-1] == pb.TRANSFER_STATE_SUCCESS


def test_read_messages_fit_the_default_4mib_limit() -> None:
    """64 KiB rows, a 128-token (8 MiB) window: Read must split it under gRPC's default limit."""
    srv = start_server(num_blocks=16, block_tokens=16, row_bytes=65536, default_window_tokens=128)
    try:
        data = payload(256, 65536, seed=5)

        async def main() -> list[int]:
            sizes: list[int] = []
            async with AsyncClient(srv.target) as rx, AsyncClient(srv.target) as tx:
                send = asyncio.create_task(tx.send("big", data))
                got, _ = await receive_all(rx, "big", window=128)
                await send
                assert got == data.tobytes()
                # A second transfer, read by hand, to see the message sizes.
                await rx.stub.Open(pb.OpenRequest(transfer_id="sizes", window_tokens=128))
                send = asyncio.create_task(tx.send("sizes", data[:128]))
                await send
                async for m in rx.stub.Read(pb.ReadRequest(transfer_id="sizes")):
                    sizes.append(m.ByteSize())
                await rx.release("sizes")
            return sizes

        sizes = asyncio.run(main())
        assert sum(sizes) > 8 * 2**20 and len(sizes) >= 3
        assert max(sizes) <= 4 * 2**20
        srv.assert_pool_free()
    finally:
        assert srv.stop() == 0


def test_checksum_of_a_long_multi_window_transfer(seed: ServerProcess) -> None:
    data = payload(5000, seed.flags["row_bytes"], seed=6)

    async def main() -> tuple[bytes, int]:
        async with AsyncClient(seed.target) as rx, AsyncClient(seed.target) as tx:
            send = asyncio.create_task(tx.send("long", data))
            got, windows = await receive_all(rx, "long", window=64)
            await send
            return got, len(windows)

    got, n = asyncio.run(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data.tobytes()).digest()
    assert n == -(-5000 // 64)
