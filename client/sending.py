"""The sender's half of ``AsyncClient``: ``send`` pushes rows through gRPC, or writes them into
the pool itself (a one-sided transport) and commits them, window by window."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from kvferry.client.contract import MESSAGE_BUDGET
from kvferry.client.errors import TransferFailed, quietly, typed_errors, unreachable
from kvferry.client.mooncake import WriteMayLand
from kvferry.client.rows import as_row_bytes
from kvferry.client.secrets import sender_metadata
from kvferry.client.transports import Writer
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.client.aio import AsyncClient

# Push messages stay inside gRPC's default 4 MiB limit, whatever the server accepts.
DEFAULT_CHUNK_BYTES = MESSAGE_BUDGET
# One-sided writes at least this large run in a thread, so the event loop (receives, other
# transfers) goes on meanwhile; smaller ones are done inline.
INLINE_WRITE_BYTES = 1 << 20

SUCCESS = pb.TRANSFER_STATE_SUCCESS
FAILED = pb.TRANSFER_STATE_FAILED
Metadata = tuple[tuple[str, str], ...]


@typed_errors
async def send(self: AsyncClient, transfer_id: str, rows: Any, total_tokens: int | None = None,
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
    way, link = await self._writer(transport, info)
    md = self._md + sender_metadata(secret)
    if way.one_sided:
        src = way.source_rows(rows, info.row_bytes)
        return await _send_one_sided(self, way.name, link, transfer_id, src, total_tokens,
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

    reply = await self.stub.Push(messages(), metadata=md)
    if reply.status.state == FAILED:  # a server that answers OK for a failed transfer
        raise TransferFailed(transfer_id, reply.status.failure_reason, reply.status)
    return reply.status


async def _send_one_sided(self: AsyncClient, way: str, pool: Writer, transfer_id: str, src: Any,
                          total_tokens: int | None, metadata: bytes, start_token: int,
                          row_bytes: int, md: Metadata) -> pb.TransferStatus:
    """Attach, then for each grant: write the rows into the pool, wait until they landed,
    commit. A grant not fully committed when this returns or raises is detached (the writer
    says it stopped), so its blocks are never fenced longer than needed; except after a write
    that may still land, when only the fence timeout may free them."""
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
                return await self.stub.Poll(pb.PollRequest(transfer_id=transfer_id,
                                                           incarnation=incarnation),
                                            timeout=self.call_timeout, metadata=md)
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
                    tokens=upto - grant.start_token, incarnation=incarnation), timeout=self.call_timeout, metadata=md)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # Failed and already released (a receiver that refused it, say): the Attach
                # stream ended with the reason before the release.
                raise await _ended(grants, e) from e
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
        await quietly(self.stub.Abort(pb.AbortRequest(transfer_id=transfer_id, reason=reason,
                                                      incarnation=incarnation),
                                      timeout=self.call_timeout, metadata=md))
        raise TransferFailed(transfer_id, reason) from e
    except grpc.aio.AioRpcError as e:
        if unreachable(e):
            # Nobody to tell that this writer stopped: the server fences the window until it
            # learns so, or for its fence timeout.
            lent = None
            raise TransferFailed(transfer_id, f"the kvferry server at {self.target} is "
                                 f"unreachable ({e.details()}): the transfer cannot go on") from e
        raise
    finally:
        grants.cancel()
        if writing is not None and not writing.done():
            # Cancelled mid-copy: a copy cannot be called back, so it must end before this
            # writer tells the server it stopped.
            with contextlib.suppress(BaseException):
                await writing
        if lent is not None:
            await quietly(self.stub.Detach(pb.DetachRequest(
                transfer_id=transfer_id, epoch=lent, incarnation=incarnation),
                timeout=self.call_timeout, metadata=md))
        pool.finish(src)


async def _ended(grants: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """Why the transfer a one-sided sender was writing ended: its Attach stream's final status
    (ABORTED, with the reason in its details), else the error at hand."""
    try:
        code = await asyncio.wait_for(grants.code(), 5)
        if code != grpc.StatusCode.ABORTED:
            return error
        return grpc.aio.AioRpcError(code, await grants.initial_metadata(),
                                    await grants.trailing_metadata(), await grants.details())
    except (asyncio.TimeoutError, grpc.aio.AioRpcError):
        return error
