"""Blocking client for synchronous serving loops: ``AsyncClient`` run on a private loop thread.

Every public method of ``AsyncClient`` is here with the same signature (a test holds them to each
other), blocking until done; those that yield (``receive``, ``watch``) return iterators."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from kvferry.client.aio import AsyncClient
from kvferry.client.contract import CALL_TIMEOUT_S, KEEPALIVE_S, KEEPALIVE_TIMEOUT_S
from kvferry.client.loop_thread import LoopThread
from kvferry.client.transports import Registry

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]
              ) -> Callable[Concatenate[Client, P], T]:
    @functools.wraps(method)
    def call(self: Client, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._loop.run(method(self._aio, *args, **kwargs))

    return call


def _iterating(method: Callable[Concatenate[AsyncClient, P], AsyncGenerator[T, None]]
               ) -> Callable[Concatenate[Client, P], Iterator[T]]:
    @functools.wraps(method)
    def call(self: Client, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._loop.iterate(method(self._aio, *args, **kwargs))

    return call


class Client:
    """``AsyncClient``, blocking. Thread-safe: calls run on one private loop."""

    def __init__(self, target: str, *, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 call_metadata: Sequence[tuple[str, str]] = (),
                 options: Sequence[tuple[str, Any]] = (),
                 transports: Registry | None = None, keepalive_s: float = KEEPALIVE_S,
                 keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
                 call_timeout_s: float = CALL_TIMEOUT_S, control: str = "auto") -> None:
        self._loop = LoopThread("kvferry-client")

        async def make() -> AsyncClient:
            return AsyncClient(target, token=token, credentials=credentials,
                               call_metadata=call_metadata, options=options, transports=transports,
                               keepalive_s=keepalive_s, keepalive_timeout_s=keepalive_timeout_s,
                               call_timeout_s=call_timeout_s, control=control)

        self._aio = self._loop.run(make())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aio(self) -> AsyncClient:
        """The async client underneath (its calls run on ``loop``)."""
        return self._aio

    @property
    def loop(self) -> LoopThread:
        return self._loop

    def close(self) -> None:
        self._loop.close(self._aio.close())

    pool_info = _blocking(AsyncClient.pool_info)
    poll = _blocking(AsyncClient.poll)
    abort = _blocking(AsyncClient.abort)
    release = _blocking(AsyncClient.release)
    open = _blocking(AsyncClient.open)
    stats = _blocking(AsyncClient.stats)
    list_transfers = _blocking(AsyncClient.list_transfers)
    export_pool = _blocking(AsyncClient.export_pool)
    map_pool = _blocking(AsyncClient.map_pool)
    send = _blocking(AsyncClient.send)
    receive = _iterating(AsyncClient.receive)
    watch = _iterating(AsyncClient.watch)
