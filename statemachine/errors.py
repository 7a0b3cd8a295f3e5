"""Typed refusals of the core. The server maps each to the gRPC status of the same name."""

from __future__ import annotations


class TransferError(Exception):
    """A request the core refused. Nothing changed; the message says what to fix."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
