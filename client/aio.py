"""asyncio client: a sender's ``send`` and a receiver's ``receive``, so no serving stack writes the
poll -> read -> resume loop (or its guard) itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from kvferry.client.limits import MESSAGE_BUDGET
from kvferry.client.rows import as_row_bytes
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from kvferry.client.cuda_ipc import MappedPool

# Push messages stay inside gRPC's default 4 MiB limit, whatever the server accepts.
DEFAULT_CHUNK_BYTES = MESSAGE_BUDGET

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


class TransferFailed(Exception):
    """The transfer ended FAILED (aborted, timed out, ...); ``status`` has the reason."""

    def __init__(self, transfer_id: str, reason: str, status: pb.TransferStatus | None = None) -> None:
        super().__init__(f"transfer {transfer_id!r} failed: {reason}")
        self.transfer_id = transfer_id
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Window:
    """One window of received rows: tokens [start_token, start_token + num_tokens)."""

    transfer_id: str
    start_token: int
    data: bytes
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

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def pool_info(self, refresh: bool = False) -> pb.PoolInfo:
        """The server's pool; cached (concurrent first callers share one call) unless refresh."""
        failed = self._pool is not None and self._pool.done() and (
            self._pool.cancelled() or self._pool.exception() is not None)
        if self._pool is None or refresh or failed:
            self._pool = asyncio.ensure_future(
                self.stub.GetPoolInfo(pb.GetPoolInfoRequest(), metadata=self._md))
        return await asyncio.shield(self._pool)

    async def poll(self, transfer_id: str) -> pb.TransferStatus:
        return await self.stub.Poll(pb.PollRequest(transfer_id=transfer_id), metadata=self._md)

    async def abort(self, transfer_id: str, reason: str) -> pb.TransferStatus:
        return await self.stub.Abort(pb.AbortRequest(transfer_id=transfer_id, reason=reason),
                                     metadata=self._md)

    async def release(self, transfer_id: str) -> pb.ReleaseResponse:
        return await self.stub.Release(pb.ReleaseRequest(transfer_id=transfer_id), metadata=self._md)

    async def stats(self) -> pb.StatsResponse:
        return await self.stub.Stats(pb.StatsRequest(), metadata=self._md)

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

    async def export_pool(self) -> pb.ExportPoolResponse:
        return await self.stub.ExportPool(pb.ExportPoolRequest(), metadata=self._md)

    async def map_pool(self) -> MappedPool:
        """The server's CUDA pool mapped into this process (same host only): see
        ``kvferry.client.cuda_ipc`` for the rules. Needs torch with CUDA."""
        from kvferry.client.cuda_ipc import MappedPool

        return MappedPool(await self.export_pool())

    # -- sender --------------------------------------------------------------------------------

    async def send(self, transfer_id: str, rows: Any, total_tokens: int | None = None,
                   metadata: bytes = b"", start_token: int = 0,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> pb.TransferStatus:
        """Push ``rows`` (tokens from ``start_token`` on) and return once all are in the pool.

        ``rows`` is bytes, a numpy array or a torch tensor of whole rows. The call waits while the
        receiver's window is full (the server holds the stream) and may start before the receiver
        opens the transfer. Raises ``TransferFailed`` if the transfer is aborted or times out.
        """
        info = await self.pool_info()
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
            reply = await self.stub.Push(messages(), metadata=self._md)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.ABORTED:
                raise TransferFailed(transfer_id, e.details() or "aborted") from e
            raise
        return reply.status

    # -- receiver ------------------------------------------------------------------------------

    async def receive(self, transfer_id: str, window_tokens: int = 0, *, open: bool = True,
                      release: bool = True, wait_open: float = 30.0,
                      check_metadata: Callable[[bytes], None] | None = None) -> AsyncGenerator[Window, None]:
        """Open the transfer and yield its windows in order, resuming after each one is consumed.

        The resume is keyed on ``sent_tokens`` (never on block indices), so it is safe to run this
        on several tensor-parallel ranks with ``open=False, release=False`` on all but one (they
        wait up to ``wait_open`` seconds for the Open): their extra resumes are answered as
        duplicates. Ranks must all have read a window before any of them resumes it (a barrier
        in the loop body does that). ``check_metadata`` sees the sender's metadata as soon as it
        attaches and may raise to refuse the transfer. If the consumer stops early or anything
        raises, the transfer is aborted with the reason so the sender learns at once; it is
        released at the end either way (when ``release``).
        """
        if open:
            await self.stub.Open(pb.OpenRequest(transfer_id=transfer_id, window_tokens=window_tokens),
                                 metadata=self._md)
        else:
            await self._wait_for(transfer_id, wait_open)
        row_bytes = (await self.pool_info()).row_bytes
        handed_out = 0  # sent_tokens at the end of the last window yielded
        checked = check_metadata is None
        reason = "receiver stopped before the last window"
        finished = False
        watch = self.stub.Watch(pb.WatchRequest(transfer_id=transfer_id), metadata=self._md)
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
                data = b"".join([m.rows async for m in
                                 self.stub.Read(pb.ReadRequest(transfer_id=transfer_id),
                                                metadata=self._md)])
                last = st.state == SUCCESS
                yield Window(transfer_id, st.window_start_token, data, row_bytes, st.total_tokens,
                             st.metadata, last)
                handed_out = st.sent_tokens
                if last:
                    finished = True
                    return
                await self.stub.Resume(pb.ResumeRequest(transfer_id=transfer_id,
                                                        sent_tokens=st.sent_tokens,
                                                        window_tokens=window_tokens),
                                       metadata=self._md)
            raise TransferFailed(transfer_id, "the Watch stream ended before the last window "
                                 "(is the server stopping?)")
        except TransferFailed:
            raise
        except Exception as e:
            reason = f"receiver failed: {e}"
            raise
        finally:
            watch.cancel()
            if not finished and open:
                await _quietly(self.abort(transfer_id, reason))
            if release:
                await _quietly(self.release(transfer_id))

    async def _wait_for(self, transfer_id: str, seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                await self.poll(transfer_id)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.02)


async def _quietly(call: Any) -> None:
    """Best-effort cleanup: the transfer may already be gone, or the channel closed."""
    try:
        await call
    except grpc.aio.AioRpcError:
        pass
