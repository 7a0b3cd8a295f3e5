"""Timeouts on a server whose clock runs fast: nothing waits forever, nothing leaks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

from support.kvserver import ServerProcess, start_server

ROW = 64


@pytest.fixture(scope="module")
def fast() -> Iterator[ServerProcess]:
    srv = start_server(bootstrap_timeout=0.5, stall_timeout=1.0, retention=1.5)
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def stub(fast: ServerProcess) -> Iterator[pb_grpc.TransferServiceStub]:
    fast.assert_pool_free()
    ch, s = fast.stub()
    with ch:
        yield s
    fast.assert_pool_free(timeout=5)


def wait_state(stub: pb_grpc.TransferServiceStub, tid: str, state: int, within: float = 5) -> pb.TransferStatus:
    deadline = time.monotonic() + within
    while True:
        st = stub.Poll(pb.PollRequest(transfer_id=tid))
        if st.state == state or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def wait_gone(stub: pb_grpc.TransferServiceStub, tid: str, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stub.Poll(pb.PollRequest(transfer_id=tid))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            return
        time.sleep(0.05)
    raise AssertionError(f"{tid} was never released by retention")


def test_bootstrap_timeout_then_retention(fast: ServerProcess, stub: pb_grpc.TransferServiceStub) -> None:
    before = fast.metric("kvferry_transfers_released_total", 'by="retention"')
    stub.Open(pb.OpenRequest(transfer_id="lonely"))
    st = wait_state(stub, "lonely", pb.TRANSFER_STATE_FAILED)
    assert st.state == pb.TRANSFER_STATE_FAILED
    assert st.failure_reason.startswith("bootstrap_timeout") and not st.block_indices
    wait_gone(stub, "lonely")
    assert fast.metric("kvferry_transfers_released_total", 'by="retention"') == before + 1


def test_a_sender_with_no_receiver_gets_not_found(stub: pb_grpc.TransferServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter([pb.PushRequest(transfer_id="nobody", total_tokens=4, rows=bytes(4 * ROW))]),
                  timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no receiver opened" in e.value.details()


def test_stall_ends_the_blocked_sender_and_frees_the_window(fast: ServerProcess,
                                                           stub: pb_grpc.TransferServiceStub) -> None:
    before = fast.metric("kvferry_transfers_finished_total", 'outcome="stall_timeout"')
    stub.Open(pb.OpenRequest(transfer_id="stuck", window_tokens=16))
    msgs = [pb.PushRequest(transfer_id="stuck", total_tokens=64, rows=bytes(64 * ROW))]
    with pytest.raises(grpc.RpcError) as e:  # the receiver never resumes
        stub.Push(iter(msgs), timeout=20)
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert "receiver did not resume" in e.value.details()
    st = stub.Poll(pb.PollRequest(transfer_id="stuck"))
    assert st.state == pb.TRANSFER_STATE_FAILED and st.sent_tokens == 16 and not st.block_indices
    stub.Release(pb.ReleaseRequest(transfer_id="stuck"))
    assert fast.metric("kvferry_transfers_finished_total", 'outcome="stall_timeout"') == before + 1


def test_watch_ends_with_the_failed_status(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="watched"))
    states = [s.state for s in stub.Watch(pb.WatchRequest(transfer_id="watched"), timeout=10)]
    assert states[0] == pb.TRANSFER_STATE_BOOTSTRAPPING and states[-1] == pb.TRANSFER_STATE_FAILED
    stub.Release(pb.ReleaseRequest(transfer_id="watched"))


def test_polling_is_not_progress(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="polled", window_tokens=16))
    stub.Push(iter([pb.PushRequest(transfer_id="polled", total_tokens=32, rows=bytes(4 * ROW))]))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = stub.Poll(pb.PollRequest(transfer_id="polled"))
        if st.state == pb.TRANSFER_STATE_FAILED:
            break
        time.sleep(0.05)
    assert st.state == pb.TRANSFER_STATE_FAILED and "sender delivered nothing" in st.failure_reason
    stub.Release(pb.ReleaseRequest(transfer_id="polled"))


def test_a_timeout_scheduled_while_the_server_idles_fires_on_time() -> None:
    """An idle server's timer sleeps until its next deadline (none: a long while); a transfer
    opened then must wake it, not wait for that sleep to end."""
    srv = start_server(bootstrap_timeout=0.3, stall_timeout=30, retention=30)
    try:
        time.sleep(0.5)  # nothing to time: the timer task is asleep
        ch, stub = srv.stub()
        with ch:
            stub.Open(pb.OpenRequest(transfer_id="late"))
            st = wait_state(stub, "late", pb.TRANSFER_STATE_FAILED, within=3)
            assert st.state == pb.TRANSFER_STATE_FAILED and st.failure_reason.startswith("bootstrap")
            stub.Release(pb.ReleaseRequest(transfer_id="late"))
    finally:
        assert srv.stop() == 0
