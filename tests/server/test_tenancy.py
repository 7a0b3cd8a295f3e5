"""Who may touch a transfer, through a real server: per-transfer secrets, operator tokens,
incarnations, streams that end with their transfer, bounded inputs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from kvferry.client import Client, TransferFailed
from kvferry.client.secrets import SENDER_SECRET_KEY, TRANSFER_SECRET_KEY, new_secret, sender_secret
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, start_server, wait_until

TOKEN = "service-token-for-tenancy"
ADMIN = "admin-token-for-tenancy"
ROW = 64
C = grpc.StatusCode
BEARER = (("authorization", f"Bearer {TOKEN}"),)
ADMIN_MD = (("authorization", f"Bearer {ADMIN}"),)


def receiver_md(secret: str) -> tuple[tuple[str, str], ...]:
    return (*BEARER, (TRANSFER_SECRET_KEY, secret))


def sender_md(secret: str) -> tuple[tuple[str, str], ...]:
    return (*BEARER, (SENDER_SECRET_KEY, sender_secret(secret)))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("tokens")
    (d / "token").write_text(TOKEN)
    (d / "admin").write_text(ADMIN)
    s = start_server(auth_token_file=d / "token", admin_token_file=d / "admin", bootstrap_timeout=5)
    yield s
    assert s.stop() == 0


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROW), dtype=np.uint8)


def refusal(call: Callable[[], Any]) -> tuple[C, str]:
    with pytest.raises(grpc.RpcError) as e:
        r = call()
        if hasattr(r, "__next__"):
            list(r)
    return e.value.code(), e.value.details() or ""


def open_with_rows(stub: Any, tid: str, secret: str, n: int = 16) -> pb.TransferStatus:
    """A transfer bound to ``secret``, window 8 of 16 tokens, its first window full."""
    md = receiver_md(secret)
    st = stub.Open(pb.OpenRequest(transfer_id=tid, window_tokens=8), metadata=md).status
    push = pb.PushRequest(transfer_id=tid, total_tokens=n, metadata=b"private: the prompt",
                          rows=rows(8).tobytes())
    stub.Push(iter([push]), metadata=sender_md(secret))
    return st


def test_a_stranger_with_the_bearer_token_can_do_nothing_to_a_bound_transfer(srv: ServerProcess) -> None:
    """Every RPC, with no secret, a wrong secret, and (for receiver calls) the sender's."""
    secret = new_secret()
    ch, stub = srv.stub()
    with ch:
        st = open_with_rows(stub, "bound", secret)
        before = stub.Poll(pb.PollRequest(transfer_id="bound"),
                           metadata=receiver_md(secret))
        wrong, other = new_secret(), sender_secret(new_secret())
        strangers = {
            "none": BEARER,
            "wrong transfer secret": receiver_md(wrong),
            "wrong sender secret": (*BEARER, (SENDER_SECRET_KEY, other)),
            "the sender's secret": sender_md(secret),
        }
        tid = "bound"

        def calls_of(md: tuple[tuple[str, str], ...], sender: bool) -> dict[str, Callable[[], Any]]:
            calls: dict[str, Callable[[], Any]] = {
                "Read": lambda: stub.Read(pb.ReadRequest(transfer_id=tid), metadata=md, timeout=5),
                "Resume": lambda: stub.Resume(pb.ResumeRequest(transfer_id=tid, sent_tokens=8),
                                              metadata=md),
                "Release": lambda: stub.Release(pb.ReleaseRequest(transfer_id=tid), metadata=md),
            }
            if sender:  # the sender's own calls work for it: only the receiver's are tried
                return calls
            return calls | {
                "Poll": lambda: stub.Poll(pb.PollRequest(transfer_id=tid), metadata=md),
                "Watch": lambda: stub.Watch(pb.WatchRequest(transfer_id=tid), metadata=md, timeout=5),
                "Abort": lambda: stub.Abort(pb.AbortRequest(transfer_id=tid, reason="x"), metadata=md),
                "Push": lambda: stub.Push(iter([pb.PushRequest(
                    transfer_id=tid, total_tokens=16, start_token=8, rows=rows(1).tobytes())]),
                    metadata=md, timeout=5),
                "Attach": lambda: stub.Attach(pb.AttachRequest(
                    transfer_id=tid, total_tokens=16, transport="shm"), metadata=md, timeout=5),
                "Commit": lambda: stub.Commit(pb.CommitRequest(
                    transfer_id=tid, epoch=st.window_epoch, start_token=8, tokens=1), metadata=md),
                "Detach": lambda: stub.Detach(pb.DetachRequest(transfer_id=tid, epoch=st.window_epoch),
                                              metadata=md),
            }

        for who, md in strangers.items():
            for name, call in calls_of(md, who == "the sender's secret").items():
                code, msg = refusal(call)
                assert code == C.PERMISSION_DENIED, (who, name, code, msg)
                assert secret not in msg and wrong not in msg and "secret" in msg, (who, name, msg)
        # Open of the same id is ALREADY_EXISTS for anyone: it changes nothing.
        assert refusal(lambda: stub.Open(pb.OpenRequest(transfer_id=tid), metadata=BEARER))[0] == C.ALREADY_EXISTS
        after = stub.Poll(pb.PollRequest(transfer_id=tid), metadata=receiver_md(secret))
        assert after == before, "a refused call changed the transfer"
        # The owner's calls all work, and the rows are the sender's.
        md = receiver_md(secret)
        data = b"".join(m.rows for m in stub.Read(pb.ReadRequest(transfer_id=tid), metadata=md))
        assert data == rows(8).tobytes()
        stub.Abort(pb.AbortRequest(transfer_id=tid, reason="done"), metadata=md)
        stub.Release(pb.ReleaseRequest(transfer_id=tid), metadata=md)
    srv.assert_pool_free()


def test_operator_views_need_the_admin_token_and_hide_bound_metadata(srv: ServerProcess) -> None:
    secret = new_secret()
    ch, stub = srv.stub()
    with ch:
        open_with_rows(stub, "listed", secret)
        for md, code in (((), C.UNAUTHENTICATED), (BEARER, C.PERMISSION_DENIED)):
            for got, msg in (refusal(lambda: stub.List(pb.ListRequest(), metadata=md)),  # noqa: B023
                             refusal(lambda: stub.Stats(pb.StatsRequest(), metadata=md))):  # noqa: B023
                assert got == code and "--admin-token-file" in msg and ADMIN not in msg
        listed = {s.status.transfer_id: s for s in stub.List(pb.ListRequest(), metadata=ADMIN_MD).transfers}
        assert listed["listed"].status.metadata == b"" and listed["listed"].metadata_bytes == 19
        assert stub.Stats(pb.StatsRequest(), metadata=ADMIN_MD).transfers_started >= 1
        # The admin token passes wherever the service token does.
        assert stub.GetPoolInfo(pb.GetPoolInfoRequest(), metadata=ADMIN_MD).num_blocks == 32
        md = receiver_md(secret)
        stub.Abort(pb.AbortRequest(transfer_id="listed"), metadata=md)
        stub.Release(pb.ReleaseRequest(transfer_id="listed"), metadata=md)


def test_the_client_library_carries_secrets_end_to_end(srv: ServerProcess) -> None:
    """send(secret=) and receive(secret=) move a windowed transfer; the sender may start first,
    and its claim keeps an Open without the secret out."""
    secret = new_secret()
    data = rows(40, seed=3)
    got: list[bytes] = []
    with Client(srv.target, token=TOKEN) as sender, Client(srv.target, token=TOKEN) as receiver:
        t = threading.Thread(target=lambda: sender.send("lib", data, secret=secret, transport="grpc"))
        t.start()
        wait_until(lambda: srv.metric("kvferry_senders_waiting") == 1, "the sender waiting for the Open")
        ch, stub = srv.stub()
        with ch:  # its claim refuses an Open without its secret, or with another one
            code, msg = refusal(lambda: stub.Open(pb.OpenRequest(transfer_id="lib"), metadata=BEARER))
            assert code == C.PERMISSION_DENIED and "waiting" in msg
            code, msg = refusal(lambda: stub.Open(pb.OpenRequest(transfer_id="lib"),
                                                  metadata=receiver_md(new_secret())))
            assert code == C.PERMISSION_DENIED and "does not match" in msg
        for w in receiver.receive("lib", 16, secret=secret, transport="grpc"):
            got.append(bytes(w.data))
        t.join()
    assert b"".join(got) == data.tobytes() and len(got) == 3
    srv.assert_pool_free()


def test_required_secrets_refuse_open_and_senders_without_one() -> None:
    s = start_server(require_transfer_secrets=True, bootstrap_timeout=5)
    try:
        ch, stub = s.stub()
        with ch:
            assert stub.GetPoolInfo(pb.GetPoolInfoRequest()).transfer_secrets_required
            code, msg = refusal(lambda: stub.Open(pb.OpenRequest(transfer_id="r")))
            assert code == C.PERMISSION_DENIED and "--require-transfer-secrets" in msg
            code, msg = refusal(lambda: stub.Push(iter([pb.PushRequest(
                transfer_id="r", total_tokens=1, rows=rows(1).tobytes())]), timeout=5))
            assert code == C.PERMISSION_DENIED and "--require-transfer-secrets" in msg
            short = refusal(lambda: stub.Open(pb.OpenRequest(transfer_id="r"),
                                              metadata=((TRANSFER_SECRET_KEY, "short"),)))
            assert short[0] == C.INVALID_ARGUMENT and "at least 16" in short[1]
        secret = new_secret()
        with Client(s.target) as c:
            t = threading.Thread(target=lambda: c.send("r", rows(4), secret=secret))
            t.start()
            windows = list(c.receive("r", secret=secret))
            t.join()
        assert bytes(windows[0].data) == rows(4).tobytes()
    finally:
        assert s.stop() == 0


def test_a_late_ranks_resume_never_touches_the_next_opening(srv: ServerProcess) -> None:
    """Finding 4: a slow rank's duplicate Resume(8) for a released transfer must not free the
    unread first window of the id's next opening."""
    ch, stub = srv.stub()
    with ch:
        def opening(seed: int) -> pb.TransferStatus:
            st = stub.Open(pb.OpenRequest(transfer_id="tp", window_tokens=8), metadata=BEARER).status
            stub.Push(iter([pb.PushRequest(transfer_id="tp", total_tokens=16,
                                           rows=rows(8, seed).tobytes())]), metadata=BEARER)
            return st

        first = opening(1)
        stub.Resume(pb.ResumeRequest(transfer_id="tp", sent_tokens=8, incarnation=first.incarnation),
                    metadata=BEARER)
        stub.Abort(pb.AbortRequest(transfer_id="tp", incarnation=first.incarnation), metadata=BEARER)
        stub.Release(pb.ReleaseRequest(transfer_id="tp", incarnation=first.incarnation), metadata=BEARER)
        second = opening(2)
        assert second.incarnation > first.incarnation
        code, msg = refusal(lambda: stub.Resume(pb.ResumeRequest(
            transfer_id="tp", sent_tokens=8, incarnation=first.incarnation), metadata=BEARER))
        assert code == C.FAILED_PRECONDITION and "was reopened" in msg
        for call in (lambda: stub.Release(pb.ReleaseRequest(transfer_id="tp", incarnation=first.incarnation),
                                          metadata=BEARER),
                     lambda: stub.Abort(pb.AbortRequest(transfer_id="tp", incarnation=first.incarnation),
                                        metadata=BEARER)):
            assert refusal(call)[0] == C.FAILED_PRECONDITION
        data = b"".join(m.rows for m in stub.Read(pb.ReadRequest(
            transfer_id="tp", incarnation=second.incarnation), metadata=BEARER))
        assert data == rows(8, 2).tobytes(), "the new opening's first window was freed"
        stub.Abort(pb.AbortRequest(transfer_id="tp"), metadata=BEARER)
        stub.Release(pb.ReleaseRequest(transfer_id="tp"), metadata=BEARER)


def test_incarnations_are_apart_across_restarts() -> None:
    seen = []
    for _ in range(2):
        s = start_server()
        try:
            ch, stub = s.stub()
            with ch:
                seen.append(stub.Open(pb.OpenRequest(transfer_id="same")).status.incarnation)
        finally:
            assert s.stop() == 0
    assert seen[1] > seen[0] > 0


def test_idle_push_streams_end_aborted_with_their_transfer_and_free_their_slots() -> None:
    """Finding 2: more failed transfers than --max-streams slots; every idle sender's stream ends
    ABORTED with the reason at once (abort, stall), and new Pushes still get in."""
    s = start_server(max_streams=2, stall_timeout=1.5, bootstrap_timeout=5)
    try:
        ch, stub = s.stub()
        with ch:
            def idle_sender(tid: str) -> tuple[threading.Thread, dict[str, Any], threading.Event]:
                stub.Open(pb.OpenRequest(transfer_id=tid, window_tokens=8))
                hold, out = threading.Event(), {}

                def messages() -> Iterator[pb.PushRequest]:
                    yield pb.PushRequest(transfer_id=tid, total_tokens=16, rows=rows(2).tobytes())
                    hold.wait(60)  # idle: the stream stays open, sending nothing

                def run() -> None:
                    try:
                        out["reply"] = stub.Push(messages(), timeout=60)
                    except grpc.RpcError as e:
                        out["error"] = (e.code(), e.details())

                th = threading.Thread(target=run)
                th.start()
                wait_until(lambda: stub.Poll(pb.PollRequest(transfer_id=tid)).sent_tokens == 2,
                           f"{tid}'s sender attaching")
                return th, out, hold

            ended = []
            for i in range(3):  # 3 > 2 slots: each must be freed before the next gets in
                tid = f"idle{i}"
                th, out, hold = idle_sender(tid)
                if i < 2:
                    stub.Abort(pb.AbortRequest(transfer_id=tid, reason=f"receiver gave up {i}"))
                    reason = f"receiver gave up {i}"
                else:  # the stall timeout fails it with no call at all
                    reason = "stall_timeout"
                th.join(30)
                hold.set()
                assert not th.is_alive(), f"{tid}'s idle Push outlived its transfer"
                code, details = out["error"]
                assert code == C.ABORTED and reason in details, out
                ended.append(tid)
            for tid in ended:
                stub.Release(pb.ReleaseRequest(transfer_id=tid))
            # Every slot is free again: a whole transfer goes through.
            stub.Open(pb.OpenRequest(transfer_id="after", window_tokens=8))
            reply = stub.Push(iter([pb.PushRequest(transfer_id="after", total_tokens=4,
                                                   rows=rows(4).tobytes())]), timeout=10)
            assert reply.status.state == pb.TRANSFER_STATE_SUCCESS
            # Shutdown fails what is live after the grace: the idle stream ends with it.
            th, out, hold = idle_sender("at-shutdown")
            assert s.stop() == 0
            th.join(30)
            hold.set()
            assert out["error"][0] == C.ABORTED and "shutdown" in out["error"][1], out
    finally:
        s.stop()


def test_bounded_inputs_are_refused_and_nothing_is_applied(srv: ServerProcess) -> None:
    """Finding 3: metadata over --max-metadata-bytes and an abort reason over 1 KiB are refused
    INVALID_ARGUMENT, saying the limit, and the refused Abort is not applied."""
    ch, stub = srv.stub()
    with ch:
        stub.Open(pb.OpenRequest(transfer_id="big"), metadata=BEARER)
        code, msg = refusal(lambda: stub.Push(iter([pb.PushRequest(
            transfer_id="big", total_tokens=8, metadata=bytes(5 << 20))]), metadata=BEARER, timeout=5))
        assert code == C.INVALID_ARGUMENT and "--max-metadata-bytes" in msg and "65536" in msg
        code, msg = refusal(lambda: stub.Abort(pb.AbortRequest(transfer_id="big", reason="x" * 1025),
                                               metadata=BEARER))
        assert code == C.INVALID_ARGUMENT and "1024" in msg
        st = stub.Poll(pb.PollRequest(transfer_id="big"), metadata=BEARER)
        assert st.state == pb.TRANSFER_STATE_BOOTSTRAPPING and st.metadata == b""
        # The largest metadata allowed, and the longest reason: the status fits a default client.
        stub.Push(iter([pb.PushRequest(transfer_id="big", total_tokens=8, metadata=bytes(64 << 10),
                                       rows=rows(1).tobytes())]), metadata=BEARER)
        stub.Abort(pb.AbortRequest(transfer_id="big", reason="y" * 1024), metadata=BEARER)
        st = stub.Poll(pb.PollRequest(transfer_id="big"), metadata=BEARER)
        assert len(st.metadata) == 64 << 10 and st.failure_reason.endswith("y" * 1024)
        stub.Release(pb.ReleaseRequest(transfer_id="big"), metadata=BEARER)
    srv.assert_pool_free()


def test_a_failed_transfer_raises_in_send_even_after_a_half_close(tmp_path: Path) -> None:
    """The blocking client's send() of a transfer aborted while its stream was idle raises
    TransferFailed with the reason (it used to get OK with FAILED inside)."""
    s = start_server(bootstrap_timeout=5)
    try:
        ch, stub = s.stub()
        with ch, Client(s.target) as c:
            stub.Open(pb.OpenRequest(transfer_id="h", window_tokens=8))
            out: dict[str, Any] = {}

            def send() -> None:
                try:
                    c.send("h", rows(16), transport="grpc")  # blocks: the window holds 8
                except TransferFailed as e:
                    out["error"] = e

            th = threading.Thread(target=send)
            th.start()
            wait_until(lambda: stub.Poll(pb.PollRequest(transfer_id="h")).sent_tokens == 8,
                       "the first window filling")
            stub.Abort(pb.AbortRequest(transfer_id="h", reason="no room"))
            th.join(30)
            assert "no room" in str(out["error"])
    finally:
        assert s.stop() == 0


def test_only_the_writer_lifts_the_fence_of_a_released_bound_transfer(srv: ServerProcess) -> None:
    """A fence outlives its transfer's Release; a stranger's Detach must not free blocks that the
    one-sided writer may still write into."""
    secret = new_secret()
    ch, stub = srv.stub()
    with ch:
        stub.Open(pb.OpenRequest(transfer_id="fenced", window_tokens=8), metadata=receiver_md(secret))
        grants = stub.Attach(pb.AttachRequest(transfer_id="fenced", total_tokens=16, transport="shm"),
                             metadata=sender_md(secret))
        grant = next(grants)  # the window is lent: a write may land any time now
        stub.Abort(pb.AbortRequest(transfer_id="fenced", reason="receiver gone"),
                   metadata=receiver_md(secret))
        stub.Release(pb.ReleaseRequest(transfer_id="fenced"), metadata=receiver_md(secret))
        grants.cancel()
        assert srv.pool_info().quarantined_blocks == 1
        detach = pb.DetachRequest(transfer_id="fenced", epoch=grant.epoch, incarnation=grant.incarnation)
        for md in (BEARER, sender_md(new_secret())):
            assert refusal(lambda: stub.Detach(detach, metadata=md))[0] == C.PERMISSION_DENIED  # noqa: B023
        assert srv.pool_info().quarantined_blocks == 1, "a stranger lifted the fence"
        assert stub.Detach(detach, metadata=sender_md(secret)).freed_blocks == 1
    srv.assert_pool_free()
