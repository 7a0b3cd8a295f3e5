"""The core's random interleavings again, fewer of them, against a real server over gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvferry.v1 import transfer_pb2 as pb

from support.budget import examples
from support.kvserver import ServerProcess, start_server

ROW = 64
IDS = st.sampled_from(["x", "y", "z"])
SERVER: ServerProcess | None = None


def row(gen: int, token: int) -> bytes:
    """The row a sender of generation ``gen`` sends for ``token``: distinct per token and gen."""
    return bytes((token + 31 * k + 17 * gen) % 256 for k in range(ROW))


class ServerMachine(RuleBasedStateMachine):
    TIMERS = False  # whether the server's timeouts may fire between two calls of one rule

    def __init__(self) -> None:
        super().__init__()
        assert SERVER is not None
        self.ch, self.stub = SERVER.stub()
        self.gen: dict[str, int] = {}  # transfer id -> generation of its current incarnation
        self.total: dict[str, int] = {}
        self.last_sent: dict[str, int] = {}
        self.terminal: dict[str, int] = {}
        self.counter = 0
        # Every incarnation each id was opened with: older ones are what a late rank still holds.
        self.incarnations: dict[str, list[int]] = {}

    def _call(self, fn, *args, **kw):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, timeout=5, **kw)
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
                                grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.ABORTED), (e.code(), e.details())
            return None

    @rule(tid=IDS, window=st.sampled_from([0, 8, 16, 24, 300]))
    def open(self, tid: str, window: int) -> None:
        opened = self._call(self.stub.Open, pb.OpenRequest(transfer_id=tid, window_tokens=window))
        if opened:
            seen = [i for ids in self.incarnations.values() for i in ids]
            assert opened.status.incarnation not in seen, "an incarnation was given out twice"
            self.incarnations.setdefault(tid, []).append(opened.status.incarnation)
            self.counter += 1
            self.gen[tid] = self.counter
            self.last_sent[tid] = 0
            self.terminal.pop(tid, None)

    @rule(tid=IDS, total=st.integers(1, 100), offset=st.sampled_from([-3, 0, 0, 0, 2]),
          rows=st.integers(0, 20))
    def push(self, tid: str, total: int, offset: int, rows: int) -> None:
        st_ = self._call(self.stub.Poll, pb.PollRequest(transfer_id=tid))
        if st_ is None:
            return
        total = st_.total_tokens or total
        self.total.setdefault(tid, total)
        start = max(0, st_.sent_tokens + offset)
        room = max(0, st_.window_start_token + st_.window_tokens - st_.sent_tokens)
        if st_.state == pb.TRANSFER_STATE_BOOTSTRAPPING:
            room = st_.window_tokens
        # Never more than fits (a Push that must wait would block this single-threaded test).
        n = max(0, min(rows, st_.sent_tokens + room - start, total - start))
        gen = self.gen.get(tid, 0)
        msg = pb.PushRequest(transfer_id=tid, total_tokens=total, start_token=start,
                             rows=b"".join(row(gen, i) for i in range(start, start + n)))
        self._call(self.stub.Push, iter([msg]))

    @rule(tid=IDS)
    def read(self, tid: str) -> None:
        st_ = self._call(self.stub.Poll, pb.PollRequest(transfer_id=tid))
        if st_ is None:
            return
        try:
            msgs = list(self.stub.Read(pb.ReadRequest(transfer_id=tid), timeout=5))
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
            return
        data = b"".join(m.rows for m in msgs)
        gen = self.gen.get(tid, 0)
        start = msgs[0].start_token if msgs else st_.window_start_token
        expect = b"".join(row(gen, i) for i in range(start, start + len(data) // ROW))
        assert data == expect, "Read returned rows that are not this transfer's, in order"

    @rule(tid=IDS, delta=st.sampled_from([-4, 0, 0, 1]), ranks=st.integers(1, 3),
          window=st.sampled_from([0, 8, 32]))
    def resume(self, tid: str, delta: int, ranks: int, window: int) -> None:
        st_ = self._call(self.stub.Poll, pb.PollRequest(transfer_id=tid))
        if st_ is None:
            return
        req = pb.ResumeRequest(transfer_id=tid, sent_tokens=max(0, st_.sent_tokens + delta),
                               window_tokens=window)
        replies = [self._call(self.stub.Resume, req) for _ in range(ranks)]
        assert sum(1 for r in replies if r is not None and not r.duplicate) <= 1

    @rule(tid=IDS, pick=st.integers(0, 10), call=st.sampled_from(["Resume", "Read", "Abort",
                                                                   "Release", "Poll"]))
    def stale_rank(self, tid: str, pick: int, call: str) -> None:
        """A rank still working on an earlier opening of ``tid``: whatever it asks is refused,
        and the opening held now does not change."""
        older = self.incarnations.get(tid, [])[:-1]
        before = self._call(self.stub.Poll, pb.PollRequest(transfer_id=tid))
        if not older or before is None:
            return
        inc = older[pick % len(older)]
        # A resume at the current sent_tokens: the one that would be applied if it were taken.
        request = {
            "Resume": lambda: self.stub.Resume(pb.ResumeRequest(
                transfer_id=tid, sent_tokens=before.sent_tokens, incarnation=inc), timeout=5),
            "Read": lambda: list(self.stub.Read(pb.ReadRequest(transfer_id=tid, incarnation=inc),
                                                timeout=5)),
            "Abort": lambda: self.stub.Abort(pb.AbortRequest(transfer_id=tid, reason="late",
                                                             incarnation=inc), timeout=5),
            "Release": lambda: self.stub.Release(pb.ReleaseRequest(transfer_id=tid,
                                                                   incarnation=inc), timeout=5),
            "Poll": lambda: self.stub.Poll(pb.PollRequest(transfer_id=tid, incarnation=inc),
                                           timeout=5),
        }[call]
        with pytest.raises(grpc.RpcError) as e:
            request()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
        assert "reopened" in (e.value.details() or "")
        after = self._call(self.stub.Poll, pb.PollRequest(transfer_id=tid))
        if self.TIMERS and (after is None or after.state != before.state):
            return  # a timeout fired meanwhile (on the server with short timeouts)
        assert after is not None, f"a stale {call} released the opening held"
        for field in ("incarnation", "state", "sent_tokens", "window_epoch", "resume_count"):
            assert getattr(after, field) == getattr(before, field), f"a stale {call} changed {field}"

    @rule(tid=IDS, really=st.sampled_from([False, False, True]))
    def abort(self, tid: str, really: bool) -> None:
        if really:
            self._call(self.stub.Abort, pb.AbortRequest(transfer_id=tid, reason="chaos"))

    @rule(tid=IDS)
    def release(self, tid: str) -> None:
        self._call(self.stub.Release, pb.ReleaseRequest(transfer_id=tid))

    @invariant()
    def pool_accounting_and_monotonic_progress(self) -> None:
        # The pool and the transfers are read in several calls. With timers on, a timeout or a
        # retention release may land between them: then the reading is taken again, until the
        # pool read before and after the transfers agrees (a timeout fires at most once each).
        for _ in range(10):
            info = self.stub.GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5)
            held = 0
            for tid in ("x", "y", "z"):
                st_ = self._call(self.stub.Poll, pb.PollRequest(transfer_id=tid))
                if st_ is None:
                    continue
                held += len(st_.block_indices)
                assert st_.sent_tokens >= self.last_sent.get(tid, 0)
                self.last_sent[tid] = st_.sent_tokens
                if tid in self.terminal:
                    assert st_.state == self.terminal[tid], "a terminal state was left"
                elif st_.state in (pb.TRANSFER_STATE_SUCCESS, pb.TRANSFER_STATE_FAILED):
                    self.terminal[tid] = st_.state
            after = self.stub.GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5)
            steady = (after.free_blocks, after.transfers) == (info.free_blocks, info.transfers)
            if steady or not self.TIMERS:
                break
        assert held + info.free_blocks == info.num_blocks, "blocks owned twice or leaked"

    def teardown(self) -> None:
        for tid in ("x", "y", "z"):
            self._call(self.stub.Abort, pb.AbortRequest(transfer_id=tid, reason="teardown"))
            self._call(self.stub.Release, pb.ReleaseRequest(transfer_id=tid))
        info = self.stub.GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5)
        assert info.free_blocks == info.num_blocks and info.transfers == 0
        self.ch.close()


class ServerMachineWithClock(ServerMachine):
    """The same, on a server whose timeouts are short, with waits past each of them (the gRPC
    stand-in for the core test's clock jumps: bootstrap, lease, stall and retention fire between
    requests)."""

    TIMERS = True

    @rule(seconds=st.sampled_from([0.05, 0.25, 0.45, 0.65]))
    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def teardown(self) -> None:
        # Leave everything to the clock: what is live must time out (bootstrap, lease or stall,
        # all under 0.6 s) and retention (0.5 s more) must release it all.
        time.sleep(1.3)
        assert self.stub.GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5).transfers == 0
        super().teardown()


@pytest.fixture(scope="module", autouse=True)
def _server() -> Iterator[None]:
    global SERVER
    SERVER = start_server(num_blocks=12, block_tokens=8, default_window_tokens=16)
    yield
    assert SERVER.stop() == 0
    SERVER = None


@pytest.fixture
def _fast_server() -> Iterator[None]:
    global SERVER
    steady, SERVER = SERVER, start_server(num_blocks=12, block_tokens=8, default_window_tokens=16,
                                          bootstrap_timeout=0.2, lease_timeout=0.4,
                                          stall_timeout=0.6, retention=0.5)
    try:
        yield
        # The waits did fire timeouts: the interleavings crossed them, not just ran beside them.
        timed_out = sum(SERVER.metric("kvferry_transfers_finished_total", f'outcome="{o}"')
                        for o in ("bootstrap_timeout", "lease_expired", "stall_timeout"))
        assert timed_out > 0 and SERVER.metric("kvferry_transfers_released_total", 'by="retention"') > 0
    finally:
        assert SERVER.stop() == 0
        SERVER = steady


ServerMachine.TestCase.settings = settings(
    max_examples=examples(60, 1000), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TestServerInterleavings = ServerMachine.TestCase

ServerMachineWithClock.TestCase.settings = settings(
    max_examples=examples(10, 100), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.usefixtures("_fast_server")
class TestServerInterleavingsWithTimeouts(ServerMachineWithClock.TestCase):  # type: ignore[misc,valid-type]
    pass
