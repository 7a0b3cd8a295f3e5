"""The sender's end of transport "mooncake": its own Mooncake Transfer Engine (P2P handshake with
the server's), writing granted rows straight into the server's registered pool, on another host
as well as this one. Needs ``kvferry[mooncake]`` (and Debian's libibverbs1).

The engine cannot call a write back: one that failed or timed out (MC_TRANSFER_TIMEOUT) may still
land. So a failed write raises ``WriteMayLand``: the sender must not say it stopped (Detach), and
the server keeps the window fenced for its fence timeout, which it refuses to set shorter than the
engine's.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np

from kvferry.client.contract import TransportUnavailable
from kvferry.client.grants import grant_runs
from kvferry.v1 import transfer_pb2 as pb


class WriteMayLand(RuntimeError):
    """A one-sided write failed without saying it stopped: it may still land, until the engine's
    own timeout."""


class MooncakeWriter:
    def __init__(self, info: pb.PoolInfo, local_host: str | None = None, device: str = "") -> None:
        try:
            from mooncake.engine import TransferEngine
        except ImportError as e:
            raise TransportUnavailable(f"the Mooncake Transfer Engine cannot be loaded ({e}): pip "
                                       f"install 'kvferry[mooncake]' and Debian's libibverbs1") from e
        if not info.mooncake_session:
            raise TransportUnavailable("the server runs no Mooncake engine (kvferry serve --mooncake)")
        self.session = info.mooncake_session
        self.base = info.mooncake_base_address
        self.row_bytes = info.row_bytes
        self.block_tokens = info.block_tokens
        host = local_host or _address_towards(self.session)
        self.engine = TransferEngine()
        if self.engine.initialize(host, "P2PHANDSHAKE", info.mooncake_protocol, device) != 0:
            raise TransportUnavailable(f"this process's Mooncake engine did not start on {host!r} "
                                       f"({info.mooncake_protocol})")
        self._registered: dict[int, int] = {}  # source address -> bytes

    def write(self, grant: pb.Grant, rows: np.ndarray, first_token: int, end: int) -> None:
        """Write the granted tokens below ``end`` from ``rows`` into the server's pool; returns
        once the engine reports them written."""
        src = rows.ctypes.data
        if self._registered.get(src) != rows.nbytes:
            if self.engine.register_memory(src, rows.nbytes) != 0:
                raise TransportUnavailable("the Mooncake engine could not register the rows to send")
            self._registered[src] = rows.nbytes
        rb = self.row_bytes
        runs = grant_runs(grant, end)
        rc = self.engine.batch_transfer_sync_write(
            self.session, [src + (r.token - first_token) * rb for r in runs],
            [self.base + r.row * rb for r in runs], [r.tokens * rb for r in runs])
        if rc != 0:
            raise WriteMayLand(f"the Mooncake write of tokens [{grant.start_token}, {end}) to "
                               f"{self.session} failed (rc={rc}): the server's engine is unreachable, "
                               f"or the write timed out")

    def finish(self, rows: Any) -> None:
        """The send is over: the rows' memory need not stay registered."""
        src = rows.ctypes.data
        if self._registered.pop(src, None) is not None:
            self.engine.unregister_memory(src)


def _address_towards(session: str) -> str:
    """This host's address on the route to ``session`` ("host:port"), which the server's engine
    can reach back."""
    host, _, port = session.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))  # no packet is sent: this only picks the route
        return str(s.getsockname()[0])
