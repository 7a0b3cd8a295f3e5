"""The contract's own home: the error reasons are the proto's, every refusal about a transfer
names it in its ErrorInfo metadata (and why it failed, when it did), the client reads those facts
from there and not from message text, and the blocking client is the async one, method for
method."""

from __future__ import annotations

import inspect

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from kvferry.client import AsyncClient, Client
from kvferry.client.contract import DETAILS_KEY, ERROR_REASONS, INFO_FAILURE_REASON, INFO_TRANSFER_ID
from kvferry.client.errors import KvferryError, NotFound, TransferFailed, typed
from kvferry.statemachine import Reason
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess


def test_the_core_refuses_with_exactly_the_contracts_reasons() -> None:
    assert sorted(ERROR_REASONS) == sorted(Reason.all())


def _info(e: grpc.RpcError) -> tuple[str, dict[str, str]]:
    raw = dict(e.trailing_metadata())[DETAILS_KEY]  # type: ignore[attr-defined]
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def test_refusals_about_a_transfer_name_it_in_their_metadata(seed: ServerProcess) -> None:
    ch, stub = seed.stub()
    with ch:
        with pytest.raises(grpc.RpcError) as missing:
            stub.Poll(pb.PollRequest(transfer_id="never-opened"))
        assert _info(missing.value) == ("TRANSFER_NOT_FOUND", {INFO_TRANSFER_ID: "never-opened"})

        opened = stub.Open(pb.OpenRequest(transfer_id="meta", window_tokens=8)).status
        with pytest.raises(grpc.RpcError) as stale:
            stub.Resume(pb.ResumeRequest(transfer_id="meta", sent_tokens=8,
                                         incarnation=opened.incarnation + 1))
        assert _info(stale.value) == ("STALE_INCARNATION", {INFO_TRANSFER_ID: "meta"})

        stub.Abort(pb.AbortRequest(transfer_id="meta", reason="layout refused"))
        with pytest.raises(grpc.RpcError) as failed:  # a Push stream: the handler names it
            stub.Push(iter([pb.PushRequest(transfer_id="meta", total_tokens=8, rows=b"\0" * 64)]))
        assert failed.value.code() == grpc.StatusCode.ABORTED  # type: ignore[attr-defined]
        assert _info(failed.value) == ("TRANSFER_FAILED", {
            INFO_TRANSFER_ID: "meta", INFO_FAILURE_REASON: "aborted: layout refused"})
        stub.Release(pb.ReleaseRequest(transfer_id="meta"))

        stub.Open(pb.OpenRequest(transfer_id="ragged", window_tokens=8))
        with pytest.raises(grpc.RpcError) as ragged:  # refused at the stream's second message
            stub.Push(iter([pb.PushRequest(transfer_id="ragged", total_tokens=8, rows=b"\0" * 64),
                            pb.PushRequest(start_token=1, rows=b"\0" * 65)]))
        assert _info(ragged.value) == ("PARTIAL_ROW", {INFO_TRANSFER_ID: "ragged"})
        stub.Abort(pb.AbortRequest(transfer_id="ragged", reason="test over"))
        stub.Release(pb.ReleaseRequest(transfer_id="ragged"))

        with pytest.raises(grpc.RpcError) as hostile:  # a malformed id is not echoed back
            stub.Poll(pb.PollRequest(transfer_id="bad\nid"))
        assert _info(hostile.value) == ("BAD_TRANSFER_ID", {})


def test_the_client_takes_its_facts_from_the_metadata(seed: ServerProcess) -> None:
    with Client(seed.target) as c:
        with pytest.raises(NotFound) as missing:
            c.poll("nowhere")
        assert missing.value.transfer_id == "nowhere"
        assert missing.value.reason_code == pb.ERROR_REASON_TRANSFER_NOT_FOUND
        status = c.open("told", 8)
        c.abort("told", "the model changed", incarnation=status.incarnation)
        with pytest.raises(TransferFailed) as failed:
            c.send("told", b"\0" * 64 * 8, transport="grpc")
        assert (failed.value.transfer_id, failed.value.reason) == ("told", "aborted: the model changed")
        c.release("told")


class _Refusal(grpc.RpcError):
    """A refusal as a server of any wording would send it."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, facts: dict[str, str]) -> None:
        from google.protobuf import any_pb2

        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="kvferry", metadata=facts))
        self._code, self._message = code, message
        self._raw = status_pb2.Status(code=code.value[0], message=message,
                                      details=[detail]).SerializeToString()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((DETAILS_KEY, self._raw),)


def test_a_reworded_message_changes_no_fact() -> None:
    e = typed(_Refusal(grpc.StatusCode.ABORTED, "la transferencia t7 fracasó (abortada)",
                       "TRANSFER_FAILED", {INFO_TRANSFER_ID: "t7", INFO_FAILURE_REASON: "stall"}))
    assert isinstance(e, TransferFailed)
    assert (e.transfer_id, e.reason, e.error_reason) == ("t7", "stall", "TRANSFER_FAILED")
    assert e.details() == "la transferencia t7 fracasó (abortada)"
    plain = typed(_Refusal(grpc.StatusCode.NOT_FOUND, "??", "TRANSFER_NOT_FOUND", {}), "asked")
    assert isinstance(plain, KvferryError) and plain.transfer_id == "asked"


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(cls).items()
            if not name.startswith("_") and inspect.isfunction(member)}


def test_the_blocking_client_has_every_async_method_with_its_signature() -> None:
    ours = _public(Client)
    theirs = _public(AsyncClient)
    missing = sorted(set(theirs) - set(ours))
    assert not missing, f"Client lacks {missing}"
    for name, sig in theirs.items():
        assert list(ours[name].parameters.values())[1:] == list(sig.parameters.values())[1:], name
    assert inspect.signature(Client.__init__).parameters.keys() == \
        inspect.signature(AsyncClient.__init__).parameters.keys()
