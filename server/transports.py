"""The server's halves of the one-sided transports, behind one small protocol.

A transport's server half says its name (what PoolInfo.transports offers, and what Attach names)
and describes to clients what they need to reach the pool its way (``describe``): the storage
kinds offer their own (a CPU pool "shm", a GPU pool "cuda-ipc"), ``--mooncake`` adds "mooncake",
and ``--transport-plugin MODULE:FACTORY`` adds any other. The service treats them all alike: it
offers each, lets one-sided senders Attach with it, and closes it at shutdown.

A plug-in: ``FACTORY(config, storage)`` returns a ``ServerTransport``; it may register the pool's
memory (``storage.region()``) with whatever moves its bytes. Its client half is a
``kvferry.client.transports.Transport`` of the same name. Grants, commits, fences and every
check stay the core's, whatever carries the rows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.server.config import ServerConfig
    from kvferry.server.storage import BlockStorage


class ServerTransport(Protocol):
    name: str

    def describe(self, info: pb.PoolInfo) -> None:
        """Fill in what a client needs to reach the pool this way (the name is added to
        ``info.transports`` for you)."""

    def close(self) -> None:
        """The server stops: let go of what this transport holds."""


Factory = Callable[["ServerConfig", "BlockStorage"], ServerTransport]


class ShmOffer:
    """A CPU pool in a shared-memory file: same-host clients map it by its path."""

    name = "shm"

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self, info: pb.PoolInfo) -> None:
        info.shm_path = self.path

    def close(self) -> None:
        """The storage removes its own file."""


class CudaIpcOffer:
    """A GPU pool: same-host clients map it through CUDA IPC with what ExportPool answers."""

    name = "cuda-ipc"

    def describe(self, info: pb.PoolInfo) -> None:
        """Nothing here: the handle is ExportPool's answer (it is large, and only mappers need it)."""

    def close(self) -> None:
        """The pool tensor goes with the process."""


def load_plugins(specs: str, config: ServerConfig, storage: BlockStorage) -> list[ServerTransport]:
    """The server halves ``specs`` names ("MODULE:FACTORY", comma-separated), started."""
    out: list[ServerTransport] = []
    for spec in filter(None, (s.strip() for s in specs.split(","))):
        out.append(plugin_factory(spec)(config, storage))
    return out


def plugin_factory(spec: str) -> Factory:
    """The factory ``spec`` ("MODULE:FACTORY") names; ValueError saying what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"transport_plugins item {spec!r}: write it MODULE:FACTORY, e.g. "
                         f"mypkg.transport:server_half")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"transport_plugins item {spec!r}: cannot import {module_name} ({e}); is "
                         f"it installed, or on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"transport_plugins item {spec!r}: {module_name} has no callable {attr!r}")
    return factory
