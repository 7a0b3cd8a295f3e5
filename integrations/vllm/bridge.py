"""One asyncio loop thread per connector role, running kvferry's async client.

vLLM calls connectors from its synchronous engine loop and must never block on the network
there: work goes onto this loop (``kvferry.client.loop_thread``, the one the blocking ``Client``
runs on too) and the engine loop reads what it found at its next step.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from kvferry.client.aio import AsyncClient
from kvferry.client.loop_thread import LoopThread
from kvferry.integrations.vllm.config import ConnectorConfig

T = TypeVar("T")


class Bridge:
    def __init__(self, config: ConnectorConfig, name: str) -> None:
        self._thread = LoopThread(name)

        async def make() -> AsyncClient:
            return AsyncClient(config.target, token=config.token, keepalive_s=config.keepalive_s,
                               keepalive_timeout_s=config.keepalive_timeout_s,
                               call_timeout_s=config.call_timeout_s)

        self.client = self.run(make())
        # Connect now, in the background: the first transfer should not pay for the TCP and
        # HTTP/2 handshakes. A server that is not up yet only makes this fail quietly.
        self.warm = self.submit(self.client.pool_info())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._thread.submit(coro)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._thread.run(coro, timeout)

    def close(self, grace: float = 5.0) -> None:
        """Cancel what is still running (its ``finally`` blocks run), close the client, then
        stop the loop."""
        self._thread.close(self.client.close(), grace)
