"""asyncio client: a sender's ``send`` and a receiver's ``receive``, so no serving stack writes the
poll -> read -> resume loop (or its guard) itself."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc
import numpy as np

from kvferry.client.errors import KvferryError, TransferFailed, typed
from kvferry.client.limits import MESSAGE_BUDGET, TransportUnavailable
from kvferry.client.mooncake import WriteMayLand
from kvferry.client.rows import as_row_bytes
from kvferry.client.secrets import receiver_metadata, sender_metadata
from kvferry.client.transports import (
    ONE_SIDED,
    Writer,
    check_transport,
    source_rows,
    unavailable,
    why_not,
)
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from kvferry.client.cuda_ipc import MappedPool
    from kvferry.client.shm import ShmPool

# Push messages stay inside gRPC's default 4 MiB limit, whatever the server accepts.
DEFAULT_CHUNK_BYTES = MESSAGE_BUDGET
# One-sided writes at least this large run in a thread, so the event loop (receives, other
# transfers) goes on meanwhile; smaller ones are done inline.
INLINE_WRITE_BYTES = 1 << 20

# Calls that are safe to repeat are retried by gRPC itself on UNAVAILABLE. Resume is among them:
# a repeat of an applied resume is answered as a duplicate, which is the point of the guard.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "kvferry.v1.TransferService", "method": m}
             for m in ("GetPoolInfo", "Poll", "Read", "Resume", "Abort")],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})

SUCCESS = pb.TRANSFER_STATE_SUCCESS
FAILED = pb.TRANSFER_STATE_FAILED
T = TypeVar("T")
P = ParamSpec("P")


def _typed_errors(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Public calls raise ``KvferryError``s (``kvferry.client.errors``), never raw grpc errors."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except KvferryError:
            raise
        except grpc.RpcError as e:  # args[0] is the client; a transfer id, if any, follows
            raise typed(e, args[1] if len(args) > 1 and isinstance(args[1], str) else "") from e

    return call


@dataclass(frozen=True)
class Window:
    """One window of received rows: tokens [start_token, start_token + num_tokens). ``data`` is
    the receiver's own copy, or with ``receive(views=True)`` a view into the mapped pool, valid
    until the next window is asked for."""

    transfer_id: str
    start_token: int
    data: bytes | memoryview
    row_bytes: int
    total_tokens: int
    metadata: bytes
    last: bool

    @property
    def num_tokens(self) -> int:
        return len(self.data) // self.row_bytes

    def rows(self) -> np.ndarray:
        """The rows as a read-only uint8 array [num_tokens, row_bytes] over ``data`` (no copy)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(self.num_tokens, self.row_bytes)


class AsyncClient:
    def __init__(self, target: str, *, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 call_metadata: Sequence[tuple[str, str]] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        """``token``: the server's bearer token (--auth-token-file), sent with every call.
        ``credentials``: TLS, e.g. ``grpc.ssl_channel_credentials(ca, key, cert)``."""
        opts = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_SERVICE_CONFIG),
                *options]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=opts)
        self.stub = pb_grpc.TransferServiceStub(self.channel)
        self._md = tuple(call_metadata) + ((("authorization", f"Bearer {token}"),) if token else ())
        self._pool: asyncio.Future[pb.PoolInfo] | None = None
        # The server's pool mapped into this process, per transport (mapped once, kept).
        self._mapped: dict[str, Any] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    @_typed_errors
    async def pool_info(self, refresh: bool = False) -> pb.PoolInfo:
        """The server's pool; cached (concurrent first callers share one call) unless refresh."""
        failed = self._pool is not None and self._pool.done() and (
            self._pool.cancelled() or self._pool.exception() is not None)
        if self._pool is None or refresh or failed:
            self._pool = asyncio.ensure_future(
                self.stub.GetPoolInfo(pb.GetPoolInfoRequest(), metadata=self._md))
        return await asyncio.shield(self._pool)

    # ``secret``: the transfer's secret (kvferry.client.secrets), for a transfer bound to one.
    # ``incarnation``: only the opening of the id with this TransferStatus.incarnation (0: any).

    @_typed_errors
    async def poll(self, transfer_id: str, *, secret: str | None = None,
                   incarnation: int = 0) -> pb.TransferStatus:
        return await self._poll(transfer_id, self._md + receiver_metadata(secret), incarnation)

    @_typed_errors
    async def abort(self, transfer_id: str, reason: str, *, secret: str | None = None,
                    incarnation: int = 0) -> pb.TransferStatus:
        return await self._abort(transfer_id, reason, self._md + receiver_metadata(secret),
                                 incarnation)

    @_typed_errors
    async def release(self, transfer_id: str, *, secret: str | None = None,
                      incarnation: int = 0) -> pb.ReleaseResponse:
        return await self.stub.Release(pb.ReleaseRequest(transfer_id=transfer_id,
                                                         incarnation=incarnation),
                                       metadata=self._md + receiver_metadata(secret))

    @_typed_errors
    async def open(self, transfer_id: str, window_tokens: int = 0, *,
                   secret: str | None = None) -> pb.TransferStatus:
        """Receiver: create the transfer and its first window, and return at once (a sender
        may come later). Take it in with ``receive(open=False, incarnation=...)``: the split
        lets one process open a transfer and another read it."""
        opened = await self.stub.Open(pb.OpenRequest(transfer_id=transfer_id,
                                                     window_tokens=window_tokens),
                                      metadata=self._md + receiver_metadata(secret))
        return opened.status

    async def watch(self, transfer_id: str, *, secret: str | None = None,
                    incarnation: int = 0) -> AsyncGenerator[pb.TransferStatus, None]:
        """The transfer's status now, then at every change, ending after a terminal state."""
        call = self.stub.Watch(pb.WatchRequest(transfer_id=transfer_id, incarnation=incarnation),
                               metadata=self._md + receiver_metadata(secret))

        async def statuses() -> AsyncGenerator[pb.TransferStatus, None]:
            try:
                async for st in call:
                    yield st
            finally:
                call.cancel()

        async with contextlib.aclosing(_typed_stream(statuses(), transfer_id)) as stream:
            async for st in stream:
                yield st

    async def _poll(self, transfer_id: str, md: tuple[tuple[str, str], ...],
                    incarnation: int = 0) -> pb.TransferStatus:
        return await self.stub.Poll(pb.PollRequest(transfer_id=transfer_id, incarnation=incarnation),
                                    metadata=md)

    async def _abort(self, transfer_id: str, reason: str, md: tuple[tuple[str, str], ...],
                     incarnation: int = 0) -> pb.TransferStatus:
        return await self.stub.Abort(pb.AbortRequest(transfer_id=transfer_id, reason=reason,
                                                     incarnation=incarnation), metadata=md)

    @_typed_errors
    async def stats(self) -> pb.StatsResponse:
        return await self.stub.Stats(pb.StatsRequest(), metadata=self._md)

    @_typed_errors
    async def list_transfers(self, states: Sequence[pb.TransferState] = (), page_size: int = 100,
                             limit: int | None = None) -> list[pb.TransferSummary]:
        """Held transfers, oldest first, following pages up to ``limit``."""
        out: list[pb.TransferSummary] = []
        token = ""
        while True:
            page = await self.stub.List(pb.ListRequest(page_size=page_size, page_token=token,
                                                       states=list(states)), metadata=self._md)
            out.extend(page.transfers)
            token = page.next_page_token
            if not token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    @_typed_errors
    async def export_pool(self) -> pb.ExportPoolResponse:
        return await self.stub.ExportPool(pb.ExportPoolRequest(), metadata=self._md)

    @_typed_errors
    async def map_pool(self) -> MappedPool | ShmPool:
        """The server's pool mapped into this process (same host only), for zero-copy window
        views: a GPU pool through CUDA IPC (``kvferry.client.cuda_ipc``, needs torch with CUDA),
        a CPU pool through shared memory (``kvferry.client.shm``). Mapped once per client."""
        info = await self.pool_info()
        return await self._map("shm" if "shm" in info.transports else "cuda-ipc", info)

    async def _map(self, transport: str, info: pb.PoolInfo) -> Any:
        """The pool mapped for ``transport``, or TransportUnavailable saying why it cannot be."""
        if transport not in self._mapped:
            reason = why_not(transport, info)
            if reason is not None:
                raise unavailable(transport, reason)
            if transport == "shm":
                from kvferry.client.shm import ShmPool

                self._mapped[transport] = ShmPool.of(info)
            elif transport == "mooncake":
                from kvferry.client.mooncake import MooncakeWriter

                self._mapped[transport] = await asyncio.to_thread(MooncakeWriter, info)
            else:
                from kvferry.client.cuda_ipc import MappedPool

                self._mapped[transport] = MappedPool(await self.export_pool())
        return self._mapped[transport]

    async def _pick(self, transport: str, info: pb.PoolInfo) -> tuple[str, Any]:
        """The transport to use and its mapped pool (None for grpc)."""
        check_transport(transport)
        if transport != "auto":
            return transport, (None if transport == "grpc" else await self._map(transport, info))
        for candidate in ONE_SIDED:
            if why_not(candidate, info) is None:
                try:
                    return candidate, await self._map(candidate, info)
                except TransportUnavailable:
                    continue  # e.g. no CUDA in this process: the next way will do
        return "grpc", None

    # -- sender --------------------------------------------------------------------------------

    @_typed_errors
    async def send(self, transfer_id: str, rows: Any, total_tokens: int | None = None,
                   metadata: bytes = b"", start_token: int = 0,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, transport: str = "auto", *,
                   secret: str | None = None) -> pb.TransferStatus:
        """Send ``rows`` (tokens from ``start_token`` on) and return once all are in the pool.

        ``rows`` is bytes, a numpy array or a torch tensor of whole rows. ``transport`` says how
        they travel (``kvferry.client.transports``): ``auto`` writes them straight into the pool
        when it is on this host (CUDA IPC for a GPU pool, shared memory for a CPU pool) and
        pushes them through gRPC otherwise. The call waits while the receiver's window is full and
        may start before the receiver opens the transfer. Raises ``TransferFailed`` if the
        transfer is aborted or times out, ``TransportUnavailable`` if the transport named cannot
        work from here. ``secret``: the transfer secret the router made (kvferry.client.secrets);
        the call presents the sender secret derived from it, never the secret itself.
        """
        info = await self.pool_info()
        way, pool = await self._pick(transport, info)
        md = self._md + sender_metadata(secret)
        if way != "grpc":
            return await self._send_one_sided(way, pool, transfer_id, rows, total_tokens,
                                              metadata, start_token, info.row_bytes, md)
        row_bytes = info.row_bytes
        view = as_row_bytes(rows, row_bytes)
        ntokens = len(view) // row_bytes
        total = start_token + ntokens if total_tokens is None else total_tokens
        step = max(row_bytes, (min(chunk_bytes, info.max_message_bytes - 1024) // row_bytes) * row_bytes)

        async def messages() -> AsyncIterator[pb.PushRequest]:
            yield pb.PushRequest(transfer_id=transfer_id, total_tokens=total, metadata=metadata,
                                 start_token=start_token, rows=bytes(view[:step]))
            for off in range(step, len(view), step):
                yield pb.PushRequest(start_token=start_token + off // row_bytes,
                                     rows=bytes(view[off:off + step]))

        try:
            reply = await self.stub.Push(messages(), metadata=md)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.ABORTED:
                raise TransferFailed(transfer_id, e.details() or "aborted") from e
            raise
        if reply.status.state == FAILED:  # a server that answers OK for a failed transfer
            raise TransferFailed(transfer_id, reply.status.failure_reason, reply.status)
        return reply.status

    async def _send_one_sided(self, way: str, pool: Writer, transfer_id: str, rows: Any,
                              total_tokens: int | None, metadata: bytes, start_token: int,
                              row_bytes: int, md: tuple[tuple[str, str], ...]) -> pb.TransferStatus:
        """Attach, then for each grant: write the rows into the pool, wait until they landed,
        commit. A grant not fully committed when this returns or raises is detached (the writer
        says it stopped), so its blocks are never fenced longer than needed; except after a write
        that may still land, when only the fence timeout may free them."""
        src = source_rows(way, rows, row_bytes)
        end = start_token + len(src)
        total = end if total_tokens is None else total_tokens
        grants = self.stub.Attach(pb.AttachRequest(transfer_id=transfer_id, total_tokens=total,
                                                   metadata=metadata, transport=way),
                                  metadata=md)
        lent = None  # the epoch of a grant not yet fully committed
        incarnation = 0  # the opening the grants are for
        writing: asyncio.Future[None] | None = None  # a copy running in a thread
        try:
            async for grant in grants:
                if grant.start_token < start_token:
                    raise ValueError(f"transfer {transfer_id!r} needs rows from token "
                                     f"{grant.start_token}; this call has them from {start_token}")
                incarnation = grant.incarnation
                upto = min(end, grant.start_token + grant.tokens)
                if upto <= grant.start_token:  # every row of this call is delivered already
                    return await self._poll(transfer_id, md, incarnation)
                lent = grant.epoch
                if (upto - grant.start_token) * row_bytes >= INLINE_WRITE_BYTES:
                    writing = asyncio.ensure_future(asyncio.to_thread(pool.write, grant, src,
                                                                      start_token, upto))
                    await asyncio.shield(writing)
                else:  # a thread hop costs more than a small copy
                    pool.write(grant, src, start_token, upto)
                # The rows have landed: write returns only then (a CUDA stream synchronized).
                try:
                    reply = await self.stub.Commit(pb.CommitRequest(
                        transfer_id=transfer_id, epoch=grant.epoch, start_token=grant.start_token,
                        tokens=upto - grant.start_token, incarnation=incarnation), metadata=md)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    # Failed and already released (a receiver that refused it, say): the Attach
                    # stream ended with the reason before the release.
                    raise await _ended(transfer_id, grants, e) from e
                if upto == grant.start_token + grant.tokens:
                    lent = None
                if reply.status.sent_tokens >= end or reply.status.state == SUCCESS:
                    return reply.status
            raise TransferFailed(transfer_id, "the Attach stream ended before every row was sent "
                                 "(is the server stopping?)")
        except WriteMayLand as e:
            # Never Detach now: the fence must hold for its timeout. Fail the transfer so the
            # receiver learns why at once, not at the stall timeout.
            lent = None
            reason = f"sender: {e}"
            await _quietly(self._abort(transfer_id, reason, md, incarnation))
            raise TransferFailed(transfer_id, reason) from e
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.ABORTED:
                raise TransferFailed(transfer_id, e.details() or "aborted") from e
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise TransferFailed(transfer_id, f"the receiver's server is unreachable "
                                     f"({e.details()}): the transfer cannot go on") from e
            raise
        finally:
            grants.cancel()
            if writing is not None and not writing.done():
                # Cancelled mid-copy: a copy cannot be called back, so it must end before this
                # writer tells the server it stopped.
                with contextlib.suppress(BaseException):
                    await writing
            if lent is not None:
                await _quietly(self.stub.Detach(pb.DetachRequest(
                    transfer_id=transfer_id, epoch=lent, incarnation=incarnation), metadata=md))
            pool.finish(src)

    # -- receiver ------------------------------------------------------------------------------

    async def receive(self, transfer_id: str, window_tokens: int = 0, *, open: bool = True,
                      release: bool = True, wait_open: float = 30.0,
                      check_metadata: Callable[[bytes], None] | None = None,
                      transport: str = "auto", views: bool = False,
                      secret: str | None = None, incarnation: int = 0) -> AsyncGenerator[Window, None]:
        """Open the transfer and yield its windows in order, resuming after each one is consumed.

        The resume is keyed on ``sent_tokens`` (never on block indices), so it is safe to run this
        on several tensor-parallel ranks with ``open=False, release=False`` on all but one (they
        wait up to ``wait_open`` seconds for the Open): their extra resumes are answered as
        duplicates. Ranks must all have read a window before any of them resumes it (a barrier
        in the loop body does that). ``check_metadata`` sees the sender's metadata as soon as it
        attaches and may raise to refuse the transfer. If the consumer stops early or anything
        raises, the transfer is aborted with the reason so the sender learns at once; it is
        released at the end either way (when ``release``). ``transport``: how a full window is
        read: ``shm`` copies it straight out of a CPU pool mapped from shared memory (same host),
        ``grpc`` reads it with Read; ``auto`` takes ``shm`` where it works. ``views``: with
        ``shm``, yield each window as a view into the pool, no copy at all, valid until the next
        window is asked for (then it is checked to have been the window's throughout, and the
        window is resumed); keep what you need by copying it before that. Refusals raise
        ``kvferry.client.errors.KvferryError``s. ``secret``: the
        transfer secret the router made (kvferry.client.secrets): the Open binds the transfer to
        it, and every later call presents it. Every call names the opening it is for
        (its incarnation), so a rank that lags behind a Release never touches the next opening.
        ``incarnation`` (with ``open=False``): take in that opening (from ``open()``), no other.
        """
        windows = self._receive(transfer_id, window_tokens, open=open, release=release,
                                wait_open=wait_open, check_metadata=check_metadata,
                                transport=transport, views=views, secret=secret,
                                incarnation=incarnation)
        async with contextlib.aclosing(_typed_stream(windows, transfer_id)) as stream:
            async for window in stream:
                yield window

    async def _receive(self, transfer_id: str, window_tokens: int = 0, *, open: bool = True,
                      release: bool = True, wait_open: float = 30.0,
                      check_metadata: Callable[[bytes], None] | None = None,
                      transport: str = "auto", views: bool = False,
                      secret: str | None = None, incarnation: int = 0) -> AsyncGenerator[Window, None]:
        """``receive``, raising raw grpc errors."""
        check_transport(transport)
        if transport == "cuda-ipc":
            raise ValueError("receive reads windows with transport 'shm' or 'grpc'; map a GPU "
                             "pool with map_pool() to take windows as tensors")
        md = self._md + receiver_metadata(secret)
        # Who opened the transfer (here, or with open() and named its incarnation) owns it: if
        # this stops early, it aborts the transfer so that the sender learns at once.
        owner = open or bool(incarnation)
        if open:
            opened = await self.stub.Open(pb.OpenRequest(transfer_id=transfer_id,
                                                         window_tokens=window_tokens), metadata=md)
            incarnation = opened.status.incarnation
        elif not incarnation:
            incarnation = (await self._wait_for(transfer_id, wait_open, md)).incarnation
        info = await self.pool_info()
        row_bytes = info.row_bytes
        mapped: ShmPool | None = None
        if transport == "shm" or (transport == "auto" and why_not("shm", info) is None):
            try:
                mapped = await self._map("shm", info)
            except TransportUnavailable:
                if transport == "shm":
                    raise
        handed_out = 0  # sent_tokens at the end of the last window yielded
        checked = check_metadata is None
        reason = "receiver stopped before the last window"
        finished = False
        watch = self.stub.Watch(pb.WatchRequest(transfer_id=transfer_id, incarnation=incarnation),
                                metadata=md)
        try:
            async for st in watch:
                if st.state == FAILED:
                    raise TransferFailed(transfer_id, st.failure_reason, st)
                if not checked and st.total_tokens:  # the sender attached
                    check_metadata(st.metadata)  # type: ignore[misc]
                    checked = True
                full = st.window_filled_tokens == st.window_tokens or st.state == SUCCESS
                if not (full and st.window_filled_tokens and st.sent_tokens > handed_out):
                    continue
                if views and mapped is not None:
                    data = _one_view(mapped.window(st))
                else:
                    data = await self._read_window(transfer_id, st, mapped, md)
                last = st.state == SUCCESS
                yield Window(transfer_id, st.window_start_token, data, row_bytes, st.total_tokens,
                             st.metadata, last)
                if views and mapped is not None and not mapped.still_window(st):
                    now = await self._poll(transfer_id, md, incarnation)
                    raise TransferFailed(transfer_id, now.failure_reason or "the window was freed "
                                         "while its view was in use: what was read is not its rows",
                                         now)
                handed_out = st.sent_tokens
                if last:
                    finished = True
                    return
                await self.stub.Resume(pb.ResumeRequest(transfer_id=transfer_id,
                                                        sent_tokens=st.sent_tokens,
                                                        window_tokens=window_tokens,
                                                        incarnation=incarnation),
                                       metadata=md)
            raise TransferFailed(transfer_id, "the Watch stream ended before the last window "
                                 "(is the server stopping?)")
        except TransferFailed:
            raise
        except Exception as e:
            reason = f"receiver failed: {e}"
            raise
        finally:
            watch.cancel()
            if not finished and owner:
                await _quietly(self._abort(transfer_id, reason, md, incarnation))
            if release:
                await _quietly(self.stub.Release(pb.ReleaseRequest(
                    transfer_id=transfer_id, incarnation=incarnation), metadata=md))

    async def _read_window(self, transfer_id: str, st: pb.TransferStatus,
                           mapped: ShmPool | None, md: tuple[tuple[str, str], ...]) -> bytes:
        """The full window's rows: one copy out of the mapped pool, or a Read."""
        if mapped is None:
            return b"".join([m.rows async for m in self.stub.Read(
                pb.ReadRequest(transfer_id=transfer_id, incarnation=st.incarnation), metadata=md)])
        views = mapped.window(st)
        data = views[0].tobytes() if len(views) == 1 else b"".join(v.data for v in views)
        # The window stays the receiver's until it resumes, unless the transfer failed and its
        # blocks went to another: then the copy may hold their rows, and must not be handed out.
        if not mapped.still_window(st):
            now = await self._poll(transfer_id, md, st.incarnation)
            raise TransferFailed(transfer_id, now.failure_reason or "the window was freed while "
                                 "it was being read", now)
        return data

    async def _wait_for(self, transfer_id: str, seconds: float,
                        md: tuple[tuple[str, str], ...]) -> pb.TransferStatus:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                return await self._poll(transfer_id, md)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.02)


async def _typed_stream(items: AsyncGenerator[T, None], transfer_id: str) -> AsyncGenerator[T, None]:
    """ITEMS, with a gRPC error turned into its typed KvferryError, and ITEMS closed however the
    consumer stops."""
    try:
        async for item in items:
            yield item
    except KvferryError:
        raise
    except grpc.RpcError as e:
        raise typed(e, transfer_id) from e
    finally:
        await items.aclose()


async def _ended(transfer_id: str, grants: Any, error: grpc.aio.AioRpcError) -> Exception:
    """Why the transfer a one-sided sender was writing ended: its Attach stream's final status."""
    try:
        code = await asyncio.wait_for(grants.code(), 5)
        details = await grants.details()
    except (asyncio.TimeoutError, grpc.aio.AioRpcError):
        return error
    if code == grpc.StatusCode.ABORTED:
        return TransferFailed(transfer_id, details or "aborted")
    return error


def _one_view(views: list[np.ndarray]) -> memoryview | bytes:
    """A window as one buffer: a view when its blocks are adjacent (the allocator's common
    case), else a copy joining the runs."""
    if len(views) == 1:
        return views[0].reshape(-1).data
    return b"".join(v.data for v in views)


async def _quietly(call: Any) -> None:
    """Best-effort cleanup: the transfer may already be gone, or the channel closed."""
    try:
        await call
    except grpc.aio.AioRpcError:
        pass
