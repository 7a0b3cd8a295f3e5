"""The google.rpc.Status every refusal carries (trailer ``grpc-status-details-bin``): an
ErrorInfo with the refusal's stable ``Reason`` (domain "kvferry"), and a RetryInfo where retrying
the same call on the same server helps (see "Errors a program can branch on" in
docs/protocol.md)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from kvferry.client.contract import DETAILS_KEY, DOMAIN, INFO_FAILURE_REASON, INFO_TRANSFER_ID
from kvferry.statemachine import Reason, TransferError, refusals

# Seconds to wait before retrying: room frees as transfers finish, streams close, faults pass.
# DRAINING has none: that server will not take the call again (another replica will).
RETRY_AFTER: dict[str, float] = {
    Reason.POOL_EXHAUSTED: 0.1,
    Reason.RESUMES_QUEUED: 0.05,
    Reason.TOO_MANY_TRANSFERS: 0.5,
    Reason.TOO_MANY_STREAMS: 0.1,
    Reason.FAULT_INJECTED: 0.05,
}


def trailers(code: grpc.StatusCode, message: str, reason: str, transfer_id: str = "",
             failure_reason: str = "") -> tuple[tuple[str, bytes], ...]:
    facts = {k: v for k, v in ((INFO_TRANSFER_ID, _valid_id(transfer_id)),
                               (INFO_FAILURE_REASON, failure_reason)) if v}
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=facts))
    details = [info]
    if reason in RETRY_AFTER:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(RETRY_AFTER[reason] * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return ((DETAILS_KEY, status.SerializeToString()),)


def _valid_id(transfer_id: str) -> str:
    """``transfer_id`` if it is one a transfer could have: a refusal of a malformed id (huge,
    unprintable) must not echo it into the trailers."""
    try:
        refusals.check_id(transfer_id)
    except TransferError:
        return ""
    return transfer_id


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                reason: str, transfer_id: str = "", failure_reason: str = "") -> None:
    """End the call with ``code`` and ``message``, and the details saying ``reason`` (and the
    transfer it concerns, and why that failed, where known)."""
    await context.abort(code, message, trailing_metadata=trailers(
        code, message, reason, transfer_id, failure_reason))
