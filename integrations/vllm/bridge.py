"""One asyncio loop thread per connector role, running kvferry's async client.

vLLM calls connectors from its synchronous engine loop and must never block on the network
there: work goes onto this loop and the engine loop reads what it found at its next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from kvferry.client.aio import AsyncClient

T = TypeVar("T")


class Bridge:
    def __init__(self, target: str, token: str | None, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(target, token=token)

        self.client = self.run(make())
        # Connect now, in the background: the first transfer should not pay for the TCP and
        # HTTP/2 handshakes. A server that is not up yet only makes this fail quietly.
        self.warm = self.submit(self.client.pool_info())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def close(self, grace: float = 5.0) -> None:
        """Cancel what is still running (its ``finally`` blocks run), then stop the loop."""
        if self.loop.is_closed():
            return

        async def wind_down() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
            await self.client.close()

        try:
            self.run(wind_down(), timeout=grace + 5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass  # the loop is stopped below either way
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
