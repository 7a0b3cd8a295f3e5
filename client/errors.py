"""Errors a program can branch on: every refusal from a kvferry server, typed.

The server attaches a google.rpc.Status to each refusal (the ``grpc-status-details-bin``
trailer): an ErrorInfo whose ``reason`` is a stable code (``kvferry.statemachine.Reason``,
listed in docs/protocol.md, domain ``kvferry``), and a RetryInfo where retrying helps. The client
raises a ``KvferryError`` subclass per gRPC code carrying them, never a raw grpc error:

    try:
        client.send(...)
    except TransferFailed as e:        # ABORTED: the transfer failed; e.reason says why
        ...
    except ResourceExhausted as e:     # e.retry_after: seconds the server suggests
        ...
    except KvferryError as e:
        if e.error_reason == "STALE_INCARNATION": ...

``KvferryError`` is a ``grpc.RpcError`` (with ``code()`` and ``details()``), so code written
against raw grpc errors keeps working.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "kvferry"
DETAILS_KEY = "grpc-status-details-bin"


class KvferryError(grpc.RpcError):
    """A call the server (or the channel) refused. ``error_reason``: the stable code (ErrorInfo
    reason; "" when the refusal carried none, e.g. the server was unreachable);
    ``retry_after``: seconds to wait before retrying, when the server says retrying helps."""

    grpc_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, error_reason: str = "", retry_after: float | None = None,
                 info: dict[str, str] | None = None, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_reason = error_reason
        self.retry_after = retry_after
        self.info = info or {}
        self._code = code or self.grpc_code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self.message

    def __str__(self) -> str:
        why = f" {self.error_reason}" if self.error_reason else ""
        return f"{self._code.name}{why}: {self.message}"


class InvalidArgument(KvferryError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(KvferryError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(KvferryError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(KvferryError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(KvferryError):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(KvferryError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(KvferryError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(KvferryError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(KvferryError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KvferryError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(KvferryError):
    grpc_code = grpc.StatusCode.CANCELLED


class TransferFailed(KvferryError):
    """The transfer ended FAILED (aborted, timed out, ...); ``reason`` says why, ``status`` is
    its last status when known."""

    grpc_code = grpc.StatusCode.ABORTED

    def __init__(self, transfer_id: str, reason: str, status: Any = None,
                 error_reason: str = "TRANSFER_FAILED") -> None:
        super().__init__(f"transfer {transfer_id!r} failed: {reason}", error_reason)
        self.transfer_id = transfer_id
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return self.message


_BY_CODE: dict[grpc.StatusCode, type[KvferryError]] = {
    cls.grpc_code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
                                   OutOfRange, ResourceExhausted, PermissionDenied,
                                   Unauthenticated, Unavailable, DeadlineExceeded, Cancelled)
}


def details_of(error: grpc.RpcError) -> tuple[str, float | None, dict[str, str]]:
    """(ErrorInfo reason, RetryInfo seconds, ErrorInfo metadata) of a refusal, where it has them."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    raw = next((v for k, v in trailers or () if k == DETAILS_KEY), None)
    if raw is None:
        return "", None, {}
    status = status_pb2.Status.FromString(raw if isinstance(raw, bytes) else raw.encode())
    reason, retry, info = "", None, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            ei = error_details_pb2.ErrorInfo()
            detail.Unpack(ei)
            if ei.domain == DOMAIN:
                reason, info = ei.reason, dict(ei.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            retry = ri.retry_delay.ToTimedelta().total_seconds()
    return reason, retry, info


def typed(error: grpc.RpcError, transfer_id: str = "") -> KvferryError:
    """The typed error for a raw grpc one."""
    if isinstance(error, KvferryError):
        return error
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or code.name.lower()
    reason, retry, info = details_of(error)
    if code == grpc.StatusCode.ABORTED:
        # The transfer's failure reason follows "transfer 'x' failed: " in the server's message.
        text = message.split(" failed: ", 1)[1] if " failed: " in message else message
        failed = TransferFailed(transfer_id or info.get("transfer_id", ""), text,
                                error_reason=reason or "TRANSFER_FAILED")
        failed.message = message
        return failed
    cls = _BY_CODE.get(code, KvferryError)
    return cls(message, reason, retry, info, code)
