"""Every refusal of §2 through a real server: its status code, a message that says what to fix,
and nothing leaked (the ``seed`` fixture checks the pool after each test)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import grpc
import pytest

from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

from support.kvserver import ServerProcess

ROW = 64  # row_bytes of the seed server


@pytest.fixture
def stub(seed: ServerProcess) -> Iterator[pb_grpc.TransferServiceStub]:
    ch, s = seed.stub()
    with ch:
        yield s


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def push(stub: pb_grpc.TransferServiceStub, msgs: Iterable[pb.PushRequest]) -> pb.PushResponse:
    return stub.Push(iter(list(msgs)), timeout=10)


def cleanup(stub: pb_grpc.TransferServiceStub, *ids: str) -> None:
    for tid in ids:
        stub.Abort(pb.AbortRequest(transfer_id=tid, reason="test cleanup"))
        stub.Release(pb.ReleaseRequest(transfer_id=tid))


@pytest.mark.parametrize("rpc,msg", [
    ("Poll", pb.PollRequest(transfer_id="ghost")),
    ("Resume", pb.ResumeRequest(transfer_id="ghost", sent_tokens=1)),
    ("Abort", pb.AbortRequest(transfer_id="ghost")),
    ("Release", pb.ReleaseRequest(transfer_id="ghost")),
])
def test_unknown_id_is_not_found(stub: pb_grpc.TransferServiceStub, rpc: str, msg: object) -> None:
    code, msg = code_of(lambda: getattr(stub, rpc)(msg))
    assert code == grpc.StatusCode.NOT_FOUND and "ghost" in msg


@pytest.mark.parametrize("rpc,msg", [
    ("Watch", pb.WatchRequest(transfer_id="ghost")),
    ("Read", pb.ReadRequest(transfer_id="ghost")),
])
def test_unknown_id_is_not_found_on_streams(stub: pb_grpc.TransferServiceStub, rpc: str,
                                            msg: object) -> None:
    code, _ = code_of(lambda: list(getattr(stub, rpc)(msg)))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("tid", ["", "x" * 257])
def test_bad_ids_are_invalid(stub: pb_grpc.TransferServiceStub, tid: str) -> None:
    code, msg = code_of(lambda: stub.Open(pb.OpenRequest(transfer_id=tid)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "transfer_id" in msg
    code, _ = code_of(lambda: stub.Poll(pb.PollRequest(transfer_id=tid)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_window_larger_than_the_pool_is_invalid(stub: pb_grpc.TransferServiceStub) -> None:
    code, msg = code_of(lambda: stub.Open(pb.OpenRequest(transfer_id="w", window_tokens=10_000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in msg


def test_open_of_a_held_id_is_already_exists(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="dup"))
    code, msg = code_of(lambda: stub.Open(pb.OpenRequest(transfer_id="dup")))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "Release it first" in msg
    cleanup(stub, "dup")


def test_open_on_a_full_pool_is_resource_exhausted(stub: pb_grpc.TransferServiceStub) -> None:
    ids = [f"fill-{i}" for i in range(4)]  # 4 x 64-token windows = all 32 blocks
    for tid in ids:
        stub.Open(pb.OpenRequest(transfer_id=tid))
    code, msg = code_of(lambda: stub.Open(pb.OpenRequest(transfer_id="one-too-many", window_tokens=8)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "0 free blocks" in msg
    cleanup(stub, *ids)


def test_push_errors_end_only_that_stream(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="p", window_tokens=64))
    first = pb.PushRequest(transfer_id="p", total_tokens=20)

    code, msg = code_of(lambda: push(stub, [pb.PushRequest(transfer_id="p", total_tokens=0)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "total_tokens between 1" in msg

    code, msg = code_of(lambda: push(stub, [first, pb.PushRequest(start_token=0, rows=b"x" * 65)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a multiple of row_bytes=64" in msg

    code, msg = code_of(lambda: push(stub, [first, pb.PushRequest(start_token=5, rows=bytes(ROW))]))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "next expected token is 0" in msg

    code, msg = code_of(lambda: push(stub, [first, pb.PushRequest(start_token=0, rows=bytes(21 * ROW))]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "past total_tokens=20" in msg

    code, msg = code_of(lambda: push(stub, [pb.PushRequest(transfer_id="p", total_tokens=21)]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "total_tokens=20" in msg

    code, msg = code_of(lambda: push(stub, [first, pb.PushRequest(transfer_id="other", rows=b"")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one stream per transfer" in msg

    code, msg = code_of(lambda: push(stub, []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no message" in msg

    # None of that hurt the transfer: a good stream still completes it.
    st = stub.Poll(pb.PollRequest(transfer_id="p"))
    assert st.state == pb.TRANSFER_STATE_TRANSFERRING and st.sent_tokens == 0
    done = push(stub, [pb.PushRequest(transfer_id="p", total_tokens=20, rows=bytes(20 * ROW))])
    assert done.status.state == pb.TRANSFER_STATE_SUCCESS
    stub.Release(pb.ReleaseRequest(transfer_id="p"))


def test_resume_refusals(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="r", window_tokens=16))
    push(stub, [pb.PushRequest(transfer_id="r", total_tokens=40, rows=bytes(10 * ROW))])

    code, msg = code_of(lambda: stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=10)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not full yet (10 of 16" in msg

    push(stub, [pb.PushRequest(transfer_id="r", total_tokens=40, start_token=10, rows=bytes(6 * ROW))])
    code, msg = code_of(lambda: stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=12)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "delivered 16" in msg

    applied = stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=16))
    assert not applied.duplicate and applied.status.state == pb.TRANSFER_STATE_RESUMING
    again = stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=16))
    assert again.duplicate and again.status.resume_count == 1

    # The duplicate check comes first: a late rank's copy is answered, whatever else it says.
    assert stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=16,
                                        window_tokens=999_999)).duplicate
    stub.Abort(pb.AbortRequest(transfer_id="r", reason="done"))
    code, msg = code_of(lambda: stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=17)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "FAILED: aborted: done" in msg
    assert stub.Resume(pb.ResumeRequest(transfer_id="r", sent_tokens=16)).duplicate
    stub.Release(pb.ReleaseRequest(transfer_id="r"))


def test_release_of_a_live_transfer_is_refused(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="live"))
    code, msg = code_of(lambda: stub.Release(pb.ReleaseRequest(transfer_id="live")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "Abort it" in msg
    cleanup(stub, "live")


def test_abort_is_idempotent_and_ends_the_transfer(stub: pb_grpc.TransferServiceStub) -> None:
    stub.Open(pb.OpenRequest(transfer_id="ab"))
    st = stub.Abort(pb.AbortRequest(transfer_id="ab", reason="client gave up"))
    assert st.state == pb.TRANSFER_STATE_FAILED and st.failure_reason == "aborted: client gave up"
    assert not st.block_indices
    st2 = stub.Abort(pb.AbortRequest(transfer_id="ab", reason="twice"))
    assert st2.failure_reason == "aborted: client gave up"
    code, msg = code_of(lambda: push(stub, [pb.PushRequest(transfer_id="ab", total_tokens=5)]))
    assert code == grpc.StatusCode.ABORTED and "client gave up" in msg
    code, _ = code_of(lambda: list(stub.Read(pb.ReadRequest(transfer_id="ab"))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    final = stub.Release(pb.ReleaseRequest(transfer_id="ab"))
    assert final.status.state == pb.TRANSFER_STATE_FAILED
    code, _ = code_of(lambda: stub.Poll(pb.PollRequest(transfer_id="ab")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_message_over_the_size_limit_is_resource_exhausted(seed: ServerProcess) -> None:
    with grpc.insecure_channel(seed.target, options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = pb_grpc.TransferServiceStub(ch)
        stub.Open(pb.OpenRequest(transfer_id="huge"))
        big = pb.PushRequest(transfer_id="huge", total_tokens=1, rows=bytes(17 * 2**20))
        code, _ = code_of(lambda: stub.Push(iter([big]), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        cleanup(stub, "huge")
