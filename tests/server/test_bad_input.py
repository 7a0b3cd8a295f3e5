"""Hostile input on every RPC: each gets its documented status, and the server keeps serving with
its pool intact. Ends with a short hypothesis fuzz over the request messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, start_server

U64 = 2**64 - 1
C = grpc.StatusCode
DOCUMENTED = {C.OK, C.NOT_FOUND, C.INVALID_ARGUMENT, C.ALREADY_EXISTS, C.FAILED_PRECONDITION,
              C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED, C.ABORTED, C.DEADLINE_EXCEEDED}
TRIED = {"count": 0}


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    s = start_server(bootstrap_timeout=0.05)  # a Push to an unknown id gives up fast
    yield s
    assert s.stop() == 0


def status(call: Callable[[], Any]) -> C:
    TRIED["count"] += 1
    try:
        r = call()
        if hasattr(r, "__next__"):
            list(r)
        return C.OK
    except grpc.RpcError as e:
        assert e.details(), "every refusal says why"
        return e.code()


def cleanup(stub: Any, tid: str) -> None:
    for call in (lambda: stub.Abort(pb.AbortRequest(transfer_id=tid)),
                 lambda: stub.Release(pb.ReleaseRequest(transfer_id=tid))):
        try:
            call()
        except grpc.RpcError:
            pass  # not held, or already released


def still_serving(srv: ServerProcess) -> None:
    info = srv.pool_info()
    assert info.num_blocks == 32


# Ids are never used as paths, so "../" is just text; what would hide or forge text in logs and
# tables (control and format characters, bidi overrides, zero-width, spaces) is refused.
HOSTILE_IDS = ["", "x" * 257, "x" * 1_000_000, "\x00", "a\x00b", "a\nb", "a\u202eb", "a\u200bb",
               "a b", "a\u2028b", "../../etc/passwd", "é" * 200, "🙂" * 65]


@pytest.mark.parametrize("tid", HOSTILE_IDS)
def test_hostile_ids_on_every_rpc(srv: ServerProcess, tid: str) -> None:
    ch, stub = srv.stub()
    valid = 0 < len(tid.encode()) <= 256 and tid.isprintable() and " " not in tid
    with ch:
        calls = {
            "Open": lambda: stub.Open(pb.OpenRequest(transfer_id=tid, window_tokens=8)),
            "Poll": lambda: stub.Poll(pb.PollRequest(transfer_id=tid)),
            "Watch": lambda: stub.Watch(pb.WatchRequest(transfer_id=tid), timeout=5),
            "Read": lambda: stub.Read(pb.ReadRequest(transfer_id=tid), timeout=5),
            "Resume": lambda: stub.Resume(pb.ResumeRequest(transfer_id=tid, sent_tokens=1)),
            "Abort": lambda: stub.Abort(pb.AbortRequest(transfer_id=tid, reason=tid)),
            "Release": lambda: stub.Release(pb.ReleaseRequest(transfer_id=tid)),
            "Push": lambda: stub.Push(iter([pb.PushRequest(transfer_id=tid, total_tokens=1)]), timeout=5),
        }
        for name, call in calls.items():
            code = status(call)
            if not valid:
                assert code == C.INVALID_ARGUMENT, (name, code)
            elif name == "Open":
                assert code == C.OK
            else:
                assert code in DOCUMENTED, (name, code)
        cleanup(stub, tid)
    still_serving(srv)
    srv.assert_pool_free()


def test_extreme_sizes(srv: ServerProcess) -> None:
    ch, stub = srv.stub()
    with ch:
        assert status(lambda: stub.Open(pb.OpenRequest(transfer_id="big", window_tokens=U64))) == C.INVALID_ARGUMENT
        stub.Open(pb.OpenRequest(transfer_id="big", window_tokens=16))
        resume = pb.ResumeRequest(transfer_id="big", sent_tokens=U64)
        assert status(lambda: stub.Resume(resume)) == C.FAILED_PRECONDITION
        push = lambda **kw: stub.Push(iter([pb.PushRequest(transfer_id="big", **kw)]), timeout=5)  # noqa: E731
        assert status(lambda: push(total_tokens=U64, start_token=U64, rows=bytes(64))) == C.INVALID_ARGUMENT
        assert status(lambda: push(total_tokens=2**62)) == C.INVALID_ARGUMENT
        assert stub.Poll(pb.PollRequest(transfer_id="big")).total_tokens == 0  # nothing attached
        assert status(lambda: push(total_tokens=10, start_token=U64 - 1, rows=bytes(64))) == C.INVALID_ARGUMENT
        assert status(lambda: push(total_tokens=10, start_token=5, rows=bytes(64))) == C.OUT_OF_RANGE
        assert status(lambda: push(total_tokens=10, rows=bytes(63))) == C.INVALID_ARGUMENT
        assert status(lambda: push(total_tokens=10, metadata=bytes(64 * 1024 + 1))) == C.INVALID_ARGUMENT
        assert status(lambda: stub.Resume(pb.ResumeRequest(transfer_id="big", sent_tokens=0,
                                                           window_tokens=U64))) == C.INVALID_ARGUMENT
        stub.Abort(pb.AbortRequest(transfer_id="big"))
        stub.Release(pb.ReleaseRequest(transfer_id="big"))
    still_serving(srv)
    srv.assert_pool_free()


GARBAGE = [b"\xff\xff\xff", b"\x0a\x03\xff\xfe\xfd", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 64,
           bytes(range(256))]
METHODS = {"GetPoolInfo": "unary_unary", "Open": "unary_unary", "Poll": "unary_unary",
           "Resume": "unary_unary", "Abort": "unary_unary", "Release": "unary_unary",
           "Watch": "unary_stream", "Read": "unary_stream", "Push": "stream_unary"}


@pytest.mark.parametrize("method", METHODS)
def test_garbage_bytes_on_the_wire(srv: ServerProcess, method: str) -> None:
    with grpc.insecure_channel(srv.target) as ch:
        call = getattr(ch, METHODS[method])(f"/kvferry.v1.TransferService/{method}")
        for raw in GARBAGE:
            code = status(lambda raw=raw: call(iter([raw]), timeout=5) if method == "Push"
                          else call(raw, timeout=5))
            # Bytes that happen to parse are a valid (if odd) request: any documented answer.
            assert code in DOCUMENTED, (method, raw, code)
            # Corrupt wire format fails any message; bad UTF-8 fails those with a string field 1.
            if raw in (GARBAGE[0], GARBAGE[2]) or (raw == GARBAGE[1] and method != "GetPoolInfo"):
                assert code == C.INVALID_ARGUMENT, (method, raw, code)
    still_serving(srv)
    srv.assert_pool_free()


ids = st.sampled_from(["f1", "f2", ""]) | st.text(max_size=300)


def ids_of(request: Any) -> set[str]:
    msgs = request if isinstance(request, list) else [request]
    return {m.transfer_id for m in msgs}
u64 = st.sampled_from([0, 1, 7, 8, 64, 65, 255, 2**32, U64]) | st.integers(0, U64)
REQUESTS = st.one_of(
    st.builds(pb.OpenRequest, transfer_id=ids, window_tokens=u64),
    st.builds(pb.PollRequest, transfer_id=ids),
    st.builds(pb.ResumeRequest, transfer_id=ids, sent_tokens=u64, window_tokens=u64),
    st.builds(pb.AbortRequest, transfer_id=ids, reason=st.text(max_size=50)),
    st.builds(pb.ReleaseRequest, transfer_id=ids),
    st.lists(st.builds(pb.PushRequest, transfer_id=ids, total_tokens=u64,
                       start_token=u64, rows=st.binary(max_size=300)), min_size=0, max_size=4),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_fuzz_requests(srv: ServerProcess, request: Any) -> None:
    ch, stub = srv.stub()
    with ch:
        if isinstance(request, list):
            code = status(lambda: stub.Push(iter(request), timeout=2))
        else:
            name = type(request).__name__.removesuffix("Request")
            code = status(lambda: getattr(stub, name)(request, timeout=2))
        assert code in DOCUMENTED, code
        info = stub.GetPoolInfo(pb.GetPoolInfoRequest())
        held = 0
        for tid in ("f1", "f2"):
            try:
                held += len(stub.Poll(pb.PollRequest(transfer_id=tid)).block_indices)
            except grpc.RpcError:
                pass
        assert held + info.free_blocks <= info.num_blocks
        for tid in ids_of(request) - {"f1", "f2"}:  # f1/f2 live on across examples
            cleanup(stub, tid)


def test_after_the_fuzz_nothing_is_leaked(srv: ServerProcess) -> None:
    ch, stub = srv.stub()
    with ch:
        for tid in ("f1", "f2"):
            cleanup(stub, tid)
    still_serving(srv)
    srv.assert_pool_free()
    print(f"bad input: {TRIED['count']} hostile requests tried")
