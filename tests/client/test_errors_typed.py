"""Errors a program can branch on: every refusal carries a google.rpc.Status with an ErrorInfo
(stable reason, domain kvferry) and, where retrying helps, a RetryInfo; the client library raises
typed exceptions carrying them, sync and async alike, never a raw grpc error."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kvferry.client import AsyncClient, Client, KvferryError, TransferFailed
from kvferry.client import errors as E
from kvferry.statemachine import Reason
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def test_a_generic_client_reads_the_reason_and_the_retry_delay(seed: ServerProcess) -> None:
    """Any gRPC client with grpcio-status (or the googleapis protos) can branch on the reason."""
    with grpc.insecure_channel(seed.target) as ch:
        stub_call = ch.unary_unary("/kvferry.v1.TransferService/Open",
                                   request_serializer=pb.OpenRequest.SerializeToString,
                                   response_deserializer=pb.OpenResponse.FromString)
        with pytest.raises(grpc.RpcError) as e:
            stub_call(pb.OpenRequest(transfer_id="huge", window_tokens=10**9))
        status = rpc_status.from_call(e.value)
        assert status is not None and status.message == e.value.details()
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.domain, info.reason) == ("kvferry", "WINDOW_TOO_LARGE")
        # The pool has 32 blocks: fill it, and the next Open is told to retry after a delay.
        for i in range(4):
            stub_call(pb.OpenRequest(transfer_id=f"fill{i}", window_tokens=64))
        with pytest.raises(grpc.RpcError) as e:
            stub_call(pb.OpenRequest(transfer_id="one-too-many", window_tokens=64))
        status = rpc_status.from_call(e.value)
        retry = error_details_pb2.RetryInfo()
        assert status is not None and status.details[0].Unpack(info) and info.reason == "POOL_EXHAUSTED"
        assert status.details[1].Unpack(retry) and retry.retry_delay.ToTimedelta().total_seconds() == 0.1
        release = ch.unary_unary("/kvferry.v1.TransferService/Release",
                                 request_serializer=pb.ReleaseRequest.SerializeToString,
                                 response_deserializer=pb.ReleaseResponse.FromString)
        abort = ch.unary_unary("/kvferry.v1.TransferService/Abort",
                               request_serializer=pb.AbortRequest.SerializeToString,
                               response_deserializer=pb.TransferStatus.FromString)
        for i in range(4):
            abort(pb.AbortRequest(transfer_id=f"fill{i}"))
            release(pb.ReleaseRequest(transfer_id=f"fill{i}"))


def test_the_blocking_client_raises_typed_errors(seed: ServerProcess) -> None:
    ch, stub = seed.stub()
    with ch, Client(seed.target) as c:
        with pytest.raises(E.NotFound) as nf:
            c.poll("never-opened")
        assert nf.value.error_reason == Reason.TRANSFER_NOT_FOUND and "never opened" in str(nf.value)
        assert nf.value.code() == grpc.StatusCode.NOT_FOUND  # still a grpc.RpcError
        opened = stub.Open(pb.OpenRequest(transfer_id="typed", window_tokens=8))
        with pytest.raises(E.FailedPrecondition) as live:
            c.release("typed")
        assert live.value.error_reason == Reason.TRANSFER_LIVE
        with pytest.raises(E.FailedPrecondition) as stale:
            c.abort("typed", "late", incarnation=opened.status.incarnation + 1)
        assert stale.value.error_reason == Reason.STALE_INCARNATION
        with pytest.raises(E.InvalidArgument) as bad:
            c.abort("typed", "x" * 2000)
        assert bad.value.error_reason == Reason.REASON_TOO_LARGE and bad.value.retry_after is None
        with pytest.raises(ValueError, match="no rows"):  # not an IndexError from deep inside
            c.send("typed", np.zeros((0, 64), dtype=np.uint8))
        c.abort("typed", "done")
        c.release("typed")


def test_the_async_client_raises_typed_errors_from_every_kind_of_call(seed: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(seed.target) as c:
            with pytest.raises(E.NotFound):
                await c.release("never-opened")
            with pytest.raises(E.InvalidArgument) as bad:  # an async generator: receive
                async for _ in c.receive("bad id"):
                    pass
            assert bad.value.error_reason == Reason.BAD_TRANSFER_ID
            await c.stub.Open(pb.OpenRequest(transfer_id="async-typed", window_tokens=8))
            await c.abort("async-typed", "no longer wanted")
            with pytest.raises(TransferFailed) as failed:  # a send into a failed transfer
                await c.send("async-typed", np.zeros((4, 64), dtype=np.uint8), transport="grpc")
            assert failed.value.error_reason == Reason.TRANSFER_FAILED
            assert "no longer wanted" in failed.value.reason
            await c.release("async-typed")

    asyncio.run(main())


def test_an_unreachable_server_is_a_typed_error_too() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket closes
    with Client(f"127.0.0.1:{port}") as c, pytest.raises(E.Unavailable) as e:
        c.pool_info()
    assert isinstance(e.value, KvferryError) and e.value.error_reason == ""


def test_every_reason_is_documented() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    section = doc[doc.index("## Errors a program can branch on"):]
    for reason in Reason.all():
        assert re.search(rf"`{reason}`", section), f"docs/protocol.md does not explain {reason}"
