"""How rows travel from a sender to the pool, and how a receiver reads a full window: one module
per transport, and the registry the client chooses from.

- ``cuda-ipc`` (``cuda_ipc.py``): the pool is on a GPU of this host; the sender maps it and copies
  its rows in on a stream of the pool's GPU (peer to peer from another GPU), then commits.
- ``shm`` (``shm.py``): the pool is in shared memory on this host; the sender maps it and copies
  rows in with numpy, then commits; a receiver copies a full window straight out.
- ``mooncake`` (``mooncake.py``): the server registered its pool with a Mooncake Transfer Engine;
  the sender's own engine writes rows into it (tcp or rdma), from another host too, then commits.
- ``grpc`` (``grpc.py``): rows travel in Push messages and are read with Read; works from
  anywhere, at gRPC's pace. It is every choice's fallback.

``auto`` takes the first registered one-sided transport that can work from this process, in the
order above, else ``grpc``. A transport named explicitly that cannot work raises
``TransportUnavailable`` saying why, at once.

A transport of your own: write a ``Transport`` (and, for the server, a server half: see
``kvferry.server.transports``), then ``register()`` it, or give a client a ``Registry`` of its
own (``AsyncClient(..., transports=...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kvferry.client.contract import TransportUnavailable
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

    from kvferry.client.aio import AsyncClient

AUTO = "auto"


class Writer(Protocol):
    """A transport's link to the pool, as a one-sided sender writes granted rows through it."""

    def write(self, grant: pb.Grant, rows: Any, first_token: int, end: int) -> None:
        """Copy the granted tokens below ``end`` from ``rows`` (tokens ``first_token ...``) into
        the pool; return only once they have landed."""

    def finish(self, rows: Any) -> None:
        """The send of ``rows`` is over (a transfer engine unregisters them)."""


class WindowReader(Protocol):
    """A transport's link to the pool, as a receiver reads a full window through it."""

    def window(self, status: pb.TransferStatus) -> list[np.ndarray]:
        """Views of the window's filled rows in host memory, in token order; valid until the
        Resume that frees the window."""

    def still_window(self, status: pb.TransferStatus) -> bool | None:
        """Whether the window's blocks still belong to it (check after copying: then the copy
        holds that window's rows only); None when this link cannot tell: ask the server."""


class Transport(Protocol):
    """One way rows reach the pool. ``name`` is what PoolInfo.transports offers and what a
    one-sided sender names in Attach."""

    name: str
    # The sender writes rows into the pool itself (Attach, write, Commit); else they are pushed.
    one_sided: bool
    # ``connect`` maps the pool into this process (``AsyncClient.map_pool``).
    maps_pool: bool
    # ``receive`` can read a full window this way: through ``connect``'s link, a WindowReader over
    # host memory, or with Read where the link is None (gRPC).
    reads_windows: bool

    def why_not(self, info: pb.PoolInfo) -> str | None:
        """Why this transport cannot reach the pool ``info`` describes from here (None: it can
        be tried; ``connect`` may still fail with TransportUnavailable)."""

    async def connect(self, client: AsyncClient, info: pb.PoolInfo) -> Any:
        """This process's link to the pool (made once per client and kept): a Writer for a
        one-sided transport, a WindowReader where it reads windows."""

    def source_rows(self, rows: Any, row_bytes: int) -> Any:
        """``rows`` (bytes, numpy, torch) as this transport's writer copies from."""


def offered(name: str, info: pb.PoolInfo) -> str | None:
    """Why the server does not offer ``name`` (None: it does)."""
    if name in info.transports:
        return None
    return f"the server's pool on {info.device} offers {list(info.transports)}, not {name!r}"


def same_host(name: str, info: pb.PoolInfo) -> str | None:
    """Why a transport that maps the pool's memory cannot from this process (None: it can)."""
    from kvferry.client.host import host_id

    why = offered(name, info)
    if why is None and info.host_id != host_id():
        why = (f"the server runs on another host (boot id {info.host_id}, this one is "
               f"{host_id()}): {name} works on one host only")
    return why


def host_rows(rows: Any, row_bytes: int) -> np.ndarray:
    """``rows`` (bytes, numpy, torch on the CPU) as a uint8 numpy array [n, row_bytes], no copy
    where they already are one: what writers that copy from host memory take."""
    import numpy as np

    from kvferry.client.rows import as_row_bytes

    return np.frombuffer(as_row_bytes(rows, row_bytes), dtype=np.uint8).reshape(-1, row_bytes)


def unavailable(name: str, reason: str) -> TransportUnavailable:
    return TransportUnavailable(f"transport {name!r} cannot work from this process: {reason}")


class Registry:
    """Transports by name, in the order ``auto`` tries the one-sided ones, and the fallback
    (gRPC) that needs nothing of this process."""

    def __init__(self, transports: Iterable[Transport], fallback: Transport) -> None:
        self.fallback = fallback
        self._by_name: dict[str, Transport] = {fallback.name: fallback}
        for t in transports:
            self.register(t)

    def register(self, transport: Transport) -> None:
        """Add ``transport`` (after the others, before the fallback), or replace the one of its
        name where it stood."""
        if transport.name == AUTO:
            raise ValueError(f"{AUTO!r} names the choice among transports; pick another name")
        self._by_name[transport.name] = transport

    def replaced(self, transport: Transport) -> Registry:
        """A copy with ``transport`` in place of the one of its name (or added)."""
        copy = Registry(self._by_name.values(), self.fallback)
        copy.register(transport)
        return copy

    def names(self) -> tuple[str, ...]:
        return (AUTO, *self._by_name)

    def get(self, name: str) -> Transport:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"transport={name!r}: choose one of {', '.join(self.names())}") from None

    def choices(self, name: str, *, reads: bool = False, maps: bool = False) -> Sequence[Transport]:
        """What ``name`` means, in order of preference; the fallback last where it serves.
        ``reads``: for reading a window (``receive``); ``maps``: for mapping the pool."""
        def able(t: Transport) -> bool:
            return (not reads or t.reads_windows) and (not maps or t.maps_pool)

        if name != AUTO:
            t = self.get(name)
            if not able(t):
                what = "read windows" if reads else "map the pool"
                can = [n for n, c in self._by_name.items() if able(c)]
                raise ValueError(f"transport {name!r} cannot {what}; these can: {', '.join(can)}")
            return (t,)
        picked = [t for t in self._by_name.values() if t is not self.fallback and t.one_sided
                  and able(t)]
        return [*picked, self.fallback] if able(self.fallback) else picked


def _default() -> Registry:
    from kvferry.client.transports.cuda_ipc import CUDA_IPC
    from kvferry.client.transports.grpc import GRPC
    from kvferry.client.transports.mooncake import MOONCAKE
    from kvferry.client.transports.shm import SHM

    return Registry([CUDA_IPC, SHM, MOONCAKE], fallback=GRPC)


# The transports every client starts from; ``register`` adds yours.
TRANSPORTS = _default()


def register(transport: Transport) -> None:
    """Make ``transport`` available to every client (``auto`` tries it after the built-in ones)."""
    TRANSPORTS.register(transport)
