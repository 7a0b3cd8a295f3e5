"""Several readers (tensor-parallel ranks) of one transfer, through a real server: each reads
every window from the pool itself and resumes it naming itself; the window moves on once every
reader resumed it, the blocks go once every reader released, a reader's retry never stands in
for another's, and a reader that vanishes fails the transfer naming it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from kvferry.client import AsyncClient, TransferFailed
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, async_wait_until, start_server

ROW = 64


def payload(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROW), dtype=np.uint8)


def test_a_window_moves_on_only_once_every_reader_resumed_it(seed: ServerProcess) -> None:
    ch, stub = seed.stub()
    with ch:
        stub.Open(pb.OpenRequest(transfer_id="two", window_tokens=16, readers=2))
        # The Push holds on the full window: it goes on in the background.
        push = stub.Push.future(iter([pb.PushRequest(transfer_id="two", total_tokens=40,
                                                     rows=payload(40).tobytes())]))
        st = stub.Poll(pb.PollRequest(transfer_id="two"))
        while st.window_filled_tokens < st.window_tokens:
            st = stub.Poll(pb.PollRequest(transfer_id="two"))
        assert st.readers == 2 and st.sent_tokens == 16
        before = seed.metric("kvferry_resume_duplicates_skipped_total", 'reason="repeat"')

        first = stub.Resume(pb.ResumeRequest(transfer_id="two", sent_tokens=16, reader=0))
        assert not first.duplicate and first.readers_pending == 1
        assert first.status.state == pb.TRANSFER_STATE_TRANSFERRING  # still the readers' window
        assert first.status.readers_resumed == 1 and first.status.window_epoch == st.window_epoch
        again = stub.Resume(pb.ResumeRequest(transfer_id="two", sent_tokens=16, reader=0))
        assert again.duplicate and again.status.window_epoch == st.window_epoch  # no stand-in
        with pytest.raises(grpc.RpcError) as e:
            stub.Resume(pb.ResumeRequest(transfer_id="two", sent_tokens=16, reader=2))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "opened for 2 reader(s)" in e.value.details()

        last = stub.Resume(pb.ResumeRequest(transfer_id="two", sent_tokens=16, reader=1))
        assert not last.duplicate and last.readers_pending == 0
        assert last.status.window_epoch != st.window_epoch and last.status.readers_resumed == 0
        assert seed.metric("kvferry_resume_duplicates_skipped_total", 'reason="repeat"') == before + 1
        stub.Abort(pb.AbortRequest(transfer_id="two", reason="test over"))
        with pytest.raises(grpc.RpcError):
            push.result(10)
        stub.Release(pb.ReleaseRequest(transfer_id="two", reader=0))
        stub.Release(pb.ReleaseRequest(transfer_id="two", reader=1))


def test_two_ranks_take_in_every_window_and_the_slow_one_keeps_it(seed: ServerProcess) -> None:
    """Rank 1 holds each window as a view into the shared-memory pool (no copy) while rank 0
    has long resumed it: the window does not move on, so the view stays its rows; both ranks
    get every row, and the blocks go once both released."""
    data = payload(200, seed=1)

    async def main() -> tuple[bytes, bytes, list[int]]:
        async with AsyncClient(seed.target) as r0, AsyncClient(seed.target) as r1, \
                AsyncClient(seed.target) as tx:
            held: list[int] = []

            async def rank0() -> bytes:
                return b"".join([bytes(w.data) async for w in r0.receive(
                    "ranks", 32, readers=2, reader=0, transport="grpc")])

            async def rank1() -> bytes:
                out = []
                async for w in r1.receive("ranks", 32, open=False, reader=1, transport="shm",
                                          views=True):
                    # Rank 0 resumes at once; until this rank does, the window is its own.
                    async def rank0_resumed(last: bool = w.last) -> bool:
                        return (await r1.poll("ranks")).readers_resumed == 1 or last
                    await async_wait_until(rank0_resumed, "rank 0's resume of this window")
                    st = await r1.poll("ranks")
                    held.append(st.window_start_token)
                    assert st.window_start_token == w.start_token  # not moved on
                    out.append(bytes(w.data))  # the view, read after rank 0 resumed
                return b"".join(out)

            send = asyncio.create_task(tx.send("ranks", data, transport="grpc"))
            got0, got1 = await asyncio.gather(rank0(), rank1())
            await send
            return got0, got1, held

    got0, got1, held = asyncio.run(main())
    assert got0 == data.tobytes() and got1 == data.tobytes()
    assert held == list(range(0, 200, 32))  # every window waited for rank 1


def test_one_readers_release_keeps_the_blocks_for_the_other(seed: ServerProcess) -> None:
    ch, stub = seed.stub()
    with ch:
        stub.Open(pb.OpenRequest(transfer_id="rel", window_tokens=16, readers=2))
        stub.Push(iter([pb.PushRequest(transfer_id="rel", total_tokens=10,
                                       rows=payload(10).tobytes())]))
        first = stub.Release(pb.ReleaseRequest(transfer_id="rel", reader=1))
        assert first.freed_blocks == 0
        # Rank 0 still reads the last window: its rows are there.
        rows = b"".join(m.rows for m in stub.Read(pb.ReadRequest(transfer_id="rel")))
        assert rows == payload(10).tobytes()
        last = stub.Release(pb.ReleaseRequest(transfer_id="rel", reader=0))
        assert last.freed_blocks > 0
        with pytest.raises(grpc.RpcError) as e:
            stub.Poll(pb.PollRequest(transfer_id="rel"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def graceful() -> Iterator[ServerProcess]:
    srv = start_server(reconnect_grace=0.5, stall_timeout=300, lease_timeout=300, retention=1)
    yield srv
    srv.assert_pool_free(timeout=30)
    assert srv.stop() == 0


RANK = """
import sys
from kvferry.client import Client
with Client(sys.argv[1]) as c:
    for w in c.receive("lost", 32, open=False, reader=1, transport="grpc"):
        print("window", flush=True)
        sys.stdin.read()  # holds the first window until killed
"""


def test_a_reader_that_vanishes_fails_the_transfer_naming_it(graceful: ServerProcess) -> None:
    """Rank 1's process is SIGKILLed holding the first window while rank 0 keeps watching: the
    transfer fails receiver_gone naming reader 1 once the reconnect grace passed (not at the
    stall timeout), and rank 0 and the sender learn why."""
    data = payload(100, seed=2)

    async def main() -> tuple[BaseException, BaseException]:
        async with AsyncClient(graceful.target) as r0, AsyncClient(graceful.target) as tx:
            await r0.open("lost", 32, readers=2)
            send = asyncio.create_task(tx.send("lost", data, transport="grpc"))
            rank1 = await asyncio.create_subprocess_exec(
                sys.executable, "-c", RANK, graceful.target, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE)
            assert rank1.stdout is not None
            assert await rank1.stdout.readline() == b"window\n"
            rank1.kill()
            await rank1.wait()
            with pytest.raises(TransferFailed) as lost:
                async for _ in r0.receive("lost", 32, open=False, reader=0, transport="grpc"):
                    pass
            with pytest.raises(TransferFailed) as sender:
                await send
            return lost.value, sender.value

    lost, sender = asyncio.run(main())
    for err in (lost, sender):
        assert "receiver_gone" in str(err) and "reader 1 (of 2)" in str(err), str(err)
