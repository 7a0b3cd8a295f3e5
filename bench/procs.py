"""The two servers a benchmark compares: kvferry and the bare grpc.aio baseline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from kvferry.testing import ServerProcess, launch

T = TypeVar("T")


@contextlib.contextmanager
def kvferry_server(**flags: Any) -> Iterator[ServerProcess]:
    flags.setdefault("default_window_tokens",
                     flags.get("num_blocks", 256) * flags.get("block_tokens", 256) // 2)
    srv = launch({"bootstrap_timeout": 60, "stall_timeout": 120, "lease_timeout": 120,
                  "retention": 600, "shutdown_grace": 0.5, **flags})
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def echo_server(row_bytes: int, buffer_bytes: int, cuda: bool = False) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo_server", str(row_bytes),
                             str(buffer_bytes), *(["--cuda"] if cuda else [])],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["grpc_port"]
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine on uvloop where it is installed, as the server runs (and as a serving
    stack on uvloop would): both sides of a figure on the same kind of loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
