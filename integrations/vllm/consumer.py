"""Language side (``ec_consumer``): the scheduler finds embeddings, the worker takes them in.

Scheduler (``Arrivals``): when a request needs an image it does not hold, the scheduler Opens
that image's transfer (its id is the content hash) on the bridge's loop and watches it. Until the
rows are in kvferry's pool the request is deferred (``ensure_cache_available`` says False), so the
engine never schedules an embedding that has not arrived: it is *ready* once the sender has
delivered all of it, or filled the first window of one longer than the window. No sender within
``sender_wait_s``, a transfer that fails, or a server that cannot be reached makes the image
*unavailable*: the engine encodes it itself (``on_failure = encode``) or fails the request
(``fail``). Everything the scheduler opened and no request took is aborted and released when its
requests finish, so an aborted request leaves nothing held.

Worker (``Loader``): for each ready image the scheduler hands over, copy the rows into one
tensor on the worker's device, release the transfer, and put the tensor in vLLM's encoder cache:
straight out of the server's pool mapped here when all rows arrived in one window, else window
by window as they come.
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

from kvferry.client.contract import TransportUnavailable
from kvferry.client.errors import KvferryError, TransferFailed
from kvferry.integrations.vllm.bridge import Bridge
from kvferry.integrations.vllm.config import ConnectorConfig
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
    WAITING = "waiting"          # opened (or opening); the rows are not all there yet
    READY = "ready"              # the worker can take it in now
    UNAVAILABLE = "unavailable"  # it will not come: encode locally, or fail the request


@dataclass
class Expected:
    mm_hash: str
    tid: str
    tokens: int  # the embedding rows its requests' placeholders take
    asked_at: float  # when a request first needed it: the wait for a sender counts from here
    state: Arrival = Arrival.WAITING
    incarnation: int = 0
    reason: str = ""
    requests: set[str] = field(default_factory=set)
    task: concurrent.futures.Future[None] | None = None
    final: pb.TransferStatus | None = None  # the status that found all rows in one window


@dataclass(frozen=True)
class Load:
    """What the worker needs to take one embedding in."""
    mm_hash: str
    tid: str
    incarnation: int
    request_id: str
    tokens: int  # the embedding rows the request's placeholders take
    final: pb.TransferStatus | None = None
    """The transfer's status once all its rows were in the pool in one window (SUCCESS): the
    worker copies them out of a mapped pool with no call to the server at all."""


class Arrivals:
    """Scheduler side: which images are on their way, and which have arrived."""

    def __init__(self, config: ConnectorConfig, dtype: torch.dtype | None,
                 readers: int = 1) -> None:
        """DTYPE: the model's, when the engine has one: an embedding of another is refused.
        READERS: the engine's tensor-parallel ranks, each of which takes every row in."""
        self.config = config
        self.dtype = dtype
        self.readers = readers
        self.bridge = Bridge(config, "kvferry-vllm-scheduler")
        self.expected: dict[str, Expected] = {}
        self.resident: set[str] = set()  # in this engine's encoder cache (loaded or encoded)
        self.loads: list[Load] = []
        self.unavailable_requests: set[str] = set()
        self.fallbacks = 0

    # -- what vLLM's scheduler asks ------------------------------------------------------------

    def ensure(self, request_id: str, items: list[tuple[str, int]]) -> bool:
        """Open what REQUEST_ID needs (ITEMS: content hash, embedding rows) and has not asked
        for; True once none is still coming."""
        ready = True
        for h, tokens in items:
            if h in self.resident:
                continue
            e = self.expected.get(h)
            if e is None:
                e = self.expected[h] = Expected(h, transfer_id(self.config.transfer_id_prefix, h),
                                                tokens, time.monotonic())
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

    def has(self, mm_hash: str) -> bool:
        e = self.expected.get(mm_hash)
        return e is not None and e.state is Arrival.READY

    def allocated(self, request_id: str, mm_hash: str, tokens: int) -> None:
        """vLLM gave MM_HASH a place in the encoder cache: the worker fills it (if it arrived)."""
        self.resident.add(mm_hash)
        e = self.expected.get(mm_hash)
        if e is None:
            return
        if e.state is Arrival.READY:
            del self.expected[mm_hash]
            self.loads.append(Load(mm_hash, e.tid, e.incarnation, request_id, tokens, e.final))
        elif e.state is Arrival.UNAVAILABLE:  # the engine encodes it (logged when it gave up)
            del self.expected[mm_hash]
            self.fallbacks += 1

    def take_loads(self, freed: list[str]) -> list[Load]:
        for h in freed:
            self.resident.discard(h)
        loads, self.loads = self.loads, []
        return loads

    def load_failed(self, request_ids: list[str]) -> None:
        self.unavailable_requests.update(request_ids)

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

    async def _arrive(self, e: Expected) -> None:
        client = self.bridge.client
        secret = transfer_secret(self.config.secret, e.tid)
        try:
            await self._open(e, secret)
            statuses = client.watch(e.tid, secret=secret, incarnation=e.incarnation)
            attached = False
            try:
                while True:
                    # The wait for a sender is bounded here; once one is attached, the transfer's
                    # own stall timeout bounds the rest.
                    left = e.asked_at + self.config.sender_wait_s - time.monotonic()
                    nxt = statuses.__anext__()
                    st = await (nxt if attached else asyncio.wait_for(nxt, max(left, 0.0)))
                    if st.state == pb.TRANSFER_STATE_FAILED:
                        raise TransferFailed(e.tid, st.failure_reason, st)
                    attached = st.total_tokens > 0
                    if _arrived(st):
                        # Refuse now what the request cannot take, while it can still be encoded.
                        check_header(Header.decode(st.metadata), e.tokens, self.dtype)
                        if st.state == pb.TRANSFER_STATE_SUCCESS:
                            e.final = st
                        e.state = Arrival.READY
                        return
            finally:
                await statuses.aclose()
        except StopAsyncIteration:
            await self._unavailable(e, "the server ended the Watch before the rows arrived "
                                       "(is it stopping?)")
        except asyncio.TimeoutError:
            await self._unavailable(e, f"no encoder sent it within kvferry_sender_wait_s="
                                       f"{self.config.sender_wait_s:g}s")
        except HeaderError as ex:
            await self._unavailable(e, str(ex))
        except (KvferryError, grpc.RpcError, OSError) as ex:
            why = ex.reason if isinstance(ex, TransferFailed) else _describe(ex)
            await self._unavailable(e, f"transfer {e.tid}: {why}")
        except asyncio.CancelledError:
            # Its requests ended while it was on its way: give back what was opened.
            await self._give_back(e, "no request waits for this embedding any more")
            raise

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
        """Abort and release the opening E made; one that was never opened needs nothing."""
        if not e.incarnation:
            return
        client = self.bridge.client
        secret = transfer_secret(self.config.secret, e.tid)
        with contextlib.suppress(KvferryError, grpc.RpcError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(client.abort(e.tid, reason, secret=secret,
                                                incarnation=e.incarnation), 5)
        for reader in range(self.readers):  # no rank took it: released for each
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


def _arrived(st: pb.TransferStatus) -> bool:
    """All rows in the pool, or a full first window of a longer embedding (the worker streams
    the rest)."""
    if not st.total_tokens or not st.window_filled_tokens:
        return False
    return st.state == pb.TRANSFER_STATE_SUCCESS or st.window_filled_tokens == st.window_tokens


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e)


class Loader:
    """Worker side: receive ready embeddings into the encoder cache."""

    def __init__(self, config: ConnectorConfig, device: torch.device,
                 model: tuple[int, torch.dtype] | None, reader: int = 0) -> None:
        """MODEL: this model's hidden size and dtype, when the engine has one (an embedding of
        another dtype is refused; a placeholder for a broken-off one takes that shape).
        READER: this worker's tensor-parallel rank: it reads, resumes and releases as that one
        of the transfer's readers."""
        self.config = config
        self.device = device
        self.model = model
        self.reader = reader
        self.bridge = Bridge(config, "kvferry-vllm-worker")
        self.loaded = 0
        self._pool: Any = None  # ShmPool or MappedPool; False: cannot be mapped here
        self.bridge.submit(self._map_early())

    def load(self, loads: list[Load], encoder_cache: dict[str, torch.Tensor]) -> list[str]:
        """Fill ENCODER_CACHE with LOADS; the request ids whose embedding could not be taken in
        (their entry holds zeros so that the step runs; the scheduler fails those requests
        before their next step)."""
        failed: list[str] = []
        for load in loads:
            if load.mm_hash in encoder_cache:  # encoded here meanwhile: the rows are not needed
                self.bridge.submit(self._drop(load, "the embedding was already in the cache"))
                continue
            try:
                taken = self._from_mapped_pool(load) if load.final is not None else None
                if taken is None:
                    taken = self.bridge.run(self._receive(load))
                encoder_cache[load.mm_hash] = taken
                self.loaded += 1
            except (KvferryError, HeaderError, grpc.RpcError, OSError) as e:
                why = e.reason if isinstance(e, TransferFailed) else str(e)
                log.error("kvferry: the embedding of %s (transfer %s) broke off while it was being "
                          "taken in: %s; request %s fails", load.mm_hash, load.tid, why,
                          load.request_id)
                width, dtype = self.model or (1, torch.float32)
                encoder_cache[load.mm_hash] = torch.zeros((load.tokens, width), dtype=dtype,
                                                          device=self.device)
                failed.append(load.request_id)
        return failed

    def _from_mapped_pool(self, load: Load) -> torch.Tensor | None:
        """All rows of a finished transfer, copied straight out of the server's pool mapped into
        this process (shared memory or CUDA IPC, same host); None where it cannot be mapped."""
        st = load.final
        assert st is not None
        pool = self._mapped()
        if pool is None:
            return None
        header = Header.decode(st.metadata)
        self.check(header, load)
        out = torch.empty((header.tokens, header.width), dtype=header.torch_dtype,
                          device=self.device)
        flat = out.view(torch.uint8).view(header.tokens, header.row_bytes)
        at = 0
        for view in pool.window(st):
            part = torch.from_numpy(view) if isinstance(view, np.ndarray) else view
            flat[at:at + len(part)].copy_(part)
            at += len(part)
        # The window is the receiver's until the Release, but a transfer failed meanwhile (its
        # lease ran out) gives its blocks back, and then the copy may hold another's rows. A
        # shared-memory pool says so itself; where the mapping cannot tell, the server is asked.
        intact = pool.still_window(st)
        if intact is None:
            if out.is_cuda:
                torch.cuda.synchronize(out.device)
            now = self.bridge.run(self.bridge.client.poll(
                load.tid, incarnation=load.incarnation,
                secret=transfer_secret(self.config.secret, load.tid)))
            intact = now.state == pb.TRANSFER_STATE_SUCCESS and now.window_epoch == st.window_epoch
        if at != header.tokens or not intact:
            raise TransferFailed(load.tid, "the window was given back while it was being copied")
        self.bridge.submit(self._release(load))  # nothing needs to wait for it
        return out

    async def _map_early(self) -> None:
        """Map the pool before the first load needs it (quietly: the server may not be up, and
        then the first load tries again)."""
        try:
            self._pool = await self.bridge.client.map_pool()
        except TransportUnavailable:
            self._pool = False  # another host, or a pool that cannot be mapped here: it stays so
        except (KvferryError, grpc.RpcError, OSError):
            pass

    def _mapped(self) -> Any:
        """The server's pool mapped here (kept), or None when it cannot be from this process."""
        if self._pool is None:
            try:
                self._pool = self.bridge.run(self.bridge.client.map_pool())
            except TransportUnavailable:
                self._pool = False
        return self._pool or None

    def check(self, header: Header, load: Load) -> None:
        check_header(header, load.tokens, self.model[1] if self.model else None)

    async def _receive(self, load: Load) -> torch.Tensor:
        client = self.bridge.client
        out: torch.Tensor | None = None
        header: Header | None = None
        async for w in client.receive(load.tid, self.config.window_tokens, open=False,
                                      views=True, incarnation=load.incarnation, reader=self.reader,
                                      secret=transfer_secret(self.config.secret, load.tid)):
            if header is None:
                header = Header.decode(w.metadata)
                self.check(header, load)
                out = torch.empty((header.tokens, header.width), dtype=header.torch_dtype,
                                  device=self.device)
            assert out is not None
            with warnings.catch_warnings():  # a read-only window, copied at once
                warnings.simplefilter("ignore", UserWarning)
                rows = torch.from_numpy(np.frombuffer(w.data, dtype=np.uint8))
            out[w.start_token:w.start_token + w.num_tokens].copy_(
                rows.view(header.torch_dtype).view(w.num_tokens, header.width))
        if out is None:
            raise TransferFailed(load.tid, "the transfer ended with no window")
        return out

    async def _release(self, load: Load) -> None:
        with contextlib.suppress(KvferryError, grpc.RpcError, OSError):
            await self.bridge.client.release(load.tid, incarnation=load.incarnation,
                                             reader=self.reader,
                                             secret=transfer_secret(self.config.secret, load.tid))

    async def _drop(self, load: Load, reason: str) -> None:
        client = self.bridge.client
        secret = transfer_secret(self.config.secret, load.tid)
        with contextlib.suppress(KvferryError, grpc.RpcError, OSError):
            await client.abort(load.tid, reason, secret=secret, incarnation=load.incarnation)
        with contextlib.suppress(KvferryError, grpc.RpcError, OSError):
            await client.release(load.tid, secret=secret, incarnation=load.incarnation,
                                 reader=self.reader)

    def close(self) -> None:
        self.bridge.close()
