"""grpc.aio servicer: translate messages into core calls. Core refusals (``TransferError``) are
turned into gRPC statuses by the pipeline that wraps every method."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar

from kvferry.client.contract import MESSAGE_BUDGET
from kvferry.client.host import host_id
from kvferry.server.config import ServerConfig
from kvferry.server.notifier import ChangeNotifier
from kvferry.server.status_cache import StatusCache, status_of, wire_state
from kvferry.server.storage import BlockStorage, Landing, PoolUnavailable
from kvferry.server.transfer_secrets import Presented, Role, SecretBook
from kvferry.server.transports import ServerTransport
from kvferry.server.wire import PushMessage, decode_push, encode_read_response
from kvferry.statemachine import (
    Aborted,
    Coordinator,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Outcome,
    Reason,
    ResourceExhausted,
    State,
    Transfer,
    TransferError,
    refusals,
)
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

_STATE_VALUES = {s.value for s in State}


class TransferService(pb_grpc.TransferServiceServicer):
    # Methods whose handler takes a pre-decoded request, or returns serialized bytes.
    DECODERS: ClassVar[dict[str, Callable[[bytes], Any]]] = {"Push": decode_push}
    RAW_RESPONSES = frozenset({"Read", "Poll", "Watch"})

    def __init__(self, config: ServerConfig, coord: Coordinator, storage: BlockStorage,
                 notifier: ChangeNotifier, statuses: StatusCache, secrets: SecretBook,
                 transports: Sequence[ServerTransport] = (),
                 recent_failures: Sequence[pb.TransferSummary] = ()) -> None:
        """``transports``: the one-sided transports offered besides the storage's own."""
        self.config = config
        self.recent_failures = recent_failures  # newest first
        self.secrets = secrets
        self.coord = coord
        self.storage = storage
        # The one-sided transports by name: the storage's own, then those added (an engine's,
        # plug-ins').
        self.one_sided = {t.name: t for t in (*storage.offers(), *transports)}
        self.notifier = notifier
        self.statuses = statuses
        self.row_bytes = config.row_bytes
        self.read_rows = max(1, MESSAGE_BUDGET // config.row_bytes)
        self.clock = time.monotonic
        self.started_at = self.clock()
        self.host_id = host_id()
        self.streams = 0
        self.senders_waiting = 0  # in ``_attach``, for the receiver's Open
        self.local_calls_path = ""  # the same-host calls' socket, once listening

    @contextlib.contextmanager
    def _stream_slot(self) -> Iterator[None]:
        """Admission control for the long-lived calls (Push, Watch, Read)."""
        if self.streams >= self.config.max_streams:
            raise ResourceExhausted(f"{self.streams} streams are open; the limit (--max-streams) "
                                    f"is {self.config.max_streams}; retry later", reason=Reason.TOO_MANY_STREAMS)
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    @contextlib.contextmanager
    def _sender_stream(self, t: Transfer) -> Iterator[None]:
        """A sender's stream (Push, Attach) is open on ``t``. One that ends while ``t`` is live
        (cancelled, refused, or its connection lost; a Push half-closed before its last row)
        leaves the sender the reconnect grace to come back. gRPC does not tell a lost
        connection from a half-close: a Push's request stream just ends, either way."""
        self.coord.sender_started(t)
        try:
            yield
        finally:
            self.coord.sender_ended(t, self.clock())

    def _held(self, transfer_id: str, incarnation: int, context: Any, role: Role,
              call: str) -> Transfer:
        """The transfer a call is about, if the call may touch it in ``role`` (its secret) and is
        for the opening held (its incarnation). The core call it guards follows with no await."""
        return self._held_by(transfer_id, incarnation, Presented.of(context.invocation_metadata()),
                             role, call)

    def _held_by(self, transfer_id: str, incarnation: int, presented: Presented, role: Role,
                 call: str) -> Transfer:
        t = self.coord.get(transfer_id, incarnation)
        self.secrets.check(t, presented, role, call)
        return t

    async def GetPoolInfo(self, request: pb.GetPoolInfoRequest, context: Any) -> pb.PoolInfo:
        return self._pool_info()

    async def Stats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        c, totals = self.coord, self.coord.totals
        return pb.StatsResponse(
            pool=self._pool_info(),
            transfers=[pb.StateCount(state=wire_state(s), count=n) for s, n in c.state_counts.items()],
            resumes_waiting=c.resumes_waiting, resumes_applied=totals.resumes_applied,
            resume_duplicates=sum(totals.duplicates.values()),
            transfers_started=totals.started, tokens_received=totals.tokens_received,
            uptime_seconds=self.clock() - self.started_at, draining=c.draining,
            fence_timeouts=totals.fences_lifted["timeout"], recent_failures=self.recent_failures)

    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        size = request.page_size or 100
        if size > 1000:
            raise InvalidArgument(f"page_size={size}: at most 1000", reason=Reason.BAD_PAGE)
        try:
            after = int(request.page_token) if request.page_token else -1
        except ValueError:
            raise InvalidArgument("page_token is not one this server gave; start with an "
                                  "empty page_token", reason=Reason.BAD_PAGE) from None
        states = {State(v) for v in request.states if v in _STATE_VALUES}
        if len(states) != len(request.states):
            raise InvalidArgument(f"states {list(request.states)}: name real states, not "
                                  f"UNSPECIFIED", reason=Reason.BAD_PAGE)
        now = self.clock()
        held, more = self.coord.list_transfers(after, frozenset(states), size)
        out = [pb.TransferSummary(status=self._listed(t), age_seconds=now - t.opened_at,
                                  idle_seconds=now - t.last_progress_at, outcome=t.outcome,
                                  metadata_bytes=len(t.metadata))
               for t in held]
        return pb.ListResponse(transfers=out, next_page_token=str(held[-1].seq) if more else "")

    def _listed(self, t: Transfer) -> pb.TransferStatus:
        """A status for operators: a transfer bound to a secret shows no metadata (sizes only)."""
        status = status_of(t)
        if self.secrets.locked(t):
            status.ClearField("metadata")
        return status

    def _pool_info(self) -> pb.PoolInfo:
        c = self.coord
        info = pb.PoolInfo(
            block_tokens=c.limits.block_tokens, num_blocks=c.limits.num_blocks,
            free_blocks=c.allocator.free_count, row_bytes=self.row_bytes,
            device=self.config.device, default_window_tokens=c.limits.default_window_tokens,
            max_message_bytes=self.config.max_message_bytes, transfers=len(c.transfers),
            transports=["grpc", *self.one_sided], host_id=self.host_id,
            quarantined_blocks=c.quarantine.blocks,
            max_metadata_bytes=c.limits.max_metadata_bytes,
            transfer_secrets_required=self.secrets.required,
            local_calls_path=self.local_calls_path)
        for transport in self.one_sided.values():
            transport.describe(info)
        return info

    async def Open(self, request: pb.OpenRequest, context: Any) -> pb.OpenResponse:
        lock = self.secrets.check_open(request.transfer_id,
                                       Presented.of(context.invocation_metadata()))
        t = self.coord.open(request.transfer_id, request.window_tokens, self.clock(),
                            request.readers or 1)
        self.secrets.bind(t, lock)
        return pb.OpenResponse(status=status_of(t))

    async def Poll(self, request: pb.PollRequest, context: Any) -> bytes:
        self._held(request.transfer_id, request.incarnation, context, Role.EITHER, "Poll")
        return self.statuses.bytes_of(self.coord.observe(request.transfer_id, self.clock()))

    async def Resume(self, request: pb.ResumeRequest, context: Any) -> pb.ResumeResponse:
        self._held(request.transfer_id, request.incarnation, context, Role.RECEIVER, "Resume")
        r = self.coord.resume(request.transfer_id, request.sent_tokens, request.window_tokens,
                              self.clock(), reader=request.reader)
        return pb.ResumeResponse(status=status_of(r.transfer), duplicate=r.duplicate,
                                 readers_pending=r.pending)

    async def Abort(self, request: pb.AbortRequest, context: Any) -> pb.TransferStatus:
        self._held(request.transfer_id, request.incarnation, context, Role.EITHER, "Abort")
        return status_of(self.coord.abort(request.transfer_id, request.reason, self.clock()))

    async def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:
        self._held(request.transfer_id, request.incarnation, context, Role.RECEIVER, "Release")
        t, freed = self.coord.release(request.transfer_id, reader=request.reader)
        return pb.ReleaseResponse(status=status_of(t), freed_blocks=freed)

    async def ExportPool(self, request: pb.ExportPoolRequest, context: Any) -> pb.ExportPoolResponse:
        try:
            return self.storage.export()
        except PoolUnavailable as e:
            raise FailedPrecondition(str(e), reason=Reason.POOL_NOT_EXPORTABLE) from None

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[bytes]:
        t = self._held(request.transfer_id, request.incarnation, context, Role.EITHER, "Watch")
        with self._stream_slot():
            self.coord.watch_started(t, self.clock(), request.reader)
            try:
                while True:
                    seen, terminal = t.version, t.state.terminal  # before the yield: it awaits
                    yield self.statuses.bytes_of(t)
                    if terminal:
                        return
                    while t.version == seen:  # level-triggered: changes while we sent coalesce
                        await self.notifier.wait(t.transfer_id)
            finally:
                # until_done: the receiver promised to watch to the end, so a Watch that ends
                # sooner (cancelled, or its connection lost) means the receiver is gone.
                self.coord.watch_ended(t, self.clock(), request.until_done, request.reader)

    async def Read(self, request: pb.ReadRequest, context: Any) -> AsyncIterator[bytes]:
        """Serialized ReadResponses (the method is registered with a raw response serializer)."""
        self._held(request.transfer_id, request.incarnation, context, Role.RECEIVER, "Read")
        t, segments = self.coord.read_segments(request.transfer_id, self.clock())
        epoch, token = t.window_epoch, t.window_start_token

        def unchanged() -> None:
            # Each chunk is copied only while the window is still the one planned (checked right
            # before the copy, with no await in between): a Resume or Abort mid-stream must not
            # leak another transfer's rows.
            if t.window_epoch != epoch:
                raise Aborted(f"the window of {t.transfer_id!r} was resumed or freed while being "
                              f"read; read the whole window before resuming",
                              Reason.WINDOW_CHANGED, t.transfer_id)

        with self._stream_slot():
            for chunk in _chunks(segments, self.read_rows):
                async with self.storage.views(chunk, unchanged) as (views, count):
                    data = encode_read_response(token, views, count * self.row_bytes)
                yield data
                token += count

    async def Push(self, request_iterator: AsyncIterator[PushMessage | pb.PushRequest],
                   context: Any) -> pb.PushResponse:
        with self._stream_slot():
            return await self._push(request_iterator, Presented.of(context.invocation_metadata()))

    async def _push(self, requests: AsyncIterator[PushMessage | pb.PushRequest],
                    presented: Presented) -> pb.PushResponse:
        msg = await anext(requests, None)
        if msg is None:
            raise InvalidArgument("the Push stream carried no message; the first must carry "
                                  "transfer_id and total_tokens", reason=Reason.BAD_STREAM)
        first = msg  # the one message that names the transfer
        try:
            t = await self._attach(msg, presented, "Push")
            with self._sender_stream(t):
                async with _EndsWithTransfer(t, self.notifier) as ends:
                    while msg is not None:
                        if msg.transfer_id and msg.transfer_id != t.transfer_id:
                            raise InvalidArgument(f"this Push stream is for {t.transfer_id!r} but "
                                                  f"a message names {msg.transfer_id!r}; use one "
                                                  f"stream per transfer", Reason.BAD_STREAM,
                                                  t.transfer_id)
                        await self._write(t, msg.start_token, msg.rows)
                        msg = await ends.next_of(requests)
        except TransferError as e:  # the pipeline cannot see which transfer a stream is for
            e.transfer_id = e.transfer_id or first.transfer_id
            raise
        if t.state is State.FAILED:  # a sender never hears OK for a transfer that failed
            raise refusals.transfer_failed(t)
        return pb.PushResponse(status=status_of(t))

    # -- one-sided sender ----------------------------------------------------------------------

    async def Attach(self, request: pb.AttachRequest, context: Any) -> AsyncIterator[pb.Grant]:
        if request.transport not in self.one_sided:
            raise InvalidArgument(f"transport {request.transport!r} is not offered here: this "
                                  f"server's pool on {self.config.device} offers "
                                  f"{list(self.one_sided)} to one-sided senders; or Push",
                                  reason=Reason.TRANSPORT_NOT_OFFERED)
        with self._stream_slot():
            t = await self._attach(request, Presented.of(context.invocation_metadata()), "Attach")
            with self._sender_stream(t):
                lent = -1
                while True:
                    if t.state is State.FAILED:
                        raise refusals.transfer_failed(t)
                    if t.state is State.SUCCESS or t.released:
                        return
                    g = self.coord.grant(t.transfer_id, t.incarnation)
                    if g is not None and g.epoch != lent:
                        lent = g.epoch
                        yield pb.Grant(epoch=g.epoch, start_token=g.start_token, tokens=g.tokens,
                                       window_start_token=g.window_start_token,
                                       block_indices=g.blocks,
                                       block_tokens=self.coord.limits.block_tokens,
                                       incarnation=t.incarnation)
                        continue  # the yield awaited: look again before waiting
                    await self.notifier.wait(t.transfer_id)

    async def Commit(self, request: pb.CommitRequest, context: Any) -> pb.CommitResponse:
        self._held(request.transfer_id, request.incarnation, context, Role.SENDER, "Commit")
        r = self.coord.commit(request.transfer_id, request.epoch, request.start_token,
                              request.tokens, self.clock())
        return pb.CommitResponse(status=status_of(r.transfer), duplicate=r.duplicate)

    async def Detach(self, request: pb.DetachRequest, context: Any) -> pb.DetachResponse:
        presented = Presented.of(context.invocation_metadata())
        # A fence outlives its transfer's release: its writer's secret is checked either way.
        self.secrets.check_fence(request.epoch, request.transfer_id, presented)
        held = self.coord.transfers.get(request.transfer_id)
        if held is not None:
            self.secrets.check(held, presented, Role.SENDER, "Detach")
        return pb.DetachResponse(freed_blocks=self.coord.detach(
            request.transfer_id, request.epoch, request.incarnation))

    async def _attach(self, msg: PushMessage | pb.PushRequest | pb.AttachRequest,
                      presented: Presented, call: str) -> Transfer:
        """Attach the sender, waiting for the receiver's Open up to the bootstrap timeout; its
        secret claims the id meanwhile."""
        self.coord.check_sender(msg.total_tokens, msg.metadata, msg.transfer_id)
        deadline = self.clock() + self.config.bootstrap_timeout
        claimed = False
        try:
            while True:
                try:
                    self._held_by(msg.transfer_id, msg.incarnation, presented, Role.SENDER, call)
                    return self.coord.attach(msg.transfer_id, msg.total_tokens, msg.metadata,
                                             self.clock())
                except NotFound:
                    if not claimed:
                        claimed = self.secrets.claim(msg.transfer_id, presented)
                    left = deadline - self.clock()
                    if left <= 0:
                        raise NotFound(f"no receiver opened transfer {msg.transfer_id!r} within the "
                                       f"bootstrap timeout ({self.config.bootstrap_timeout:g}s); the "
                                       f"receiver must Open it", Reason.NOT_OPENED,
                                       msg.transfer_id) from None
                    self.senders_waiting += 1
                    try:
                        await self.notifier.wait(msg.transfer_id, timeout=left)
                    finally:
                        self.senders_waiting -= 1
        finally:
            if claimed:
                self.secrets.unclaim(msg.transfer_id)

    async def _write(self, t: Transfer, start_token: int, rows: bytes | memoryview) -> None:
        if len(rows) % self.row_bytes:
            raise InvalidArgument(f"rows is {len(rows)} bytes, not a multiple of row_bytes="
                                  f"{self.row_bytes}; send whole rows (see GetPoolInfo)",
                                  Reason.PARTIAL_ROW, t.transfer_id)
        n = len(rows) // self.row_bytes
        done = 0
        while True:
            ticket = self.coord.begin_write(t.transfer_id, start_token + done, n - done,
                                            t.incarnation)
            done += ticket.skip
            if ticket.count:
                landing = Landing()
                try:
                    await self.storage.write(ticket.segments, rows, done, landing)
                except Exception as e:
                    self.coord.fail(ticket.transfer, Outcome.ERROR,
                                    f"error: copying rows into the pool failed: {e!r}", self.clock())
                    raise
                finally:  # also on cancellation: rows count only if their copy landed
                    self.coord.end_write(ticket, self.clock(), landing.landed)
                done += ticket.count
            if done == n:
                return
            if not ticket.count:  # window full: hold the stream until a resume (backpressure)
                await self.notifier.wait(t.transfer_id)


class _EndsWithTransfer:
    """Ends a stream handler the moment its transfer fails, even while it waits for the client's
    next message: an idle sender's stream must not outlive its transfer (it holds a
    --max-streams slot, and its sender must learn why at once).

    A watcher task waits for the failure and cancels the handler, but only while the handler
    waits in ``next_of``; elsewhere (a copy, a backpressure wait) the handler sees the failure
    itself, through the core's refusal."""

    def __init__(self, t: Transfer, notifier: ChangeNotifier) -> None:
        self.t, self.notifier = t, notifier
        self._handler = asyncio.current_task()
        self._idle = False
        self._cancelled = False

    async def __aenter__(self) -> _EndsWithTransfer:
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._watcher.cancel()

    async def _watch(self) -> None:
        while not self.t.state.terminal:
            await self.notifier.wait(self.t.transfer_id)
        if self.t.state is State.FAILED and self._idle and self._handler is not None:
            self._cancelled = True
            self._handler.cancel()

    def _failed(self) -> Aborted:
        return refusals.transfer_failed(self.t)

    async def next_of(self, requests: AsyncIterator[Any]) -> Any:
        """The next message, None at the end; Aborted once the transfer failed."""
        if self.t.state is State.FAILED:  # checked with no await before ``_idle`` is set
            raise self._failed()
        self._idle = True
        try:
            return await anext(requests, None)
        except asyncio.CancelledError:
            if self._cancelled:
                # Ours, unless the call itself was cancelled too (Python 3.11+ counts cancels;
                # then it stays cancelled).
                uncancel = getattr(self._handler, "uncancel", None)
                if uncancel is None or uncancel() == 0:
                    raise self._failed() from None
            raise
        finally:
            self._idle = False


def _chunks(segments: list[Any], max_rows: int) -> list[list[Any]]:
    """Split segments into groups of at most ``max_rows`` rows (splitting a segment if needed)."""
    out: list[list[Any]] = []
    cur: list[Any] = []
    room = max_rows
    for s in segments:
        while s.tokens:
            n = min(room, s.tokens)
            cur.append(s._replace(tokens=n))
            s = s._replace(offset=s.offset + n, tokens=s.tokens - n)
            room -= n
            if room == 0:
                out.append(cur)
                cur, room = [], max_rows
    if cur:
        out.append(cur)
    return out
