"""asyncio client: a sender's ``send`` and a receiver's ``receive``, so no serving stack writes the
poll -> read -> resume loop (or its guard) itself. Sending lives in ``sending.py``, receiving in
``receiving.py``; this module holds the channel, the unary calls, and the links to the pool that
the transports make (``kvferry.client.transports``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import grpc

from kvferry.client import receiving, retries, sending
from kvferry.client.contract import (
    AUTHORIZATION_KEY,
    CALL_TIMEOUT_S,
    CONTROLS,
    KEEPALIVE_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_RECONNECT_BACKOFF_S,
    TransportUnavailable,
)
from kvferry.client.errors import typed_errors, typed_stream
from kvferry.client.host import host_id
from kvferry.client.local_calls import Calls, NotConnected, Socket
from kvferry.client.receiving import Window
from kvferry.client.secrets import receiver_metadata
from kvferry.client.transports import TRANSPORTS, Registry, Transport, unavailable
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "Window"]

class AsyncClient:
    def __init__(self, target: str, *, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 call_metadata: Sequence[tuple[str, str]] = (),
                 options: Sequence[tuple[str, Any]] = (),
                 transports: Registry | None = None, keepalive_s: float = KEEPALIVE_S,
                 keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
                 call_timeout_s: float = CALL_TIMEOUT_S, control: str = "auto") -> None:
        """``token``: the server's bearer token (--auth-token-file), sent with every call.
        ``credentials``: TLS, e.g. ``grpc.ssl_channel_credentials(ca, key, cert)``.
        ``transports``: the ways rows may travel (default: ``kvferry.client.transports.
        TRANSPORTS``, with any you registered). ``keepalive_s``, ``keepalive_timeout_s``: this
        client pings the server after that long and gives the connection up when a ping goes
        unanswered that long, failing every call on it: a partition is known within their sum,
        streams included (keep ``keepalive_s`` above the server's --keepalive-min-ping).
        ``call_timeout_s``: the deadline of every unary call. ``options`` (gRPC channel
        options) come last and win. ``control``: how calls travel once the server's PoolInfo is
        known: ``auto`` over the server's same-host socket where it offers one on this host
        (``PoolInfo.local_calls_path``), else gRPC; ``grpc`` always gRPC; ``local`` the socket
        or TransportUnavailable saying why not. Push always takes gRPC."""
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        self.control = control
        self.target = target
        self.call_timeout = call_timeout_s
        opts = [("grpc.enable_retries", 1), ("grpc.service_config", retries.service_config()),
                ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
                # gRPC 1.6x+ times a ping out with this (60 s by default), not the above.
                ("grpc.http2.ping_timeout_ms", int(keepalive_timeout_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.max_reconnect_backoff_ms", int(MAX_RECONNECT_BACKOFF_S * 1000)),
                *options]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=opts)
        self._socket: Socket | None = None  # the same-host calls' socket, once chosen
        # Stands where the generated stub stood, with the same methods and signatures.
        self.stub = cast(pb_grpc.TransferServiceStub,
                         Calls(pb_grpc.TransferServiceStub(self.channel), self._socket_now))
        self.transports = transports or TRANSPORTS
        self._md = tuple(call_metadata) + (
            ((AUTHORIZATION_KEY, f"Bearer {token}"),) if token else ())
        self._pool: asyncio.Future[pb.PoolInfo] | None = None
        # Each transport's link to the server's pool (a mapping, an engine): made once, kept.
        self._links: dict[str, Any] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        await self.channel.close()

    send = sending.send
    receive = receiving.receive

    @typed_errors
    async def pool_info(self, refresh: bool = False) -> pb.PoolInfo:
        """The server's pool; cached (concurrent first callers share one call) unless refresh."""
        failed = self._pool is not None and self._pool.done() and (
            self._pool.cancelled() or self._pool.exception() is not None)
        if self._pool is None or refresh or failed:
            self._pool = asyncio.ensure_future(self._learn_pool())
        return await asyncio.shield(self._pool)

    def _socket_now(self) -> Socket | None:
        """The socket the next call takes, or None for gRPC. With ``auto``, one that can no
        longer be connected (its server restarted: a new socket, or none) is left for gRPC until
        the next PoolInfo names the server's socket again."""
        s = self._socket
        return None if s is None or (s.broken and self.control == "auto") else s

    async def _learn_pool(self) -> pb.PoolInfo:
        info: pb.PoolInfo = await self.stub.GetPoolInfo(pb.GetPoolInfoRequest(),
                                                        timeout=self.call_timeout,
                                                        metadata=self._md)
        if self.control != "grpc" and (self._socket is None or self._socket.broken):
            if self._socket is not None:
                await self._socket.close()
            self._socket = await self._local_socket(info)
        return info

    async def _local_socket(self, info: pb.PoolInfo) -> Socket | None:
        """The server's same-host socket, connected, if this client may and can use it."""
        why = None
        if not info.local_calls_path:
            why = "the server offers no same-host socket (--local-calls)"
        elif info.host_id != host_id():
            why = f"the server runs on another host than this client ({self.target})"
        else:
            socket = Socket(info.local_calls_path, fallback=self.control == "auto")
            try:
                await socket.connection()
                return socket
            except NotConnected as e:
                why = f"cannot connect to {info.local_calls_path}: {e.__cause__}"
        if self.control == "local":
            raise TransportUnavailable(f"control 'local' cannot work: {why}; use control "
                                       f"'auto' or 'grpc'")
        return None

    # ``secret``: the transfer's secret (kvferry.client.secrets), for a transfer bound to one.
    # ``incarnation``: only the opening of the id with this TransferStatus.incarnation (0: any).

    @typed_errors
    async def poll(self, transfer_id: str, *, secret: str | None = None,
                   incarnation: int = 0) -> pb.TransferStatus:
        return await self.stub.Poll(pb.PollRequest(transfer_id=transfer_id, incarnation=incarnation),
                                    timeout=self.call_timeout, metadata=self._md + receiver_metadata(secret))

    @typed_errors
    async def abort(self, transfer_id: str, reason: str, *, secret: str | None = None,
                    incarnation: int = 0) -> pb.TransferStatus:
        return await self.stub.Abort(pb.AbortRequest(transfer_id=transfer_id, reason=reason,
                                                     incarnation=incarnation),
                                     timeout=self.call_timeout, metadata=self._md + receiver_metadata(secret))

    @typed_errors
    async def release(self, transfer_id: str, *, secret: str | None = None,
                      incarnation: int = 0, reader: int = 0) -> pb.ReleaseResponse:
        """``reader``: of a transfer opened for several readers, which one releases (its blocks
        go once every reader has)."""
        return await self.stub.Release(pb.ReleaseRequest(transfer_id=transfer_id,
                                                         incarnation=incarnation, reader=reader),
                                       timeout=self.call_timeout, metadata=self._md + receiver_metadata(secret))

    @typed_errors
    async def open(self, transfer_id: str, window_tokens: int = 0, *,
                   secret: str | None = None, readers: int = 1) -> pb.TransferStatus:
        """Receiver: create the transfer and its first window, and return at once (a sender
        may come later). Take it in with ``receive(open=False, incarnation=...)``: the split
        lets one process open a transfer and another read it. ``readers``: how many readers
        (tensor-parallel ranks) take in every window, each with ``receive(reader=...)``."""
        opened = await self.stub.Open(pb.OpenRequest(transfer_id=transfer_id,
                                                     window_tokens=window_tokens, readers=readers),
                                      timeout=self.call_timeout, metadata=self._md + receiver_metadata(secret))
        return opened.status

    @typed_stream
    async def watch(self, transfer_id: str, *, secret: str | None = None,
                    incarnation: int = 0, until_done: bool = False,
                    reader: int = 0) -> AsyncGenerator[pb.TransferStatus, None]:
        """The transfer's status now, then at every change, ending after a terminal state.
        ``until_done``: you will not stop watching while the transfer is live, so if this
        stream breaks off (your process died, its connection was lost) the server fails the
        transfer ``receiver_gone`` after its reconnect grace, instead of waiting out the lease;
        leave it False when you stop watching on purpose and read later."""
        call = self.stub.Watch(pb.WatchRequest(transfer_id=transfer_id, incarnation=incarnation,
                                               until_done=until_done, reader=reader),
                               metadata=self._md + receiver_metadata(secret))
        try:
            async for st in call:
                yield st
        finally:
            call.cancel()

    @typed_errors
    async def stats(self) -> pb.StatsResponse:
        return await self.stub.Stats(pb.StatsRequest(), timeout=self.call_timeout, metadata=self._md)

    @typed_errors
    async def list_transfers(self, states: Sequence[pb.TransferState] = (), page_size: int = 100,
                             limit: int | None = None) -> list[pb.TransferSummary]:
        """Held transfers, oldest first, following pages up to ``limit``."""
        out: list[pb.TransferSummary] = []
        token = ""
        while True:
            page = await self.stub.List(pb.ListRequest(page_size=page_size, page_token=token,
                                                       states=list(states)),
                                        timeout=self.call_timeout, metadata=self._md)
            out.extend(page.transfers)
            token = page.next_page_token
            if not token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    @typed_errors
    async def export_pool(self) -> pb.ExportPoolResponse:
        return await self.stub.ExportPool(pb.ExportPoolRequest(), timeout=self.call_timeout, metadata=self._md)

    @typed_errors
    async def map_pool(self, transport: str = "auto") -> Any:
        """The server's pool mapped into this process (same host only), for zero-copy window
        views: a GPU pool through CUDA IPC (``kvferry.client.cuda_ipc.MappedPool``, needs torch
        with CUDA), a CPU pool through shared memory (``kvferry.client.shm.ShmPool``): the first
        transport that maps pools and that the server offers. Mapped once per client;
        TransportUnavailable says why it cannot be."""
        info = await self.pool_info()
        choices = self.transports.choices(transport, maps=True)
        offered = [t for t in choices if t.name in info.transports] or list(choices)
        if not offered:
            raise TransportUnavailable("no registered transport maps pools")
        return await self._link(offered[0], info)

    async def _link(self, transport: Transport, info: pb.PoolInfo) -> Any:
        """``transport``'s link to the pool, or TransportUnavailable saying why there is none."""
        if transport.name not in self._links:
            reason = transport.why_not(info)
            if reason is not None:
                raise unavailable(transport.name, reason)
            self._links[transport.name] = await transport.connect(self, info)
        return self._links[transport.name]

    async def _writer(self, transport: str, info: pb.PoolInfo) -> tuple[Transport, Any]:
        """The transport a send takes and its link (None for one that pushes)."""
        choices = self.transports.choices(transport)
        named = len(choices) == 1  # named outright: why it cannot work is the answer
        for way in choices:
            if not way.one_sided:
                return way, None
            if named:
                return way, await self._link(way, info)
            if way.why_not(info) is None:
                try:
                    return way, await self._link(way, info)
                except TransportUnavailable:
                    continue  # e.g. no CUDA in this process: the next way will do
        return self.transports.fallback, None
