"""The client half of same-host calls: the service's unary and server-streaming calls over the
server's Unix socket (``PoolInfo.local_calls_path``; frames in ``kvferry.client.frames``) instead
of gRPC, where the client runs on the server's host.

``Calls`` stands where the generated gRPC stub stood, with its methods and their signatures: each
call goes over the socket when the client uses one, else over gRPC, and answers the same way (the
same messages; a refusal as a ``grpc.aio.AioRpcError`` with the server's code, details and
trailers), so everything above it is written once. A client stream (Push) always takes gRPC.

A connection that closes (the server stopped or died) fails the calls on it with UNAVAILABLE and
no details, as gRPC fails calls to a server that is gone; the next call connects again, or takes
gRPC if the socket is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory

from kvferry.client import retries
from kvferry.client.frames import (
    CALL,
    CANCEL,
    END,
    MESSAGE,
    FrameError,
    Metadata,
    decode_end,
    encode_call,
    frame,
    read_frame,
)
from kvferry.v1 import transfer_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["TransferService"]
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _error(code: grpc.StatusCode, details: str, trailers: Metadata = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details)


class _Call:
    """One call's answers as they arrive, and how it ended (set as soon as its END arrives,
    whether or not its messages were taken: as a gRPC call's status is)."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: no more
        self.ended: asyncio.Future[grpc.aio.AioRpcError | None] = (
            asyncio.get_running_loop().create_future())

    def end(self, error: grpc.aio.AioRpcError | None) -> None:
        if not self.ended.done():
            self.ended.set_result(error)
            self.messages.put_nowait(None)

    async def next(self) -> bytes | None:
        """The next message; None once the call ended OK; raises the error it ended with."""
        message = await self.messages.get()
        if message is None:
            self.messages.put_nowait(None)  # asked again, the same answer
            error = self.ended.result()
            if error is not None:
                raise error
        return message


class Connection:
    """One Unix-socket connection, shared by many calls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self.lost = False
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                call, kind, payload = await read_frame(self._reader)
                c = self._calls.get(call)
                if c is None:
                    continue  # a call given up (cancelled, timed out): its answers are dropped
                if kind == MESSAGE:
                    c.messages.put_nowait(payload)
                elif kind == END:
                    del self._calls[call]
                    code, details, trailers = decode_end(payload)
                    c.end(_error(_CODES.get(code, grpc.StatusCode.UNKNOWN), details, trailers)
                          if code else None)
        except (asyncio.IncompleteReadError, ConnectionError, FrameError, OSError):
            pass
        finally:
            self.lost = True
            for c in self._calls.values():
                c.end(_error(grpc.StatusCode.UNAVAILABLE, ""))  # no details: unreachable
            self._calls.clear()
            self._writer.close()

    def start(self, method: str, metadata: Metadata, request: bytes) -> tuple[int, _Call]:
        cid, c = next(self._ids), _Call()
        if self.lost:
            c.end(_error(grpc.StatusCode.UNAVAILABLE, ""))
        else:
            self._calls[cid] = c
            self._writer.write(frame(cid, CALL, encode_call(method, metadata, request)))
        return cid, c

    def cancel(self, cid: int) -> None:
        """Give the call up; the server cancels its handler."""
        c = self._calls.pop(cid, None)
        if c is not None:
            c.end(_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))
            if not self.lost:
                self._writer.write(frame(cid, CANCEL))

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class NotConnected(grpc.aio.AioRpcError):
    """The socket could not be connected: the call was not sent (it may go through gRPC)."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "")


class Socket:
    """Where a client's same-host calls go: the server's socket, connected on first use.
    FALLBACK: a call that finds it cannot be connected goes through gRPC instead (``auto``)."""

    def __init__(self, path: str, fallback: bool = True) -> None:
        self.path = path
        self.fallback = fallback
        self._conn: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self.broken = False  # the last connect failed

    async def connection(self) -> Connection:
        if self._conn is not None and not self._conn.lost:
            return self._conn
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as e:
            # Gone (its server stopped, or restarted with a socket of another name): calls go
            # through gRPC until PoolInfo names a socket again (AsyncClient).
            self.broken = True
            raise NotConnected() from e
        self.broken = False
        self._conn = Connection(reader, writer)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


async def unary(socket: Socket, method: str, request: Any, parse: Callable[[bytes], Any],
                timeout: float | None, metadata: Metadata, retried: bool) -> Any:
    """One unary call, within TIMEOUT; RETRIED: repeated on UNAVAILABLE as gRPC would
    (``kvferry.client.retries``)."""
    async def call() -> Any:
        waits = retries.backoffs() if retried else iter(())
        while True:
            try:
                return await attempt()
            except NotConnected:
                raise  # nothing was sent: the caller may take gRPC at once
            except grpc.aio.AioRpcError as e:
                wait = next(waits, None)
                if e.code() != grpc.StatusCode.UNAVAILABLE or wait is None:
                    raise
            await asyncio.sleep(wait)

    async def attempt() -> Any:
        conn = await socket.connection()
        cid, c = conn.start(method, metadata, request.SerializeToString())
        try:
            answer = await c.next()
            if answer is None or await c.next() is not None:
                raise _error(grpc.StatusCode.INTERNAL, f"{method} answered with "
                             f"{'no message' if answer is None else 'more than one'}")
            return parse(answer)
        finally:
            conn.cancel(cid)  # nothing to do when it ended; else (cancelled, timed out) say so

    try:
        if timeout is None:
            return await call()
        if sys.version_info >= (3, 11):  # a deadline without a task of its own per call
            async with asyncio.timeout(timeout):
                return await call()
        return await asyncio.wait_for(call(), timeout)
    except asyncio.TimeoutError:
        raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None


class Stream:
    """A server-streaming call over the socket, as much of ``grpc.aio.UnaryStreamCall`` as
    kvferry's client uses: iterate it, ``cancel()`` it, ask how it ended (which, as with gRPC,
    is known once the server ended it, whether or not its messages were taken)."""

    def __init__(self, socket: Socket, method: str, request: Any, parse: Callable[[bytes], Any],
                 metadata: Metadata, retried: bool, fallback: Callable[[], Any]) -> None:
        """FALLBACK: the same call through gRPC, made if the socket cannot be connected (and
        SOCKET allows it)."""
        self._fallback = fallback
        self._grpc: Any = None  # the gRPC call that stands in, once made
        self._socket, self._method, self._request = socket, method, request
        self._parse, self._metadata, self._retried = parse, metadata, retried
        self._conn: Connection | None = None
        self._cid = 0
        self._call = _Call()
        self._cancelled = False
        self._started = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        try:
            self._conn = await self._socket.connection()
        except NotConnected as e:
            if self._socket.fallback and not self._cancelled:
                self._grpc = self._fallback()
            else:
                self._call.end(e)
            return
        if not self._cancelled:
            self._cid, self._call = self._conn.start(self._method, self._metadata,
                                                     self._request.SerializeToString())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        """Its messages. RETRIED: a call the server ended UNAVAILABLE before its first message
        is made again, as gRPC retries it (``kvferry.client.retries``)."""
        waits = retries.backoffs() if self._retried else iter(())
        answered = False
        try:
            while True:
                await self._started
                if self._grpc is not None:
                    async for message in self._grpc:
                        yield message
                    return
                try:
                    while (message := await self._call.next()) is not None:
                        answered = True
                        yield self._parse(message)
                    return
                except grpc.aio.AioRpcError as e:
                    wait = next(waits, None)
                    if answered or self._cancelled or wait is None or \
                            e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(wait)
                self._started = asyncio.ensure_future(self._start())
        finally:
            self.cancel()

    def cancel(self) -> bool:
        self._cancelled = True  # no retry either
        if self._grpc is not None:
            return bool(self._grpc.cancel())
        if self._call.ended.done():
            return False
        if self._conn is not None and self._cid:
            self._conn.cancel(self._cid)
        else:
            self._call.end(_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))
        return True

    async def _outcome(self) -> grpc.aio.AioRpcError | None:
        await self._started
        return await asyncio.shield(self._call.ended)

    async def code(self) -> grpc.StatusCode:
        await self._started
        if self._grpc is not None:
            return await self._grpc.code()
        e = await self._outcome()
        return grpc.StatusCode.OK if e is None else e.code()

    async def details(self) -> str:
        await self._started
        if self._grpc is not None:
            return await self._grpc.details()
        e = await self._outcome()
        return "" if e is None else (e.details() or "")

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._started
        if self._grpc is not None:
            return await self._grpc.initial_metadata()
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._started
        if self._grpc is not None:
            return await self._grpc.trailing_metadata()
        e = await self._outcome()
        return grpc.aio.Metadata() if e is None else e.trailing_metadata()


class Calls:
    """The TransferService's calls, each over the same-host socket when ``socket()`` gives one,
    else through the gRPC stub. Same attributes and signatures as the generated stub."""

    def __init__(self, stub: Any, socket: Callable[[], Socket | None]) -> None:
        for m in SERVICE.methods:
            parse = message_factory.GetMessageClass(m.output_type).FromString
            grpc_method = getattr(stub, m.name)
            path = f"/{SERVICE.full_name}/{m.name}"
            if m.client_streaming:
                setattr(self, m.name, grpc_method)
            elif m.server_streaming:
                setattr(self, m.name, self._streaming(grpc_method, path, parse, socket))
            else:
                setattr(self, m.name, self._unary(grpc_method, path, parse, socket))

    @staticmethod
    def _unary(grpc_method: Any, path: str, parse: Callable[[bytes], Any],
               socket: Callable[[], Socket | None]) -> Callable[..., Any]:
        retried = path.rsplit("/", 1)[1] in retries.RETRIED
        def call(request: Any, *, timeout: float | None = None, metadata: Metadata = ()) -> Any:
            s = socket()
            if s is None:
                return grpc_method(request, timeout=timeout, metadata=metadata)
            return local_or_grpc(s, request, timeout, metadata)

        async def local_or_grpc(s: Socket, request: Any, timeout: float | None,
                                metadata: Metadata) -> Any:
            try:
                return await unary(s, path, request, parse, timeout, metadata, retried)
            except NotConnected:
                if not s.fallback:
                    raise
            return await grpc_method(request, timeout=timeout, metadata=metadata)
        return call

    @staticmethod
    def _streaming(grpc_method: Any, path: str, parse: Callable[[bytes], Any],
                   socket: Callable[[], Socket | None]) -> Callable[..., Any]:
        retried = path.rsplit("/", 1)[1] in retries.RETRIED
        def call(request: Any, *, metadata: Metadata = ()) -> Any:
            s = socket()
            if s is None:
                return grpc_method(request, metadata=metadata)
            return Stream(s, path, request, parse, metadata, retried,
                          lambda: grpc_method(request, metadata=metadata))
        return call
