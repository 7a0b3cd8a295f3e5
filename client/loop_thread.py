"""One asyncio event loop on a thread of its own, for callers that are not async themselves: the
blocking ``Client`` and the vLLM connector run the async client on it. Work goes onto the loop;
the caller blocks on the answer (``run``), or takes it later (``submit``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str, cpus: set[int] | None = None) -> None:
        """CPUS: the CPUs this thread may run on (None: those of the thread that makes it). The
        threads gRPC and ZeroMQ start for work begun on this loop inherit them."""
        self.loop = asyncio.new_event_loop()
        self._cpus = cpus
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._cpus:
            os.sched_setaffinity(0, self._cpus)  # 0: this thread
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """``items``, one at a time, each taken on the loop; closed however the caller stops."""
        async def next_item() -> T:
            return await items.__anext__()

        try:
            while True:
                try:
                    yield self.run(next_item())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and not self.loop.is_closed():
                self.run(aclose())

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def close(self, last: Coroutine[Any, Any, None] | None = None, grace: float = 5.0) -> None:
        """Cancel what still runs on the loop (its ``finally`` blocks run, for up to ``grace``
        seconds), run ``last`` (closing a channel, say), then stop the loop and the thread."""
        if self.loop.is_closed():
            if last is not None:
                last.close()
            return

        async def wind_down() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
            if last is not None:
                await last

        try:
            self.run(wind_down(), timeout=grace + 5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass  # the loop is stopped below either way
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
