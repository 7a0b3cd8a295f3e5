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

import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from kvferry.client.contract import (
    DETAILS_KEY,
    DOMAIN,
    INFO_FAILURE_REASON,
    INFO_TRANSFER_ID,
    error_reason_code,
)


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

    @property
    def reason_code(self) -> int:
        """``error_reason`` as the contract's ``kvferry.v1.ErrorReason`` value (0: none)."""
        return error_reason_code(self.error_reason)

    @property
    def transfer_id(self) -> str:
        """The transfer the refusal concerns, as the server said (ErrorInfo metadata); ""
        when it concerns none, or the server could not be reached."""
        return self.info.get(INFO_TRANSFER_ID, "")

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
                 error_reason: str = "TRANSFER_FAILED", info: dict[str, str] | None = None,
                 message: str = "") -> None:
        super().__init__(message or f"transfer {transfer_id!r} failed: {reason}", error_reason,
                         info={INFO_TRANSFER_ID: transfer_id, INFO_FAILURE_REASON: reason,
                               **(info or {})})
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


# Codes a call ends with when the server never answered: the message names the server.
_UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def typed(error: grpc.RpcError, transfer_id: str = "", server: str = "") -> KvferryError:
    """The typed error for a raw grpc one. Facts come from the refusal's ErrorInfo metadata, never
    from its message: the transfer it concerns (``transfer_id``, the id the call named, is the
    fallback for a refusal that carries none, e.g. the server was unreachable) and, for ABORTED,
    why the transfer failed."""
    if isinstance(error, KvferryError):
        return error
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or code.name.lower()
    reason, retry, info = details_of(error)
    if server and not reason and code in _UNANSWERED:
        message = f"the kvferry server at {server} did not answer: {message}"
    if transfer_id and INFO_TRANSFER_ID not in info:
        info[INFO_TRANSFER_ID] = transfer_id
    if code == grpc.StatusCode.ABORTED:
        return TransferFailed(info.get(INFO_TRANSFER_ID, ""),
                              info.get(INFO_FAILURE_REASON, message),
                              error_reason=reason or "TRANSFER_FAILED", info=info, message=message)
    cls = _BY_CODE.get(code, KvferryError)
    return cls(message, reason, retry, info, code)


P = ParamSpec("P")
T = TypeVar("T")


def _transfer_id_of(method: Callable[..., Any]) -> Callable[..., str]:
    """How to find the ``transfer_id`` argument of a call to ``method`` ("" if it has none)."""
    signature = inspect.signature(method)
    if "transfer_id" not in signature.parameters:
        return lambda *args, **kwargs: ""

    def find(*args: Any, **kwargs: Any) -> str:
        try:
            value = signature.bind_partial(*args, **kwargs).arguments.get("transfer_id", "")
        except TypeError:
            return ""
        return value if isinstance(value, str) else ""

    return find


def typed_errors(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A public call raising ``KvferryError``s, never raw grpc errors. A refusal names its
    transfer itself; the call's own ``transfer_id`` argument stands in where it cannot (the
    server was unreachable), and the client's target names the server that did not answer."""
    transfer_id = _transfer_id_of(method)

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except KvferryError:
            raise
        except grpc.RpcError as e:
            raise typed(e, transfer_id(*args, **kwargs), _server(args)) from e

    return call


def typed_stream(method: Callable[P, AsyncGenerator[T, None]]) -> Callable[P, AsyncGenerator[T, None]]:
    """``typed_errors`` for a method that yields: its items, with a gRPC error turned into its
    typed KvferryError, and the generator closed however the consumer stops."""
    transfer_id = _transfer_id_of(method)

    @functools.wraps(method)
    async def stream(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:
        items = method(*args, **kwargs)
        try:
            async for item in items:
                yield item
        except KvferryError:
            raise
        except grpc.RpcError as e:
            raise typed(e, transfer_id(*args, **kwargs), _server(args)) from e
        finally:
            await items.aclose()

    return stream


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the server could not be reached (no answer at all, rather than a
    refusal): then there is no point in telling it anything, e.g. in a cleanup."""
    if not isinstance(error, grpc.RpcError) or not hasattr(error, "code"):
        return False
    return error.code() in _UNANSWERED and not details_of(error)[0]


def _server(args: tuple[Any, ...]) -> str:
    """The target of the client whose method was called (its first argument)."""
    return str(getattr(args[0], "target", "")) if args else ""


async def quietly(call: Awaitable[Any]) -> None:
    """Best-effort cleanup: the transfer may already be gone, or the channel closed."""
    try:
        await call
    except grpc.aio.AioRpcError:
        pass
