"""One asyncio loop thread per connector role, running kvferry's async client.

vLLM calls connectors from its synchronous engine loop and must never block on the network
there: work goes onto this loop (``kvferry.client.loop_thread``, the one the blocking ``Client``
runs on too) and the engine loop reads what it found at its next step.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from kvferry.client.aio import AsyncClient
from kvferry.client.loop_thread import LoopThread
from kvferry.integrations.vllm.config import ConnectorConfig

T = TypeVar("T")


class Bridge:
    def __init__(self, config: ConnectorConfig, name: str) -> None:
        self._thread = LoopThread(name, io_cpus())
        self._config = config
        self._clients: dict[str, AsyncClient] = {}

        async def make() -> AsyncClient:
            return self.client_for(config.target)

        self.client = self.run(make())
        # Connect now, in the background: the first transfer should not pay for the TCP and
        # HTTP/2 handshakes. A server that is not up yet only makes this fail quietly.
        self.warm = self.submit(self.client.pool_info())

    def client_for(self, target: str) -> AsyncClient:
        """The client of the kvferry server at TARGET (made once, on the loop)."""
        client = self._clients.get(target)
        if client is None:
            c = self._config
            client = self._clients[target] = AsyncClient(
                target, token=c.token, keepalive_s=c.keepalive_s,
                keepalive_timeout_s=c.keepalive_timeout_s, call_timeout_s=c.call_timeout_s,
                control=c.control)
        return client

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._thread.submit(coro)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._thread.run(coro, timeout)

    def close(self, grace: float = 5.0) -> None:
        """Cancel what is still running (its ``finally`` blocks run), close the client, then
        stop the loop."""
        async def close_all() -> None:
            for client in self._clients.values():
                await client.close()

        self._thread.close(close_all(), grace)


def io_cpus() -> set[int] | None:
    """The CPUs the connector's threads should run on: those the process started with.

    vLLM's CPU backend pins a worker's threads to the cores its model computes on (the main
    thread is one of them), and threads inherit their maker's pinning: the connector's loop, and
    the threads gRPC and ZeroMQ start from it, would queue behind the model's spinning compute
    threads. With several engines on a host, their I/O then stalled for seconds, long enough for
    a kvferry server's keepalive to give their connections up. A worker starts with its parent's
    CPUs (the engine core's, which vLLM does not pin): the connector's threads take those. None
    where that cannot be read, or adds nothing."""
    try:
        here = os.sched_getaffinity(0)
        started = os.sched_getaffinity(os.getppid())
    except OSError:
        return None
    return started if started > here else None
