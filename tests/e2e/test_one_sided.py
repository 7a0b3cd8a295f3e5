"""The one-sided data plane through real server processes: the sender writes granted rows straight
into a shared-memory pool and commits them; the fence keeps late writes out of other transfers."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from kvferry.client import AsyncClient, Client, TransferFailed
from kvferry.client.contract import TransportUnavailable
from kvferry.client.grants import grant_runs
from kvferry.client.shm import ShmPool, ShmUnavailable
from kvferry.client.transports import TRANSPORTS
from kvferry.client.transports.shm import ShmTransport
from kvferry.server import shm_file
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, start_server, wait_sent, wait_until

ROW = 64


def payload(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROW), dtype=np.uint8)


@pytest.fixture
def fenced(shm_dir: str) -> Iterator[ServerProcess]:
    """A server whose fences last until the writer says it stopped (the test lifts them)."""
    srv = start_server(shm_dir=shm_dir, fence_timeout=600)
    yield srv
    assert srv.stop() == 0


def test_a_shm_transfer_moves_every_window_intact_with_no_row_through_grpc(seed: ServerProcess) -> None:
    info = seed.pool_info()
    assert list(info.transports) == ["grpc", "shm"] and info.shm_path and info.host_id
    data = payload(300, seed=1)
    pushes_before = seed.metric("grpc_server_msg_received_total",
                                'grpc_method="Push",grpc_service="kvferry.v1.TransferService",'
                                'grpc_type="client_stream"')

    async def main() -> tuple[bytes, pb.TransferStatus]:
        async with AsyncClient(seed.target) as rx, AsyncClient(seed.target) as tx:
            send = asyncio.create_task(tx.send("one-sided", data, transport="shm"))
            got = [w async for w in rx.receive("one-sided", 64, transport="shm")]
            return b"".join(w.data for w in got), await send

    got, status = asyncio.run(main())
    assert got == data.tobytes()
    assert status.state == pb.TRANSFER_STATE_SUCCESS and status.sent_tokens == 300
    assert seed.metric("grpc_server_msg_received_total",
                       'grpc_method="Push",grpc_service="kvferry.v1.TransferService",'
                       'grpc_type="client_stream"') == pushes_before
    assert seed.metric("kvferry_tokens_received_total") >= 300


def test_a_receivers_window_view_is_the_pool_itself(seed: ServerProcess) -> None:
    data = payload(64, seed=2)
    ch, stub = seed.stub()
    with ch, Client(seed.target) as c:
        stub.Open(pb.OpenRequest(transfer_id="view", window_tokens=64))
        c.send("view", data)
        st = c.poll("view")
        pool = c.map_pool()
        assert isinstance(pool, ShmPool)
        views = pool.window(st)
        assert np.array_equal(np.concatenate(views), data)
        assert all(np.shares_memory(v, pool.rows) for v in views)  # views, not copies
        c.release("view")


def test_a_late_write_lands_in_fenced_blocks_and_never_in_the_next_transfer(fenced: ServerProcess) -> None:
    """The canary: a writer is granted a window, the receiver aborts before the commit, and the
    writer's rows land afterwards. Those blocks are fenced: the next transfer gets others, and its
    bytes come through untouched. The writer's Detach lifts the fence."""
    info = fenced.pool_info()
    pool = ShmPool.of(info)
    ch, stub = fenced.stub()
    with ch:
        stub.Open(pb.OpenRequest(transfer_id="late", window_tokens=64))
        grants = stub.Attach(pb.AttachRequest(transfer_id="late", total_tokens=128, transport="shm"))
        grant = next(grants)
        stub.Abort(pb.AbortRequest(transfer_id="late", reason="receiver went away"))
        with pytest.raises(grpc.RpcError) as e:  # the writer's stream ends with the reason
            next(grants)
        assert e.value.code() == grpc.StatusCode.ABORTED and "receiver went away" in e.value.details()
        info = fenced.pool_info()
        assert info.quarantined_blocks == len(grant.block_indices)
        assert info.free_blocks == info.num_blocks - len(grant.block_indices)
        stub.Release(pb.ReleaseRequest(transfer_id="late"))

        data = payload(64, seed=3)
        stub.Open(pb.OpenRequest(transfer_id="next", window_tokens=64))
        with Client(fenced.target) as rx, Client(fenced.target) as tx:
            st = tx.send("next", data, transport="grpc")
            assert not set(st.block_indices) & set(grant.block_indices), "fenced blocks were handed out"
            canary = np.full((grant.tokens, ROW), 0xAB, dtype=np.uint8)
            pool.write(grant, canary, grant.start_token, grant.start_token + grant.tokens)  # lands late
            got = b"".join(w.data for w in rx.receive("next", 64, open=False))
        assert got == data.tobytes()
        flat = pool.flat
        assert all((flat[r.row:r.row + r.tokens] == 0xAB).all() for r in grant_runs(grant))

        freed = stub.Detach(pb.DetachRequest(transfer_id="late", epoch=grant.epoch)).freed_blocks
        assert freed == len(grant.block_indices)
        assert stub.Detach(pb.DetachRequest(transfer_id="late", epoch=grant.epoch)).freed_blocks == 0
    assert fenced.metric("kvferry_fences_lifted_total", 'by="detach"') == 1
    fenced.assert_pool_free()
    pool.close()


def test_the_fence_timeout_lifts_a_fence_whose_writer_never_spoke(shm_dir: str) -> None:
    srv = start_server(shm_dir=shm_dir, fence_timeout=0.5)
    try:
        ch, stub = srv.stub()
        with ch:
            stub.Open(pb.OpenRequest(transfer_id="silent", window_tokens=16))
            grant = next(stub.Attach(pb.AttachRequest(transfer_id="silent", total_tokens=32,
                                                      transport="shm")))
            stub.Abort(pb.AbortRequest(transfer_id="silent"))
            assert srv.pool_info().quarantined_blocks == len(grant.block_indices)
            wait_until(lambda: srv.metric("kvferry_fences_lifted_total", 'by="timeout"') == 1,
                       "the fence timeout lifting the fence")
            assert srv.metric("kvferry_pool_blocks", 'state="quarantined"') == 0
            assert stub.Stats(pb.StatsRequest()).fence_timeouts == 1
            stub.Release(pb.ReleaseRequest(transfer_id="silent"))
        srv.assert_pool_free()
    finally:
        assert srv.stop() == 0


def test_commit_refusals_through_grpc(seed: ServerProcess) -> None:
    ch, stub = seed.stub()
    with ch:
        stub.Open(pb.OpenRequest(transfer_id="rules", window_tokens=16))
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Attach(pb.AttachRequest(transfer_id="rules", total_tokens=32, transport="cuda-ipc")))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "offers ['shm']" in e.value.details()
        grants = stub.Attach(pb.AttachRequest(transfer_id="rules", total_tokens=32, transport="shm"))
        g = next(grants)

        def code(start: int, tokens: int, epoch: int = g.epoch) -> grpc.StatusCode:
            try:
                stub.Commit(pb.CommitRequest(transfer_id="rules", epoch=epoch, start_token=start,
                                             tokens=tokens))
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        assert code(4, 4) == grpc.StatusCode.OUT_OF_RANGE  # a gap
        assert code(0, 17) == grpc.StatusCode.INVALID_ARGUMENT  # past the window
        assert code(0, 4, epoch=g.epoch + 1000) == grpc.StatusCode.FAILED_PRECONDITION
        assert code(0, 16) == grpc.StatusCode.OK
        r = stub.Commit(pb.CommitRequest(transfer_id="rules", epoch=g.epoch, start_token=0, tokens=16))
        assert r.duplicate and r.status.sent_tokens == 16
        grants.cancel()
        stub.Abort(pb.AbortRequest(transfer_id="rules"))
        stub.Release(pb.ReleaseRequest(transfer_id="rules"))


def test_a_forced_transport_that_cannot_work_fails_at_once_saying_why(seed: ServerProcess) -> None:
    with Client(seed.target) as c:
        with pytest.raises(TransportUnavailable, match=r"offers \['grpc', 'shm'\], not 'cuda-ipc'"):
            c.send("nope", payload(8), transport="cuda-ipc")
        with pytest.raises(ValueError, match="choose one of"):
            c.send("nope", payload(8), transport="rdma")
    info = seed.pool_info()
    elsewhere = pb.PoolInfo()
    elsewhere.CopyFrom(info)
    elsewhere.host_id = "another-host"
    with pytest.raises(TransportUnavailable, match="another host"):
        ShmPool.of(elsewhere)


def test_sigterm_removes_the_pool_file_and_a_sigkilled_servers_file_is_swept(shm_dir: str) -> None:
    srv = start_server(shm_dir=shm_dir)
    path = srv.pool_info().shm_path
    assert Path(path).parent == Path(shm_dir) and os.path.exists(path)
    assert srv.stop(signal.SIGTERM) == 0
    assert not os.path.exists(path)
    killed = start_server(shm_dir=shm_dir)
    left = killed.pool_info().shm_path
    killed.stop(signal.SIGKILL)
    assert os.path.exists(left)  # nobody could remove it ...
    nxt = start_server(shm_dir=shm_dir)
    try:
        assert not os.path.exists(left)  # ... until the next server started
    finally:
        assert nxt.stop() == 0
    assert "left by a kvferry server that was killed" in "".join(nxt.output)


def test_a_pool_larger_than_the_shared_memory_fails_with_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                                     shm_dir: str) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ShmUnavailable, match=r"needs 1\.00 GiB of shared memory .* enlarge it"):
        shm_file.create(shm_dir, 1024, 256, 4096)


def test_a_one_sided_sender_learns_of_an_abort_and_gives_its_grant_back(fenced: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(fenced.target) as rx, AsyncClient(fenced.target) as tx:
            await rx.stub.Open(pb.OpenRequest(transfer_id="stop", window_tokens=64))
            send = asyncio.create_task(tx.send("stop", payload(200), transport="shm"))
            # The first window is written and committed; the sender waits for the next grant.
            await wait_sent(rx, "stop", 64, "the first window written and committed")
            await rx.abort("stop", "decoder OOM")
            with pytest.raises(TransferFailed, match="decoder OOM"):
                await asyncio.wait_for(send, 20)
            await rx.release("stop")

    asyncio.run(main())
    fenced.assert_pool_free()  # nothing was lent when it failed: nothing fenced



def test_a_sender_whose_transfer_ended_and_was_released_mid_write_learns_why(seed: ServerProcess) -> None:
    """The receiver refuses the transfer and releases it while the sender is still copying: the
    sender's Commit finds no transfer, and the library reports the reason the Attach stream ended
    with, not a bare NOT_FOUND."""
    gate = threading.Event()
    copying = threading.Event()

    class SlowShm(ShmTransport):  # transport "shm", its writes held back at the gate
        async def connect(self, client: object, info: pb.PoolInfo) -> SlowWriter:  # type: ignore[override]
            return SlowWriter(ShmPool.of(info))

    class SlowWriter:
        def __init__(self, pool: ShmPool) -> None:
            self.pool = pool

        def write(self, *args: object) -> None:
            copying.set()
            gate.wait(20)
            self.pool.write(*args)  # type: ignore[arg-type]

        def finish(self, rows: object) -> None:
            pass

    errors: list[BaseException] = []
    ch, stub = seed.stub()
    with ch, Client(seed.target, transports=TRANSPORTS.replaced(SlowShm())) as tx:
        stub.Open(pb.OpenRequest(transfer_id="refused", window_tokens=64))

        def send() -> None:
            try:
                tx.send("refused", payload(64), transport="shm")
            except BaseException as e:
                errors.append(e)

        th = threading.Thread(target=send)
        th.start()
        assert copying.wait(20)
        stub.Abort(pb.AbortRequest(transfer_id="refused", reason="layout refused"))
        stub.Release(pb.ReleaseRequest(transfer_id="refused"))
        gate.set()
        th.join(30)
    assert len(errors) == 1 and isinstance(errors[0], TransferFailed), errors
    assert "layout refused" in errors[0].reason
    seed.assert_pool_free()
