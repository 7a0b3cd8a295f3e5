"""Language side (``ec_consumer``): the scheduler finds embeddings, every rank stages them.

A request is never computed on rows that did not arrive: it is held back until its whole
embedding is in the memory of every tensor-parallel rank, and the step that computes it only
moves those tensors into vLLM's encoder cache, with nothing left that can fail.

Scheduler (``Arrivals``): when a request needs an image it does not hold, the scheduler Opens
that image's transfer (its id is the content hash) for as many readers as the engine has ranks,
tells every rank to stage it (``ranks``: vLLM reaches a worker only inside a step, and an engine
whose requests all wait for images runs none), and watches it. The request is deferred
(``ensure_cache_available`` says False) until every rank said it holds all rows. No sender within
``sender_wait_s``, a transfer that fails, a rank that cannot take it in, or a server that cannot
be reached makes the image *unavailable*: the engine encodes it itself (``on_failure =
encode``) or fails the request (``fail``), before the request ever runs. Everything the
scheduler opened and no request took is aborted and released, and dropped on the ranks, when
its requests finish, so an aborted request leaves nothing held.

Worker (``Loader``): each rank takes every window of a transfer it is told to stage into one
tensor on its device, as its own reader: straight out of the server's pool mapped here (shared
memory for a CPU pool, CUDA IPC for a GPU pool), else with Read; a window moves on once every
rank resumed it. Staged embeddings wait beside vLLM's encoder cache until their request is
scheduled: at most the engine's encoder cache size in rows (``budget_rows``), except that one
embedding larger than that is staged alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import torch
import zmq

from kvferry.client.contract import TransportUnavailable
from kvferry.client.errors import KvferryError, TransferFailed
from kvferry.integrations.vllm.bridge import Bridge
from kvferry.integrations.vllm.config import ConnectorConfig
from kvferry.integrations.vllm.ranks import Channel, Message, rank_channel, scheduler_channel
from kvferry.integrations.vllm.wire import (
    Header,
    HeaderError,
    check_header,
    transfer_id,
    transfer_secret,
)
from kvferry.v1 import transfer_pb2 as pb

log = logging.getLogger("kvferry.integrations.vllm")


class Arrival(enum.Enum):
    WAITING = "waiting"          # opened (or opening); not on every rank yet
    READY = "ready"              # every rank holds all its rows: the request can be scheduled
    UNAVAILABLE = "unavailable"  # it will not come: encode locally, or fail the request


class RankFailed(Exception):
    """A rank could not stage an embedding (it says why)."""


@dataclass
class Expected:
    mm_hash: str
    tid: str
    tokens: int  # the embedding rows its requests' placeholders take
    asked_at: float  # when it was opened: the wait for a sender counts from here
    state: Arrival = Arrival.WAITING
    incarnation: int = 0
    reason: str = ""
    requests: set[str] = field(default_factory=set)
    task: concurrent.futures.Future[None] | None = None
    staged_on: set[int] = field(default_factory=set)  # the ranks that said they hold it
    staged: asyncio.Future[None] | None = None  # done once every rank holds it (or one failed)


@dataclass(frozen=True)
class Load:
    """What the worker takes into the encoder cache: the embedding it staged for this opening."""
    mm_hash: str
    incarnation: int
    request_id: str


class Arrivals:
    """Scheduler side: which images are on their way, and which every rank holds."""

    def __init__(self, config: ConnectorConfig, dtype: torch.dtype | None,
                 readers: int = 1, engine: str = "", budget_rows: int = 0) -> None:
        """DTYPE: the model's, when the engine has one: an embedding of another is refused.
        READERS: the engine's tensor-parallel ranks, each of which stages every row. ENGINE:
        what names the channel to this engine's ranks (``ranks.engine_name``). BUDGET_ROWS: the
        rows staged on each rank at once, beyond which a request with new images waits (0: no
        bound)."""
        self.config = config
        self.dtype = dtype
        self.readers = readers
        self.budget_rows = budget_rows
        self.bridge = Bridge(config, "kvferry-vllm-scheduler")
        self.expected: dict[str, Expected] = {}
        self.resident: set[str] = set()  # in this engine's encoder cache (loaded or encoded)
        self.loads: list[Load] = []
        self.unavailable_requests: set[str] = set()

        async def connect() -> Channel:
            return scheduler_channel(engine, readers)

        self.ranks = self.bridge.run(connect())
        self.bridge.submit(self.ranks.serve(self._heard))

    # -- what vLLM's scheduler asks ------------------------------------------------------------

    def ensure(self, request_id: str, items: list[tuple[str, int]]) -> bool:
        """Open what REQUEST_ID needs (ITEMS: content hash, embedding rows) and has not asked
        for; True once none is still coming."""
        ready = True
        new = [(h, tokens) for h, tokens in items
               if h not in self.resident and h not in self.expected]
        if new and not self._room_for(sum(tokens for _, tokens in new)):
            return False  # it waits for staged embeddings to be taken; opens nothing yet
        for h, tokens in items:
            if h in self.resident:
                continue
            e = self.expected.get(h)
            if e is None:
                e = self.expected[h] = Expected(h, transfer_id(self.config.transfer_id_prefix, h),
                                                tokens, time.monotonic())
                log.debug("ensure: %s asked by %s", h, request_id)
                e.task = self.bridge.submit(self._arrive(e))
            e.requests.add(request_id)
            if e.state is Arrival.WAITING:
                ready = False
            elif e.state is Arrival.UNAVAILABLE and self.config.on_failure == "fail":
                # Held back until the scheduler fails it at the end of this step: scheduled,
                # it would be encoded here first.
                self.unavailable_requests.add(request_id)
                ready = False
        if not ready:
            # An engine with only deferred requests spins on this; let the bridge's thread take
            # the GIL now (it handles the arrival) rather than after the 5 ms switch interval.
            time.sleep(0)
        return ready

    def _room_for(self, rows: int) -> bool:
        """Whether ROWS more fit beside what the ranks stage now. A request's images are let in
        together (one waiting for another's room could wait forever), and anything fits when
        nothing is staged (an embedding larger than the budget goes alone)."""
        staging = sum(e.tokens for e in self.expected.values() if e.state is not Arrival.UNAVAILABLE)
        return not self.budget_rows or not staging or staging + rows <= self.budget_rows

    def has(self, mm_hash: str) -> bool:
        e = self.expected.get(mm_hash)
        return e is not None and e.state is Arrival.READY

    def allocated(self, request_id: str, mm_hash: str, tokens: int) -> None:
        """vLLM gave MM_HASH a place in the encoder cache: the ranks move it in (if it arrived)."""
        self.resident.add(mm_hash)
        e = self.expected.get(mm_hash)
        if e is None:
            return
        if e.state is Arrival.READY:
            del self.expected[mm_hash]
            self.loads.append(Load(mm_hash, e.incarnation, request_id))
        elif e.state is Arrival.UNAVAILABLE:  # the engine encodes it (logged when it gave up)
            del self.expected[mm_hash]

    def take_loads(self, freed: list[str]) -> list[Load]:
        for h in freed:
            self.resident.discard(h)
        loads, self.loads = self.loads, []
        return loads

    def take_unavailable(self) -> set[str]:
        out, self.unavailable_requests = self.unavailable_requests, set()
        return out

    def finished(self, request_id: str, mm_hashes: list[str]) -> None:
        """REQUEST_ID ended (done, aborted, failed): give back what only it was waiting for."""
        self.unavailable_requests.discard(request_id)
        for h in mm_hashes:
            e = self.expected.get(h)
            if e is None or request_id not in e.requests:
                continue
            e.requests.discard(request_id)
            if not e.requests:
                del self.expected[h]
                self._drop(e, f"request {request_id} ended before its embedding was used")

    # -- on the bridge's loop -----------------------------------------------------------------

    def _heard(self, m: Message) -> None:
        """A rank's answer: it holds all rows of an opening (``staged``), or cannot (``failed``)."""
        e = self.expected.get(str(m.get("mm_hash")))
        if e is None or e.incarnation != m.get("incarnation") or e.staged is None \
                or e.staged.done():
            return  # an opening given up meanwhile (its ranks are told to drop it)
        log.debug("heard: %s %s from rank %s", m.get("op"), e.mm_hash, m.get("rank"))
        if m.get("op") == "staged":
            e.staged_on.add(int(m["rank"]))
            if len(e.staged_on) == self.readers:
                e.staged.set_result(None)
        elif m.get("op") == "failed":
            e.staged.set_exception(RankFailed(f"rank {m.get('rank')} could not take it in: "
                                              f"{m.get('reason')}"))

    async def _arrive(self, e: Expected) -> None:
        secret = transfer_secret(self.config.secret, e.tid)
        try:
            await self._open(e, secret)
            log.debug("opened: %s, incarnation %d", e.mm_hash, e.incarnation)
            e.staged = asyncio.get_running_loop().create_future()
            await self.ranks.send({"op": "stage", "mm_hash": e.mm_hash, "tid": e.tid,
                                   "incarnation": e.incarnation, "tokens": e.tokens})
            await self._until_staged(e, secret)
            e.state = Arrival.READY
            log.debug("ready: %s on every rank", e.mm_hash)
        except StopAsyncIteration:
            await self._unavailable(e, "the server ended the Watch before the rows arrived "
                                       "(is it stopping?)")
        except asyncio.TimeoutError:
            await self._unavailable(e, f"no encoder sent it within kvferry_sender_wait_s="
                                       f"{self.config.sender_wait_s:g}s")
        except (HeaderError, RankFailed) as ex:
            await self._unavailable(e, str(ex))
        except (KvferryError, grpc.RpcError, OSError) as ex:
            why = ex.reason if isinstance(ex, TransferFailed) else _describe(ex)
            await self._unavailable(e, f"transfer {e.tid}: {why}")
        except asyncio.CancelledError:
            # Its requests ended while it was on its way: give back what was opened.
            await self._give_back(e, "no request waits for this embedding any more")
            raise

    async def _until_staged(self, e: Expected, secret: str | None) -> None:
        """Watch E until every rank holds it. The wait for a sender is bounded here; once one is
        attached, the transfer's own timeouts bound the rest (a rank taking it in learns of a
        failure as this Watch does). A Watch that ends after the last rows arrived leaves the
        ranks a call's deadline to say they hold them."""
        staged = e.staged
        assert staged is not None
        statuses = self.bridge.client.watch(e.tid, secret=secret, incarnation=e.incarnation)
        nxt: asyncio.Future[pb.TransferStatus] | None = None
        attached = arrived = False
        try:
            while not staged.done():
                left = e.asked_at + self.config.sender_wait_s - time.monotonic()
                nxt = asyncio.ensure_future(statuses.__anext__())
                either: set[asyncio.Future[Any]] = {nxt, staged}
                done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED,
                                             timeout=None if attached else max(left, 0.0))
                if not done:
                    raise asyncio.TimeoutError
                if nxt not in done:
                    break  # every rank answered
                try:
                    st = nxt.result()
                except StopAsyncIteration:
                    if not arrived:
                        raise
                    await self._last_answers(staged)
                    break
                if st.state == pb.TRANSFER_STATE_FAILED:
                    raise TransferFailed(e.tid, st.failure_reason, st)
                if st.total_tokens and not attached:
                    # Refuse now what the request cannot take, while it can still be encoded.
                    check_header(Header.decode(st.metadata), e.tokens, self.dtype)
                    attached = True
                arrived = st.state == pb.TRANSFER_STATE_SUCCESS
            staged.result()  # a rank that failed raises here
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
                await asyncio.wait({nxt})  # the stream must be still before it is closed
            await statuses.aclose()

    async def _last_answers(self, staged: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(staged), self.config.call_timeout_s)
        except asyncio.TimeoutError:
            raise RankFailed(f"all rows arrived, but not every rank said it holds them within "
                             f"kvferry_call_timeout_s={self.config.call_timeout_s:g}s") from None

    async def _open(self, e: Expected, secret: str | None) -> None:
        """Open E's transfer. Cancelled meanwhile (its request ended), this still learns which
        opening the server made, so that it can be given back rather than held until the
        server's bootstrap timeout."""
        call = asyncio.ensure_future(self.bridge.client.open(e.tid, self.config.window_tokens,
                                                             secret=secret, readers=self.readers))
        try:
            e.incarnation = (await asyncio.shield(call)).incarnation
        except asyncio.CancelledError:
            with contextlib.suppress(KvferryError, grpc.RpcError, OSError, asyncio.TimeoutError):
                e.incarnation = (await asyncio.wait_for(call, 5)).incarnation
            raise

    async def _unavailable(self, e: Expected, reason: str) -> None:
        then = ("the engine encodes it itself" if self.config.on_failure == "encode"
                else "its requests fail (kvferry_on_failure=fail)")
        log.warning("kvferry: the embedding of %s will not arrive: %s; %s", e.mm_hash, reason, then)
        e.reason = reason
        e.state = Arrival.UNAVAILABLE
        # From here the scheduler may drop E (its request was failed or encoded locally), which
        # cancels this task: the give-back must finish regardless, or the opening stays held.
        await asyncio.shield(self._give_back(e, reason))

    async def _give_back(self, e: Expected, reason: str) -> None:
        """Abort and release the opening E made, and let the ranks drop what they staged of it;
        one that was never opened needs nothing."""
        if not e.incarnation:
            return
        with contextlib.suppress(zmq.ZMQError):  # a channel closing with the engine
            await self.ranks.send({"op": "drop", "mm_hash": e.mm_hash,
                                   "incarnation": e.incarnation})
        client = self.bridge.client
        secret = transfer_secret(self.config.secret, e.tid)
        with contextlib.suppress(KvferryError, grpc.RpcError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(client.abort(e.tid, reason, secret=secret,
                                                incarnation=e.incarnation), 5)
        for reader in range(self.readers):  # a rank that took it released already: a no-op
            with contextlib.suppress(KvferryError, grpc.RpcError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(client.release(e.tid, secret=secret, reader=reader,
                                                      incarnation=e.incarnation), 5)

    def _drop(self, e: Expected, reason: str) -> None:
        # Cancelling a task still on its way makes it give its opening back itself; one that
        # has ended (cancel() says False) is given back here.
        if e.task is None or not e.task.cancel():
            self.bridge.submit(self._give_back(e, reason))

    def close(self) -> None:
        """Give back every opening no request took; those still on their way are cancelled by
        the bridge, and their cancellation gives them back."""
        ready = [e for e in self.expected.values() if e.state is Arrival.READY]
        self.expected.clear()
        gone = [self.bridge.submit(self._give_back(e, "the language engine shut down"))
                for e in ready]
        concurrent.futures.wait(gone, timeout=10)
        self.bridge.close()
        self.ranks.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e)


class Loader:
    """Worker side: stage what the scheduler names, then move it into the encoder cache."""

    def __init__(self, config: ConnectorConfig, device: torch.device,
                 model: tuple[int, torch.dtype] | None, reader: int = 0, engine: str = "") -> None:
        """MODEL: this model's hidden size and dtype, when the engine has one (an embedding of
        another dtype is refused). READER: this worker's tensor-parallel rank: it reads,
        resumes and releases as that one of the transfer's readers. ENGINE: what names the
        channel to this engine's scheduler (``ranks.engine_name``)."""
        self.config = config
        self.device = device
        self.model = model
        self.reader = reader
        self.bridge = Bridge(config, "kvferry-vllm-worker")
        # Touched on the bridge's loop only, except that load() pops what a staged answer
        # announced: the entry is in place before the answer goes.
        self.staged: dict[str, tuple[int, torch.Tensor]] = {}
        self._staging: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._pool: Any = None  # ShmPool or MappedPool; False: cannot be mapped here

        async def connect() -> Channel:
            return rank_channel(engine, reader)

        self.scheduler = self.bridge.run(connect())
        self.bridge.submit(self.scheduler.serve(self._heard))
        self.bridge.submit(self._map_early())

    def load(self, loads: list[Load], encoder_cache: dict[str, torch.Tensor]) -> None:
        """Move LOADS, staged here before the scheduler let their requests run, into
        ENCODER_CACHE."""
        for load in loads:
            entry = self.staged.pop(load.mm_hash, None)
            if load.mm_hash in encoder_cache:  # encoded here meanwhile: the rows are not needed
                continue
            if entry is None or entry[0] != load.incarnation:
                # The scheduler lets a request run only once this rank said it holds all of
                # it, and nothing drops it after that: computing on anything else would be a
                # wrong answer, so this stops the step instead.
                raise RuntimeError(f"kvferry: the embedding of {load.mm_hash} (opening "
                                   f"{load.incarnation}) was scheduled but is not staged on "
                                   f"rank {self.reader}: a bug in kvferry's connector, please "
                                   f"report it")
            encoder_cache[load.mm_hash] = entry[1]

    # -- on the bridge's loop -----------------------------------------------------------------

    def _heard(self, m: Message) -> None:
        h, incarnation = str(m.get("mm_hash")), int(m.get("incarnation", 0))
        if m.get("op") == "stage":
            task = asyncio.ensure_future(self._stage(h, str(m["tid"]), incarnation,
                                                     int(m["tokens"])))
            self._staging[h] = (incarnation, task)
        elif m.get("op") == "drop":
            going = self._staging.get(h)
            if going is not None and going[0] == incarnation:
                going[1].cancel()  # receive() gives the transfer up as it unwinds
            held = self.staged.get(h)
            if held is not None and held[0] == incarnation:
                del self.staged[h]

    async def _stage(self, h: str, tid: str, incarnation: int, tokens: int) -> None:
        answer: Message = {"mm_hash": h, "incarnation": incarnation, "rank": self.reader}
        log.debug("stage: %s on rank %d", h, self.reader)
        try:
            self.staged[h] = (incarnation, await self._take(tid, incarnation, tokens))
            answer["op"] = "staged"
        except (KvferryError, HeaderError, grpc.RpcError, OSError) as e:
            why = e.reason if isinstance(e, TransferFailed) else str(e)
            log.warning("kvferry: rank %d could not take in the embedding of %s (transfer %s): "
                        "%s", self.reader, h, tid, why)
            answer.update(op="failed", reason=why)
        except Exception as e:  # a device out of memory, say: the scheduler must hear it all the same
            log.exception("kvferry: rank %d could not take in the embedding of %s (transfer %s)",
                          self.reader, h, tid)
            answer.update(op="failed", reason=f"{type(e).__name__}: {e}")
        finally:
            if self._staging.get(h, (0,))[0] == incarnation:
                del self._staging[h]
        await self.scheduler.send(answer)
        log.debug("answered: %s %s from rank %d", answer["op"], h, self.reader)
        if answer["op"] == "staged":
            # After the answer: the request need not wait for the Release. (A rank that failed
            # releases nothing: the scheduler gives the opening back for every reader.)
            await self._release(tid, incarnation)

    async def _take(self, tid: str, incarnation: int, tokens: int) -> torch.Tensor:
        """Every window of TID into one tensor on this worker's device, as this rank's reader:
        copied out of the pool mapped here where it can be (shared memory; a GPU pool through
        CUDA IPC), else read with Read."""
        client = self.bridge.client
        gpu = await self._gpu_pool()
        out: torch.Tensor | None = None
        header: Header | None = None
        async for w in client.receive(tid, self.config.window_tokens, open=False, views=True,
                                      read=gpu is None, release=False, incarnation=incarnation,
                                      reader=self.reader,
                                      secret=transfer_secret(self.config.secret, tid)):
            if header is None:
                header = Header.decode(w.metadata)
                check_header(header, tokens, self.model[1] if self.model else None)
                out = torch.empty((header.tokens, header.width), dtype=header.torch_dtype,
                                  device=self.device)
            assert out is not None
            flat = out.view(torch.uint8).view(header.tokens, header.row_bytes)
            at, n = w.start_token, w.num_tokens
            if gpu is not None:
                flat[at:at + n].copy_(gpu.window_tensor(w.status))
                # The copy must have landed before the window is resumed and given back.
                torch.cuda.synchronize(gpu.tensor.device)
            else:
                with warnings.catch_warnings():  # a read-only window, copied at once
                    warnings.simplefilter("ignore", UserWarning)
                    rows = torch.from_numpy(np.frombuffer(w.data, dtype=np.uint8))
                flat[at:at + n].copy_(rows.view(n, header.row_bytes))
        if out is None:
            raise TransferFailed(tid, "the transfer ended with no window")
        return out

    async def _release(self, tid: str, incarnation: int) -> None:
        with contextlib.suppress(KvferryError, grpc.RpcError, OSError):
            await self.bridge.client.release(tid, incarnation=incarnation, reader=self.reader,
                                             secret=transfer_secret(self.config.secret, tid))

    async def _gpu_pool(self) -> Any:
        """The server's GPU pool mapped here through CUDA IPC, or None (a CPU pool is read
        through ``receive``'s own shared-memory link; another host's with Read)."""
        if self._pool is None:
            await self._map_early()
        return self._pool if self._pool and hasattr(self._pool, "window_tensor") else None

    async def _map_early(self) -> None:
        """Map the pool before the first embedding needs it (quietly: the server may not be
        up, and then the first one tries again)."""
        try:
            self._pool = await self.bridge.client.map_pool()
        except TransportUnavailable:
            self._pool = False  # another host, or a pool that cannot be mapped here: it stays so
        except (KvferryError, grpc.RpcError, OSError):
            pass

    def close(self) -> None:
        self.bridge.close()
        self.scheduler.close()
