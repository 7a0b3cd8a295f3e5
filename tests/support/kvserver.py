"""A real kvferry server process on loopback, for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kvferry.testing import ServerProcess, launch

__all__ = ["SEED_FLAGS", "ServerProcess", "async_wait_until", "start_server", "wait_sent",
           "wait_until"]

SEED_FLAGS = {
    "num_blocks": 32, "block_tokens": 8, "row_bytes": 64, "default_window_tokens": 64,
    "bootstrap_timeout": 20, "stall_timeout": 30, "retention": 60, "shutdown_grace": 2,
}


def start_server(base: dict[str, Any] | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 env: dict[str, str] | None = None, **flags: Any) -> ServerProcess:
    """A server with ``base`` flags (the seed geometry by default) overridden by ``flags``;
    ``credentials`` are what the start-up health check connects with (TLS servers); ``env`` is
    added to its environment."""
    return launch({**(SEED_FLAGS if base is None else base), **flags}, credentials, env)


def wait_until(ready: Callable[[], object], what: str, within: float = 20) -> None:
    """Until ``ready()`` is true (errors count as not yet); fails saying ``what`` never happened.
    ``within`` only bounds a hang: a passing test never waits for it."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            if ready():
                return
        except Exception as e:  # not there yet (e.g. NOT_FOUND before an Open)
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s (last error: {last!r})")
        time.sleep(0.01)


async def async_wait_until(ready: Callable[[], Awaitable[object]], what: str, within: float = 20) -> None:
    """``wait_until`` for asyncio code."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            if await ready():
                return
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s (last error: {last!r})")
        await asyncio.sleep(0.01)


async def wait_sent(client: Any, transfer_id: str, tokens: int, what: str) -> None:
    """Until the transfer has at least TOKENS delivered (as CLIENT polls it)."""
    async def delivered() -> bool:
        return bool((await client.poll(transfer_id)).sent_tokens >= tokens)

    await async_wait_until(delivered, what)
