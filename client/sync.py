"""Blocking client for synchronous serving loops: the asyncio client run on a private loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from kvferry.client.aio import AsyncClient, Window
from kvferry.v1 import transfer_pb2 as pb

T = TypeVar("T")


class Client:
    """Same methods as ``AsyncClient``, blocking. Thread-safe: calls run on one private loop."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvferry-client",
                                        daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(target, **kwargs)

        self._aio = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def pool_info(self, refresh: bool = False) -> pb.PoolInfo:
        return self._run(self._aio.pool_info(refresh))

    def poll(self, transfer_id: str, **kwargs: Any) -> pb.TransferStatus:
        return self._run(self._aio.poll(transfer_id, **kwargs))

    def abort(self, transfer_id: str, reason: str, **kwargs: Any) -> pb.TransferStatus:
        return self._run(self._aio.abort(transfer_id, reason, **kwargs))

    def release(self, transfer_id: str, **kwargs: Any) -> pb.ReleaseResponse:
        return self._run(self._aio.release(transfer_id, **kwargs))

    def stats(self) -> pb.StatsResponse:
        return self._run(self._aio.stats())

    def list_transfers(self, states: Any = (), page_size: int = 100,
                       limit: int | None = None) -> list[pb.TransferSummary]:
        return self._run(self._aio.list_transfers(states, page_size, limit))

    def export_pool(self) -> pb.ExportPoolResponse:
        return self._run(self._aio.export_pool())

    def map_pool(self) -> Any:
        """See ``AsyncClient.map_pool``."""
        return self._run(self._aio.map_pool())

    def send(self, transfer_id: str, rows: Any, total_tokens: int | None = None,
             metadata: bytes = b"", start_token: int = 0, **kwargs: Any) -> pb.TransferStatus:
        return self._run(self._aio.send(transfer_id, rows, total_tokens, metadata, start_token,
                                        **kwargs))

    def open(self, transfer_id: str, window_tokens: int = 0, **kwargs: Any) -> pb.TransferStatus:
        return self._run(self._aio.open(transfer_id, window_tokens, **kwargs))

    def receive(self, transfer_id: str, window_tokens: int = 0, **kwargs: Any) -> Iterator[Window]:
        agen = self._aio.receive(transfer_id, window_tokens, **kwargs)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())
