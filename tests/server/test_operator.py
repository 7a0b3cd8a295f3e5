"""The operator's view: Stats and List over gRPC, and `kvferry status` / `kvferry top` against a
live server."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from kvferry.client import Client
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess

ROW = 64


def kvferry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvferry.server", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "140"})


@pytest.fixture
def busy(seed: ServerProcess):  # type: ignore[no-untyped-def]
    """Five held transfers: two bootstrapping, two transferring, one aborted."""
    ch, stub = seed.stub()
    ids = [f"op-{i}" for i in range(5)]
    with ch:
        for tid in ids:
            stub.Open(pb.OpenRequest(transfer_id=tid, window_tokens=16))
        for tid in ids[1:3]:
            stub.Push(iter([pb.PushRequest(transfer_id=tid, total_tokens=40, rows=bytes(10 * ROW))]))
        stub.Abort(pb.AbortRequest(transfer_id=ids[4], reason="operator test"))
        yield seed, stub, ids
        for tid in ids:
            stub.Abort(pb.AbortRequest(transfer_id=tid))
            stub.Release(pb.ReleaseRequest(transfer_id=tid))


def test_stats(busy) -> None:  # type: ignore[no-untyped-def]
    _srv, stub, _ = busy
    stats = stub.Stats(pb.StatsRequest())
    counts = {pb.TransferState.Name(c.state): c.count for c in stats.transfers}
    assert counts == {"TRANSFER_STATE_BOOTSTRAPPING": 2, "TRANSFER_STATE_TRANSFERRING": 2,
                      "TRANSFER_STATE_RESUMING": 0, "TRANSFER_STATE_SUCCESS": 0,
                      "TRANSFER_STATE_FAILED": 1}
    assert stats.pool.free_blocks == stats.pool.num_blocks - 8  # 4 live windows of 2 blocks
    assert stats.uptime_seconds and not stats.draining
    assert stats.tokens_received >= 20


def test_list_pages_oldest_first_and_filters(busy) -> None:  # type: ignore[no-untyped-def]
    srv, stub, ids = busy
    first = stub.List(pb.ListRequest(page_size=2))
    assert [t.status.transfer_id for t in first.transfers] == ids[:2] and first.next_page_token
    second = stub.List(pb.ListRequest(page_size=2, page_token=first.next_page_token))
    third = stub.List(pb.ListRequest(page_size=2, page_token=second.next_page_token))
    assert [t.status.transfer_id for t in [*second.transfers, *third.transfers]] == ids[2:]
    assert not third.next_page_token
    live = stub.List(pb.ListRequest(states=[pb.TRANSFER_STATE_TRANSFERRING]))
    assert [t.status.transfer_id for t in live.transfers] == ids[1:3]
    failed = stub.List(pb.ListRequest(states=[pb.TRANSFER_STATE_FAILED])).transfers
    assert failed[0].outcome == "aborted" and failed[0].age_seconds
    with Client(srv.target) as c:
        assert [t.status.transfer_id for t in c.list_transfers(page_size=2)] == ids
    for bad in (pb.ListRequest(page_token="nope"), pb.ListRequest(page_size=5000),
                pb.ListRequest(states=[pb.TRANSFER_STATE_UNSPECIFIED])):
        with pytest.raises(grpc.RpcError) as e:
            stub.List(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_kvferry_status(busy) -> None:  # type: ignore[no-untyped-def]
    srv, _, ids = busy
    r = kvferry("status", "--target", srv.target)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "8 / 32 (25%)" in out and "oldest live transfers (4)" in out
    for tid in ids[:4]:
        assert tid in out
    live, failures = out.split("recent failures")
    assert ids[4] not in live and ids[4] in failures  # failed: not live, but listed with why
    assert "aborted" in failures
    assert "TRANSFERRING" in out and "10 / 40" in out


def test_kvferry_top_refreshes(busy) -> None:  # type: ignore[no-untyped-def]
    srv, _, _ = busy
    r = kvferry("top", "--target", srv.target, "--iterations", "3", "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("oldest live transfers") >= 1 and "op-0" in r.stdout


def test_status_of_an_unreachable_server_says_so() -> None:
    r = kvferry("status", "--target", "127.0.0.1:1")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


def test_status_with_auth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from support.kvserver import start_server

    token = tmp_path / "token"
    token.write_text("op-secret\n")
    srv = start_server(auth_token_file=token)
    try:
        assert "UNAUTHENTICATED" in kvferry("status", "--target", srv.target).stderr
        r = kvferry("status", "--target", srv.target, "--token-file", str(token))
        assert r.returncode == 0 and "pool blocks used" in r.stdout
    finally:
        assert srv.stop() == 0
