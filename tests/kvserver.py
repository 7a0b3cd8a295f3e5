"""A real kvferry server process on loopback, for tests."""

from __future__ import annotations

from typing import Any

import grpc

from kvferry.testing import ServerProcess, launch

__all__ = ["SEED_FLAGS", "ServerProcess", "start_server"]

SEED_FLAGS = {
    "num_blocks": 32, "block_tokens": 8, "row_bytes": 64, "default_window_tokens": 64,
    "bootstrap_timeout": 20, "stall_timeout": 30, "retention": 60, "shutdown_grace": 2,
}


def start_server(base: dict[str, Any] | None = None,
                 credentials: grpc.ChannelCredentials | None = None, **flags: Any) -> ServerProcess:
    """A server with ``base`` flags (the seed geometry by default) overridden by ``flags``;
    ``credentials`` are what the start-up health check connects with (TLS servers)."""
    return launch({**(SEED_FLAGS if base is None else base), **flags}, credentials)
