"""The channel between a language engine's scheduler and its workers' ranks, beside vLLM's steps.

A waiting request must have its whole embedding on every rank before vLLM schedules it (a step
that ran on rows that did not arrive would be a wrong answer, cached under the image's hash).
But vLLM reaches the workers only inside a step with tokens scheduled: an engine whose only
requests wait for images never calls a worker at all. So the scheduler tells each rank what to
take in over a channel of its own, and each rank says when it holds all of it:

- scheduler -> rank r: ``stage`` (take this transfer in, as reader r) and ``drop`` (let go of
  what was staged, or is being staged, for it);
- rank -> scheduler: ``staged`` (all rows are in this rank's memory) or ``failed`` (with why).

ZeroMQ PUSH/PULL over Unix sockets (``ipc://``), one per direction and rank: messages queue
until the peer is there (a rank may start before its scheduler binds), arrive in order, and are
never dropped (no high-water mark). The sockets live in a directory only this user can enter
(``$XDG_RUNTIME_DIR``, else the temp dir), named by a digest of the engine's
``ec_transfer_config.engine_id`` and data-parallel rank, which the scheduler and its workers
share. Only control goes this way: the rows themselves come from kvferry's pool, each rank
reading them as its own reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

Message = dict[str, Any]
log = logging.getLogger("kvferry.integrations.vllm")


# A Unix socket's path fits in sockaddr_un.sun_path: 107 bytes on Linux.
MAX_SOCKET_PATH = 107


def socket_dir(base: str | None = None) -> Path:
    """A directory for the channel's sockets that only this user can enter: whoever can connect
    could tell a rank what to take in, or a scheduler that a rank holds an embedding. In BASE,
    else ``$XDG_RUNTIME_DIR``, else the temp dir."""
    root = Path(base or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = root / f"kvferry-vllm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be a directory of uid {os.getuid()} that only it can "
                              f"enter (mode 700): remove it, and kvferry makes it anew")
    return path


def address(engine: str, name: str) -> str:
    """The socket of ENGINE's side NAME. Named by a digest of the engine, so that a long engine
    id cannot make the path too long for a Unix socket; a base directory that still does falls
    back to /tmp."""
    leaf = f"{hashlib.sha256(engine.encode()).hexdigest()[:24]}-{name}.sock"
    path = socket_dir() / leaf
    if len(str(path)) > MAX_SOCKET_PATH:
        path = socket_dir("/tmp") / leaf
    return f"ipc://{path}"


class Channel:
    """One side's two sockets: a PULL it binds (its inbox) and PUSHes it connects to its peers'
    inboxes. Made and used on one event loop (the connector's bridge loop)."""

    def __init__(self, engine: str, inbox: str, peers: list[str]) -> None:
        self._ctx = zmq.asyncio.Context()
        self._inbox_path = address(engine, inbox)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.setsockopt(zmq.LINGER, 0)
        # A socket left by an engine that died with the same id would refuse the bind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._inbox_path.removeprefix("ipc://"))
        self._pull.bind(self._inbox_path)
        self._push: list[zmq.asyncio.Socket] = []
        for peer in peers:
            s = self._ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 0)  # queue while the peer is not there yet: never drop
            s.setsockopt(zmq.LINGER, 0)
            s.connect(address(engine, peer))
            self._push.append(s)

    async def send(self, message: Message, to: int | None = None) -> None:
        """To one peer (by its index in ``peers``), or to every peer."""
        for s in self._push if to is None else [self._push[to]]:
            await s.send_json(message)

    async def serve(self, handle: Callable[[Message], Awaitable[None] | None]) -> None:
        """Hand every message that arrives to ``handle``, until cancelled. One that it cannot
        take is logged and the next is served: a stopped inbox would leave requests waiting."""
        while True:
            message = await self._pull.recv_json()
            try:
                if not isinstance(message, dict):
                    raise TypeError(f"not a JSON object: {message!r:.200}")
                done = handle(message)
                if done is not None:
                    await done
            except Exception:
                log.exception("kvferry: a message between the scheduler and its ranks could "
                              "not be handled (%s)", self._inbox_path)

    def close(self) -> None:
        for s in [self._pull, *self._push]:
            s.close(linger=0)
        self._ctx.term()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._inbox_path.removeprefix("ipc://"))


def scheduler_channel(engine: str, ranks: int) -> Channel:
    return Channel(engine, "scheduler", [f"rank{r}" for r in range(ranks)])


def rank_channel(engine: str, rank: int) -> Channel:
    return Channel(engine, f"rank{rank}", ["scheduler"])


def engine_name(engine_id: str, data_parallel_rank: int) -> str:
    """What names one engine's channel: the id its scheduler and workers share, and its
    data-parallel rank (every DP rank has a scheduler of its own under the same id)."""
    return f"{engine_id}-dp{data_parallel_rank}"
