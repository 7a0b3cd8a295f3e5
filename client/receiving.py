"""The receiver's half of ``AsyncClient``: ``receive`` is the watch -> read -> resume loop with
the sent-token guard, the abort on early exit, and the release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from kvferry.client.contract import TransportUnavailable
from kvferry.client.errors import TransferFailed, quietly, typed_stream, unreachable
from kvferry.client.secrets import receiver_metadata
from kvferry.client.transports import WindowReader
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.client.aio import AsyncClient

SUCCESS = pb.TRANSFER_STATE_SUCCESS
FAILED = pb.TRANSFER_STATE_FAILED
Metadata = tuple[tuple[str, str], ...]


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
    status: pb.TransferStatus
    """The status the window was found full on: its blocks, for a caller that reads the window
    itself (``receive(read=False)``)."""

    @property
    def num_tokens(self) -> int:
        return self.status.window_filled_tokens

    def rows(self) -> np.ndarray:
        """The rows as a read-only uint8 array [num_tokens, row_bytes] over ``data`` (no copy)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(self.num_tokens, self.row_bytes)


@typed_stream
async def receive(self: AsyncClient, transfer_id: str, window_tokens: int = 0, *,
                  open: bool = True, release: bool = True, wait_open: float = 30.0,
                  check_metadata: Callable[[bytes], object] | None = None,
                  transport: str = "auto", views: bool = False, read: bool = True,
                  secret: str | None = None, incarnation: int = 0, readers: int = 1,
                  reader: int = 0) -> AsyncGenerator[Window, None]:
    """Open the transfer and yield its windows in order, resuming after each one is consumed.

    The resume is keyed on ``sent_tokens`` (never on block indices): a retried or late resume
    is answered as a duplicate. Several tensor-parallel ranks that each take in every window:
    open the transfer for that many ``readers`` (here, or with ``open(readers=)``), and run this
    on every rank with its own ``reader`` (0 to readers - 1; ``open=False`` on all but the one
    that opens: they wait up to ``wait_open`` seconds for the Open). Each rank reads every
    window from the pool itself and resumes it naming itself; the window moves on only once
    every rank has resumed it, and its blocks go only once every rank released the transfer,
    so no rank's resume or release takes a window from a rank still reading it (no barrier
    needed). ``check_metadata`` sees the sender's metadata as soon as it
    attaches and may raise to refuse the transfer. If the consumer stops early or anything
    raises, the transfer is aborted with the reason so the sender learns at once; it is
    released at the end either way (when ``release``). ``transport``: how a full window is
    read: ``shm`` copies it straight out of a CPU pool mapped from shared memory (same host),
    ``grpc`` reads it with Read; ``auto`` takes ``shm`` where it works. ``views``: with
    ``shm``, yield each window as a view into the pool, no copy at all, valid until the next
    window is asked for (then it is checked to have been the window's throughout, and the
    window is resumed); keep what you need by copying it before that. ``read=False``: yield
    each full window unread (``data`` empty) for a caller that copies it out of a pool it mapped
    itself (``map_pool()``: a GPU pool through CUDA IPC, say) from ``Window.status``, finishing
    the copy before it asks for the next window; then, as with views, the window is checked to
    have been the caller's throughout (asking the server where the mapping cannot tell) before
    it is resumed. Refusals raise
    ``kvferry.client.errors.KvferryError``s. ``secret``: the
    transfer secret the router made (kvferry.client.secrets): the Open binds the transfer to
    it, and every later call presents it. Every call names the opening it is for
    (its incarnation), so a rank that lags behind a Release never touches the next opening.
    ``incarnation`` (with ``open=False``): take in that opening (from ``open()``), no other.
    """
    choices = self.transports.choices(transport, reads=True)
    md = self._md + receiver_metadata(secret)
    # Who opened the transfer (here, or with open() and named its incarnation) owns it: if
    # this stops early, it aborts the transfer so that the sender learns at once.
    owner = open or bool(incarnation)
    # First: it says how the calls below travel (the same-host socket, or gRPC).
    info = await self.pool_info()
    if open:
        opened = await self.stub.Open(pb.OpenRequest(transfer_id=transfer_id,
                                                     window_tokens=window_tokens, readers=readers),
                                      timeout=self.call_timeout, metadata=md)
        incarnation = opened.status.incarnation
    elif not incarnation:
        incarnation = (await _wait_for(self, transfer_id, wait_open, md)).incarnation
    row_bytes = info.row_bytes
    mapped: WindowReader | None = None  # None: Read through gRPC
    named = len(choices) == 1  # a transport named outright: why it cannot work is the answer
    for way in choices:
        if named or way.why_not(info) is None:
            try:
                mapped = await self._link(way, info)
                break
            except TransportUnavailable:
                if named:
                    raise
    handed_out = 0  # sent_tokens at the end of the last window yielded
    checked = check_metadata is None
    reason = "receiver stopped before the last window"
    finished = False
    lost = False  # the server was found unreachable
    # until_done: this loop watches until the transfer ends (or it aborts it): a receiver that
    # vanishes mid-transfer is known to the server within its reconnect grace.
    watch = self.stub.Watch(pb.WatchRequest(transfer_id=transfer_id, incarnation=incarnation,
                                            until_done=True, reader=reader), metadata=md)
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
            data: bytes | memoryview = b""
            if read and views and mapped is not None:
                data = _one_view(mapped.window(st))
            elif read:
                data = await _read_window(self, transfer_id, st, mapped, md)
            last = st.state == SUCCESS
            yield Window(transfer_id, st.window_start_token, data, row_bytes, st.total_tokens,
                         st.metadata, last, st)
            if not read:
                await _check_still_window(self, transfer_id, st, mapped, md, "it was read")
            elif views and mapped is not None:
                await _check_still_window(self, transfer_id, st, mapped, md, "its view was in use")
            handed_out = st.sent_tokens
            if last:
                finished = True
                return
            await self.stub.Resume(pb.ResumeRequest(transfer_id=transfer_id,
                                                    sent_tokens=st.sent_tokens,
                                                    window_tokens=window_tokens,
                                                    incarnation=incarnation, reader=reader),
                                   timeout=self.call_timeout, metadata=md)
        raise TransferFailed(transfer_id, "the Watch stream ended before the last window "
                             "(is the server stopping?)")
    except TransferFailed:
        raise
    except Exception as e:
        reason = f"receiver failed: {e}"
        # A server that cannot be reached cannot be told: its own timeouts end the transfer,
        # and the caller learns now rather than after cleanups that would time out too.
        lost = unreachable(e)
        raise
    finally:
        watch.cancel()
        if not finished and owner and not lost:
            await quietly(self.stub.Abort(pb.AbortRequest(
                transfer_id=transfer_id, reason=reason, incarnation=incarnation),
                timeout=self.call_timeout, metadata=md))
        if release and not lost:
            await quietly(self.stub.Release(pb.ReleaseRequest(
                transfer_id=transfer_id, incarnation=incarnation, reader=reader),
                timeout=self.call_timeout, metadata=md))


async def _read_window(self: AsyncClient, transfer_id: str, st: pb.TransferStatus,
                       reader: WindowReader | None, md: Metadata) -> bytes:
    """The full window's rows: one copy out of the mapped pool, or a Read."""
    if reader is None:
        return b"".join([m.rows async for m in self.stub.Read(
            pb.ReadRequest(transfer_id=transfer_id, incarnation=st.incarnation), metadata=md)])
    views = reader.window(st)
    data = views[0].tobytes() if len(views) == 1 else b"".join(v.data for v in views)
    await _check_still_window(self, transfer_id, st, reader, md, "it was being read")
    return data


async def _check_still_window(self: AsyncClient, transfer_id: str, st: pb.TransferStatus,
                              reader: WindowReader | None, md: Metadata, during: str) -> None:
    """The window stays the receiver's until it resumes, unless the transfer failed and its
    blocks went to another: then what was read may hold their rows, and must not be used.
    READER: the link it was read through (None: one of the caller's own, that cannot tell)."""
    intact = reader.still_window(st) if reader is not None else None
    if intact:
        return
    now = await self.stub.Poll(pb.PollRequest(transfer_id=transfer_id,
                                              incarnation=st.incarnation), timeout=self.call_timeout, metadata=md)
    if intact is None and now.state != FAILED and now.window_epoch == st.window_epoch:
        return  # this link could not tell; the server says the window is still the reader's
    raise TransferFailed(transfer_id, now.failure_reason or f"the window was freed while "
                             f"{during}: what was read is not its rows", now)


async def _wait_for(self: AsyncClient, transfer_id: str, seconds: float,
                    md: Metadata) -> pb.TransferStatus:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await self.stub.Poll(pb.PollRequest(transfer_id=transfer_id), timeout=self.call_timeout, metadata=md)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.02)


def _one_view(views: list[np.ndarray]) -> memoryview | bytes:
    """A window as one buffer: a view when its blocks are adjacent (the allocator's common
    case), else a copy joining the runs."""
    if len(views) == 1:
        return views[0].reshape(-1).data
    return b"".join(v.data for v in views)
