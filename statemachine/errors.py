"""Typed refusals of the core. The server maps each to the gRPC status of the same name, with a
google.rpc.ErrorInfo whose ``reason`` is the refusal's stable code (``Reason``): programs branch on
the reason, people read the message."""

from __future__ import annotations


class Reason:
    """Stable codes of refusals (ErrorInfo.reason, domain "kvferry"). Additive only: a code, once
    published, keeps its meaning. Each is documented in docs/protocol.md, and is a value of the
    contract's ``ErrorReason`` enum (kvferry.v1; a test holds the two to each other)."""

    # NOT_FOUND
    TRANSFER_NOT_FOUND = "TRANSFER_NOT_FOUND"
    NOT_OPENED = "NOT_OPENED"
    # INVALID_ARGUMENT
    BAD_TRANSFER_ID = "BAD_TRANSFER_ID"
    BAD_TOTAL_TOKENS = "BAD_TOTAL_TOKENS"
    METADATA_TOO_LARGE = "METADATA_TOO_LARGE"
    REASON_TOO_LARGE = "REASON_TOO_LARGE"
    WINDOW_TOO_LARGE = "WINDOW_TOO_LARGE"
    ROWS_PAST_TOTAL = "ROWS_PAST_TOTAL"
    PARTIAL_ROW = "PARTIAL_ROW"
    BAD_COMMIT = "BAD_COMMIT"
    BAD_STREAM = "BAD_STREAM"
    BAD_PAGE = "BAD_PAGE"
    TRANSPORT_NOT_OFFERED = "TRANSPORT_NOT_OFFERED"
    BAD_SECRET = "BAD_SECRET"
    BAD_REQUEST = "BAD_REQUEST"
    BAD_READER = "BAD_READER"
    # ALREADY_EXISTS
    TRANSFER_EXISTS = "TRANSFER_EXISTS"
    # FAILED_PRECONDITION
    STALE_INCARNATION = "STALE_INCARNATION"
    WRONG_STATE = "WRONG_STATE"
    TRANSFER_FINISHED = "TRANSFER_FINISHED"
    TRANSFER_LIVE = "TRANSFER_LIVE"
    SENT_TOKENS_MISMATCH = "SENT_TOKENS_MISMATCH"
    WINDOW_NOT_FULL = "WINDOW_NOT_FULL"
    NOTHING_TO_RESUME = "NOTHING_TO_RESUME"
    NOT_ATTACHED = "NOT_ATTACHED"
    TOTAL_TOKENS_MISMATCH = "TOTAL_TOKENS_MISMATCH"
    WINDOW_LENT = "WINDOW_LENT"
    GRANT_EXPIRED = "GRANT_EXPIRED"
    NOT_GRANTED = "NOT_GRANTED"
    POOL_NOT_EXPORTABLE = "POOL_NOT_EXPORTABLE"
    # OUT_OF_RANGE
    TOKEN_GAP = "TOKEN_GAP"
    # RESOURCE_EXHAUSTED (retry after RetryInfo's delay)
    POOL_EXHAUSTED = "POOL_EXHAUSTED"
    RESUMES_QUEUED = "RESUMES_QUEUED"
    TOO_MANY_TRANSFERS = "TOO_MANY_TRANSFERS"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    # ABORTED
    TRANSFER_FAILED = "TRANSFER_FAILED"
    WINDOW_CHANGED = "WINDOW_CHANGED"
    # UNAVAILABLE (retry after RetryInfo's delay)
    DRAINING = "DRAINING"
    FAULT_INJECTED = "FAULT_INJECTED"
    # PERMISSION_DENIED / UNAUTHENTICATED
    SECRET_REQUIRED = "SECRET_REQUIRED"
    SECRET_MISMATCH = "SECRET_MISMATCH"
    RECEIVER_SECRET_REQUIRED = "RECEIVER_SECRET_REQUIRED"
    ID_CLAIMED = "ID_CLAIMED"
    BEARER_TOKEN = "BEARER_TOKEN"
    ADMIN_TOKEN = "ADMIN_TOKEN"

    @classmethod
    def all(cls) -> list[str]:
        return [v for k, v in vars(cls).items() if k.isupper()]


class TransferError(Exception):
    """A request the core refused. Nothing changed; the message says what to fix, ``reason``
    (a ``Reason``) what a program can branch on. ``transfer_id``: the transfer it concerns ("" if
    none); ``failure_reason``: why that transfer failed, when the refusal is that it did. The
    server sends both in the refusal's ErrorInfo metadata, so programs never parse the message."""

    code = "UNKNOWN"

    def __init__(self, message: str, reason: str, transfer_id: str = "",
                 failure_reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.transfer_id = transfer_id
        self.failure_reason = failure_reason


class InvalidArgument(TransferError):
    code = "INVALID_ARGUMENT"


class NotFound(TransferError):
    code = "NOT_FOUND"


class AlreadyExists(TransferError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(TransferError):
    code = "FAILED_PRECONDITION"


class OutOfRange(TransferError):
    code = "OUT_OF_RANGE"


class ResourceExhausted(TransferError):
    code = "RESOURCE_EXHAUSTED"


class Aborted(TransferError):
    """The transfer is FAILED: the caller's stream ends with this."""

    code = "ABORTED"


class Unavailable(TransferError):
    code = "UNAVAILABLE"


class PermissionDenied(TransferError):
    """The call does not carry the transfer's secret (the shell checks secrets; see
    ``kvferry.server.transfer_secrets``)."""

    code = "PERMISSION_DENIED"
