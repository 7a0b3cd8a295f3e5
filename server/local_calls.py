"""Same-host calls: the TransferService's RPCs over a Unix socket beside the pool (frames in
``kvferry.client.frames``), for clients on this host, where a Python gRPC round trip costs far
more than the work it carries.

Every call runs the very handler gRPC runs, wrapped by the same pipeline (bearer token, injected
faults, decoding, metrics, core refusals turned into statuses), with a context that gives it the
call's metadata and takes its status: the fast path has no rules of its own. A call is cancelled
when its client cancels it or its connection closes (a client process that dies closes it at
once), as gRPC cancels a call whose stream is reset: a sender's Attach or a receiver's Watch that
ends this way is handled as over gRPC (the reconnect grace, then ``sender_gone`` /
``receiver_gone``).

Who may connect: the socket file has the pool file's mode (0600: this server's user, and root);
inside, every call presents what it would over gRPC (the bearer token, the transfer's secret).
Client streams (Push) are not carried: they stay on gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets

import grpc

from kvferry.client.frames import (
    CALL,
    CANCEL,
    END,
    MESSAGE,
    FrameError,
    Metadata,
    decode_call,
    encode_end,
    frame,
    read_frame,
)
from kvferry.server import logs, shm_file

PREFIX = "kvferry-calls-"
# Writes queued to one client beyond this wait for it to read (a Read of a large window).
HIGH_WATER = 8 * 1024 * 1024
OK = encode_end(0, "", ())


class _Ended(Exception):
    """The handler ended the call with a status (``context.abort``)."""


class LocalContext:
    """What the pipeline and handlers ask of a ``grpc.aio.ServicerContext``, for one call."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._metadata = metadata
        self._code: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: Metadata = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Metadata = ()) -> None:
        self._code, self.details, self.trailers = code, details, trailing_metadata
        raise _Ended(details)

    def peer(self) -> str:
        return "unix:"


class LocalCalls:
    """The Unix-socket listener: one task per connection, one per call."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers
        self.path = ""
        self._server: asyncio.AbstractServer | None = None
        self.connections = 0

    async def start(self, directory: str) -> str:
        """Listen on a new socket in DIRECTORY (named for this process, so that a later server
        sweeps one a killed server left); its path."""
        for name in shm_file.sweep(directory, PREFIX):
            logs.event(logging.WARNING, "removed_stale_socket", path=os.path.join(directory, name))
        path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        old = os.umask(0o177)  # created 0600, as the pool file: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path)
        finally:
            os.umask(old)
        self.path = path
        return path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls: dict[int, asyncio.Task[None]] = {}
        self.connections += 1
        try:
            while True:
                call, kind, payload = await read_frame(reader)
                if kind == CALL and call not in calls:
                    calls[call] = asyncio.create_task(self._call(call, payload, writer))
                    calls[call].add_done_callback(functools.partial(_forget, calls, call))
                elif kind == CANCEL:
                    running = calls.get(call)
                    if running is not None:
                        running.cancel()
                else:
                    raise FrameError(f"frame kind {kind} for call {call} from a client")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection (or its process ended)
        except FrameError as e:
            logs.event(logging.WARNING, "local_call_refused", error=str(e))
        finally:
            self.connections -= 1
            # As gRPC cancels the calls of a connection that is gone: their handlers' finally
            # blocks say so to the core (a sender's stream ended, a receiver's watch ended).
            for task in list(calls.values()):
                task.cancel()
            writer.close()

    async def _call(self, call: int, payload: bytes, writer: asyncio.StreamWriter) -> None:
        async def send(data: bytes) -> None:
            writer.write(data)
            if writer.transport.get_write_buffer_size() > HIGH_WATER:
                await writer.drain()

        try:
            method, metadata, request = decode_call(payload)
        except FrameError as e:
            await send(frame(call, END, encode_end(grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                   f"a malformed call: {e}", ())))
            return
        handler = self.handlers.get(method)
        if handler is None or handler.request_streaming:
            why = (f"{method} is not carried over the same-host socket: call it over gRPC"
                   if handler is not None else f"no method {method!r} here")
            await send(frame(call, END, encode_end(grpc.StatusCode.UNIMPLEMENTED.value[0], why, ())))
            return
        context = LocalContext(metadata)
        serialize = handler.response_serializer or (lambda b: b)
        try:
            if handler.response_streaming:
                async for response in handler.unary_stream(request, context):
                    await send(frame(call, MESSAGE, serialize(response)))
                await send(frame(call, END, OK))
            else:
                response = await handler.unary_unary(request, context)
                # The answer and its status in one write: one system call, one wake-up.
                await send(frame(call, MESSAGE, serialize(response)) + frame(call, END, OK))
        except _Ended:
            code = context.code() or grpc.StatusCode.UNKNOWN
            await send(frame(call, END, encode_end(code.value[0], context.details,
                                                   context.trailers)))
        except ConnectionError:
            pass  # the connection is gone (a write found it closed): nobody to answer
        except Exception as e:  # a handler bug: answered as gRPC answers one (UNKNOWN)
            logs.event(logging.ERROR, "local_call_error", method=method, error=repr(e))
            with contextlib.suppress(ConnectionError):
                await send(frame(call, END, encode_end(grpc.StatusCode.UNKNOWN.value[0],
                                                       f"{type(e).__name__}: {e}", ())))


def _forget(calls: dict[int, asyncio.Task[None]], call: int, _task: asyncio.Task[None]) -> None:
    calls.pop(call, None)
